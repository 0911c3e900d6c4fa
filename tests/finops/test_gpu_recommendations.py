"""GPU recommendations with hand-computed types, checkpoint intervals and savings (prices: finops/gpu_prices.yaml)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal as D

import pytest

from prismops.finops.gpu_pricing import load_gpu_catalog
from prismops.finops.gpu_recommendations import (
    InvalidProfile, JobProfile, checkpoint_interval, load_gpu_types, percentile, profiles_from_events, recommend,
)

AT = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
GIB = 2**30


@pytest.fixture(scope="module")
def types():
    return load_gpu_types()


@pytest.fixture(scope="module")
def prices():
    return load_gpu_catalog()


def profile(**overrides):
    base = dict(tenant="acme", job="j1", gpu_model="A100-SXM4-80GB", capacity_type="on_demand", gpus=1,
                duration_s=D(7200), peak_memory_bytes=8 * GIB, mean_memory_bytes=6 * GIB, util_mean=D("0.08"),
                util_p50=D("0.07"), util_p95=D("0.10"), checkpoint_cost_s=D(100))
    return JobProfile(**{**base, **overrides})


def test_small_job_goes_to_the_cheapest_mig_slice_with_a_spot_template(types, prices):
    r = recommend(profile(), types, prices, at=AT)
    # needs 8 GiB x 1.2 = 9.6 GiB and 0.10 x 312 x 1.2 = 37.44 TFLOPS; A100 40GB 1g.10gb: 10 GiB, 312/7 = 44.57
    # TFLOPS, 4.10/7 $/h -> 2 h = 8.20/7 = 1.171428571429 (cheaper than L4 at 1.60 and A100 80GB 1g.10gb at 1.46)
    assert (r.recommended.gpu_model, r.recommended.mig_profile) == ("A100-SXM4-40GB", "1g.10gb")
    assert r.recommended.as_dict()["job_cost_usd"] == D("1.171428571429")
    assert r.current.as_dict()["job_cost_usd"] == D("10.240000000000")  # 2 h x 5.12
    assert r.savings_usd == D("9.068571428571")
    assert (r.needed_memory_gib, r.needed_tflops) == (D("9.600000"), D("37.440000"))
    # spot: rate 0.08/h -> M = 45000 s; C = 100 s: tau = sqrt(2 x 100 x 45000) = 3000 s
    # overhead = 100/3000 + (1500 + 100)/45000 = 31/450; cost = 2 h x (481/450) x 1.45/7 = 0.442825396825
    spot = r.spot
    assert spot.checkpoint_interval_s == 3000
    assert spot.expected_overhead == D("0.068889")
    assert spot.spot_cost_usd == D("0.442825396825")
    assert spot.savings_usd == D("0.728603174603")
    # mean utilization 8 %: over-provisioned, 92 % of the current cost wasted
    assert "over_provisioned" in r.flags and r.wasted_usd == D("9.420800000000")


def test_a_busy_multi_gpu_job_stays_whole_and_moves_to_the_cheaper_fit(types, prices):
    # 4 GPUs, 60 GiB peak (72 GiB with headroom), p95 25 % of an H100's 989 TFLOPS x 1.2 = 296.7 TFLOPS:
    # A100 80GB (312 TFLOPS, 80 GiB) fits at 5.12 $/h; the H100 costs 6.88. 10 h x 4 GPUs.
    r = recommend(profile(gpu_model="H100-SXM-80GB", gpus=4, duration_s=D(36000), peak_memory_bytes=60 * GIB,
                          util_mean=D("0.2"), util_p50=D("0.2"), util_p95=D("0.25"), checkpoint_cost_s=None),
                  types, prices, at=AT)
    assert (r.recommended.gpu_model, r.recommended.mig_profile, r.recommended.gpus) == ("A100-SXM4-80GB", None, 4)
    assert r.recommended.as_dict()["job_cost_usd"] == D("204.800000000000")
    assert r.savings_usd == D("70.400000000000")  # 275.20 - 204.80
    assert r.spot is None and "no_checkpoint_cost" in r.flags


def test_a_job_needing_the_biggest_gpu_keeps_it(types, prices):
    # 70 GiB x 1.2 = 84 GiB and 0.95 x 989 x 1.2 TFLOPS exceed the H100 itself: capped at what it has
    r = recommend(profile(gpu_model="H100-SXM-80GB", peak_memory_bytes=70 * GIB, util_mean=D("0.9"), util_p95=D("0.95"),
                          util_p50=D("0.9")), types, prices, at=AT)
    assert (r.recommended.gpu_model, r.recommended.mig_profile) == ("H100-SXM-80GB", None)
    assert (r.needed_memory_gib, r.needed_tflops) == (D("80.000000"), D("989.000000"))
    assert r.savings_usd == D("0E-12") and r.flags == []


def test_nothing_fits_says_why(types, prices):
    r = recommend(profile(gpu_model="B200-192GB", peak_memory_bytes=150 * GIB), types, prices, at=AT)
    assert r.recommended is None and "180.000000 GiB" in r.reason and "compute_unknown" in r.flags


def test_spot_is_not_offered_when_the_overhead_is_intolerable(types, prices):
    # C = 1800 s against M = 45000 s: tau = sqrt(2 x 1800 x 45000) = 12727 s, overhead about 0.32 > 0.15
    r = recommend(profile(checkpoint_cost_s=D(1800)), types, prices, at=AT)
    assert r.spot is None
    assert checkpoint_interval(D(1800), 45000) == 12727


def test_idle_job_is_flagged_with_its_cost(types, prices):
    r = recommend(profile(util_mean=D("0.01"), util_p50=D("0"), util_p95=D("0.02")), types, prices, at=AT)
    assert "idle" in r.flags and r.wasted_usd == D("10.137600000000")  # 10.24 x 0.99


def test_percentile_is_nearest_rank():
    values = [D(v) for v in ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0")]
    assert percentile(values, 50) == D("0.5") and percentile(values, 95) == D("1.0") and percentile([], 95) == 0


def test_profiles_from_collected_windows():
    start = dt.datetime(2026, 12, 5, 10, tzinfo=dt.timezone.utc)

    def event(hour, gpu, used, memory):
        s = start + dt.timedelta(hours=hour)
        return {"tenant": "acme", "job": "train", "node": "n1", "gpu_index": gpu, "mig_profile": None,
                "gpu_model": "H100-SXM-80GB", "capacity_type": "spot", "gpu_fraction": "1.000000",
                "window_start": s.isoformat(), "window_end": (s + dt.timedelta(hours=1)).isoformat(),
                "requested_gpu_seconds": "3600.000000", "used_gpu_seconds": used, "memory_bytes": memory}

    events = [event(0, 0, "1800", 10 * GIB), event(0, 1, "3600", 20 * GIB), event(1, 0, "900", 30 * GIB),
              event(3, 0, "360", 5 * GIB)]  # hour 2 is missing: one interruption
    (p,) = profiles_from_events(events)
    assert (p.gpus, p.duration_s, p.interruptions, p.windows) == (2, D("10800.000000"), 1, 3)
    assert (p.peak_memory_bytes, p.capacity_type) == (30 * GIB, "spot")
    assert (p.util_mean, p.util_p50, p.util_p95) == (D("0.4625"), D("0.250000"), D("1.000000"))


def test_spot_history_sets_the_interruption_rate(types, prices):
    # on spot with 2 interruptions in 10 h: 0.2/h, M = 18000 s; C = 50: tau = sqrt(2 x 50 x 18000) = 1341 s
    p = profile(capacity_type="spot", interruptions=2, duration_s=D(36000), checkpoint_cost_s=D(50))
    r = recommend(p, types, prices, at=AT)
    assert r.spot.interruptions_per_hour == D("0.200000") and r.spot.checkpoint_interval_s == 1341


@pytest.mark.parametrize("change, field, rule", [
    ({"gpus": 0}, "p.gpus", "whole_gpus"),
    ({"util_p95": "1.5"}, "p.util_p95", "ratio_0_1"),
    ({"duration_s": "-1"}, "p.duration_s", "non_negative"),
    ({"tenant": ""}, "p.tenant", "required"),
])
def test_bad_profile_names_field_and_rule(change, field, rule):
    raw = {**{k: (str(v) if isinstance(v, D) else v) for k, v in dataclasses.asdict(profile()).items()}, **change}
    with pytest.raises(InvalidProfile) as caught:
        JobProfile.from_dict(raw, where="p")
    assert (caught.value.field, caught.value.rule) == (field, rule)


def test_capacity_mix_hand_computed(prices):
    from prismops.finops.gpu_recommendations import capacity_mix

    # 4 hours at 2, 2, 2, 4 A100 80GB in use: baseline (p50) 2 reserved for 4 h at 3.20 = 25.60; 2 GPU-hours
    # above, half interruptible: 1 h spot at 1.90 + 1 h on demand at 5.12 -> 32.62; all on demand 10 x 5.12 = 51.20
    mix = capacity_mix([D(2), D(2), D(2), D(4)], "A100-SXM4-80GB", prices, at=AT, interruptible_share=D("0.5"))
    assert (mix.baseline_gpus, mix.reserved_gpu_hours, mix.spot_gpu_hours, mix.on_demand_gpu_hours) == (
        D("2.000000"), D("8.000000"), D("1.000000"), D("1.000000"))
    assert (mix.all_on_demand_usd, mix.mix_usd) == (D("51.200000000000"), D("32.620000000000"))
    assert mix.monthly_difference_usd == D("3390.850000000000")  # 18.58 x 730 / 4
    with pytest.raises(ValueError, match="no reserved price"):
        capacity_mix([D(1)], "A100-SXM4-40GB", prices, at=AT)


def test_on_prem_jobs_are_placed_on_owned_models_only(types, prices):
    from fractions import Fraction

    # on_prem: only models with an on-prem entry (H100, A100 80GB). Needs 9.6 GiB and 0.1 x 989 x 1.2 = 118.68
    # TFLOPS: A100 slices up to 2g.20gb are too slow (89.1), H100 1g.10gb (141.29 TFLOPS) at 1/7 of the
    # amortized 35000/26280 + 0.25 $/h is cheaper than A100 3g.40gb at 3/7 of 17000/26280 + 0.18.
    r = recommend(profile(gpu_model="H100-SXM-80GB", capacity_type="on_prem", duration_s=D(3600)), types, prices, at=AT)
    assert (r.recommended.gpu_model, r.recommended.mig_profile, r.recommended.capacity_type) == ("H100-SXM-80GB", "1g.10gb", "on_prem")
    expected = (Fraction(35000, 26280) + Fraction(1, 4)) / 7
    assert abs(Fraction(r.recommended.as_dict()["job_cost_usd"]) - expected) < Fraction(1, 10**12)
    assert r.savings_usd > 0
    # the spot template still compares spot with on-demand for the recommended model
    assert r.spot is not None and r.spot.on_demand_cost_usd == D("0.982857142857")  # 6.88 / 7
