"""finops/gpu_allocation.py: OpenCost shares that sum exactly to the pool cost, the records built from them,
and the inference-pool split by tokens."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prismops.finops.gpu_allocation import (
    IDLE_KEY,
    IDLE_POLICIES,
    InferencePool,
    Workload,
    allocate_inference_pool,
    allocate_pool_cost,
    allocation_id,
    apportion,
    attribute_window,
    inference_pool_allocations,
    load_inference_pools,
    parse_inference_pools,
    pool_window_cost,
    tokens_by_tenant,
)
from prismops.finops.gpu_pricing import load_gpu_catalog, parse_gpu_catalog
from prismops.finops.gpu_windows import ClosedWindow, workload_key
from prismops.finops.llm_usage import cost_line_id
from prismops.sinks.clickhouse import allocation_row
from prismops.streams.codecs import codec_for

UNIT = Fraction(1, 10**12)
UTC = dt.timezone.utc
START = dt.datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
CATALOG = load_gpu_catalog()


def usd_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-12)


def total(shares) -> Decimal:
    with localcontext(prec=80):  # exact for any Decimal(38, 12) amount
        return sum((s.cost_usd for s in shares), Decimal(0))


# --- strategies ----------------------------------------------------------------------------------------------

# GPU-seconds as collectors send them (6 places), as MIG slices produce them (sevenths), or zero.
gpu_seconds = st.one_of(
    st.just(Fraction(0)),
    st.integers(0, 3600 * 10**6).map(lambda n: Fraction(n, 10**6)),
    st.integers(0, 7 * 3600).map(lambda n: Fraction(n, 7)),
)


@st.composite
def workload_lists(draw, max_size: int = 8):
    keys = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=4), unique=True, max_size=max_size))
    return [Workload(k, draw(gpu_seconds), draw(gpu_seconds), tenant=k) for k in keys]


pool_costs = st.one_of(st.integers(0, 10**16), st.integers(0, 50)).map(usd_units)
capacities = st.one_of(
    st.integers(0, 16).map(lambda gpus: Fraction(gpus * 3600)),
    st.integers(0, 20_000 * 10**6).map(lambda n: Fraction(n, 10**6)),
)
policies = st.sampled_from(IDLE_POLICIES)


# --- properties ------------------------------------------------------------------------------------------------


@settings(max_examples=400)
@given(pool_costs, capacities, workload_lists(), policies)
def test_shares_sum_exactly_to_the_pool_cost_and_none_is_negative(pool_cost, capacity, workloads, policy):
    shares = allocate_pool_cost(pool_cost, capacity, workloads, policy)
    assert total(shares) == pool_cost
    assert sum((s.exact_cost_usd for s in shares), Fraction(0)) == Fraction(pool_cost)
    for share in shares:
        assert share.cost_usd >= 0 and share.direct_cost_usd >= 0 and share.idle_cost_usd >= 0
        assert share.direct_cost_usd + share.idle_cost_usd == share.cost_usd
        assert abs(Fraction(share.cost_usd) - share.exact_cost_usd) < UNIT, "each share within one rounding unit"
        assert share.cost_usd == share.cost_usd.quantize(Decimal("1e-12"))
    assert {s.key for s in shares if s.kind == "workload"} == {w.key for w in workloads}


@settings(max_examples=300)
@given(pool_costs, capacities, workload_lists(), policies)
def test_charged_gpu_seconds_are_max_of_requested_and_used_and_idle_is_never_negative(pool_cost, capacity, workloads, policy):
    shares = {s.key: s for s in allocate_pool_cost(pool_cost, capacity, workloads, policy)}
    for workload in workloads:
        expected = max(workload.requested_gpu_seconds, workload.used_gpu_seconds)
        assert shares[workload.key].charged_gpu_seconds == expected
    if IDLE_KEY in shares:
        allocated = sum((w.charged_gpu_seconds for w in workloads), Fraction(0))
        assert shares[IDLE_KEY].charged_gpu_seconds == max(capacity - allocated, 0)


@settings(max_examples=300)
@given(pool_costs, capacities, workload_lists())
def test_bucket_policy_keeps_idle_in_the_idle_bucket(pool_cost, capacity, workloads):
    shares = allocate_pool_cost(pool_cost, capacity, workloads, "bucket")
    allocated = sum((w.charged_gpu_seconds for w in workloads), Fraction(0))
    base = max(capacity, allocated)
    for share in shares:
        if share.kind == "workload":
            assert share.idle_cost_usd == 0
            if base > 0:
                assert abs(Fraction(share.cost_usd) - Fraction(pool_cost) * share.charged_gpu_seconds / base) < UNIT
    idle = [s for s in shares if s.key == IDLE_KEY]
    if base > allocated:
        (bucket,) = idle
        assert bucket.kind == "idle" and bucket.direct_cost_usd == 0
        assert abs(Fraction(bucket.cost_usd) - Fraction(pool_cost) * (base - allocated) / base) < UNIT
    elif workloads and base > 0:
        assert idle == [], "no idle GPU-seconds, no idle bucket"


@settings(max_examples=300)
@given(pool_costs, capacities, workload_lists())
def test_proportional_policy_charges_each_workload_its_ratio_within_one_unit(pool_cost, capacity, workloads):
    allocated = sum((w.charged_gpu_seconds for w in workloads), Fraction(0))
    assume(allocated > 0)
    shares = allocate_pool_cost(pool_cost, capacity, workloads, "proportional")
    assert all(s.kind == "workload" for s in shares), "proportional leaves nothing in an idle bucket"
    for share in shares:
        exact = Fraction(pool_cost) * share.charged_gpu_seconds / allocated
        assert abs(Fraction(share.cost_usd) - exact) < UNIT


@settings(max_examples=200)
@given(pool_costs, capacities, workload_lists(max_size=6).filter(bool))
def test_even_policy_gives_every_workload_the_same_idle_part_within_one_unit(pool_cost, capacity, workloads):
    shares = allocate_pool_cost(pool_cost, capacity, workloads, "even")
    allocated = sum((w.charged_gpu_seconds for w in workloads), Fraction(0))
    base = max(capacity, allocated)
    idle_total = Fraction(pool_cost) * (base - allocated) / base if base > 0 else Fraction(pool_cost)
    for share in shares:
        direct = Fraction(pool_cost) * share.charged_gpu_seconds / base if base > 0 else Fraction(0)
        assert abs(Fraction(share.cost_usd) - (direct + idle_total / len(workloads))) < UNIT


@settings(max_examples=200)
@given(pool_costs, workload_lists(max_size=6).filter(bool), policies)
def test_oversubscribed_pools_scale_shares_to_the_pool_cost_with_no_idle(pool_cost, workloads, policy):
    allocated = sum((w.charged_gpu_seconds for w in workloads), Fraction(0))
    assume(allocated > 1)
    capacity = allocated / 2  # workloads claim twice what the GPUs have (time-slicing)
    shares = allocate_pool_cost(pool_cost, capacity, workloads, policy)
    assert total(shares) == pool_cost
    assert [s for s in shares if s.kind == "idle"] == []
    for share in shares:
        assert share.idle_cost_usd == 0
        assert abs(Fraction(share.cost_usd) - Fraction(pool_cost) * share.charged_gpu_seconds / allocated) < UNIT


# --- worked examples and edge cases --------------------------------------------------------------------------


def test_opencost_worked_example_by_hand():
    # 2 GPUs for an hour = 7200 GPU-seconds costing $10. Training requested 3600 and used 3000 (charged
    # 3600), a notebook requested 0 and used 720 (charged 720): 4320 allocated, 2880 idle.
    workloads = [Workload("train", 3600, 3000), Workload("notebook", 0, 720)]
    bucket = {s.key: s for s in allocate_pool_cost(Decimal("10"), 7200, workloads, "bucket")}
    assert bucket["train"].cost_usd == Decimal("5")  # 10 * 3600 / 7200
    assert bucket["notebook"].cost_usd == Decimal("1")  # 10 * 720 / 7200
    assert bucket[IDLE_KEY].cost_usd == Decimal("4") and bucket[IDLE_KEY].charged_gpu_seconds == 2880
    proportional = {s.key: s for s in allocate_pool_cost(Decimal("10"), 7200, workloads, "proportional")}
    # idle $4 shared 3600 : 720 -> 10/3 and 2/3; costs 25/3 and 5/3
    assert proportional["train"].direct_cost_usd == Decimal("5") and proportional["notebook"].direct_cost_usd == Decimal("1")
    assert proportional["train"].cost_usd == Decimal("8.333333333333")
    assert proportional["notebook"].cost_usd == Decimal("1.666666666667")  # the larger remainder gets the unit
    even = {s.key: s for s in allocate_pool_cost(Decimal("10"), 7200, workloads, "even")}
    assert even["train"].cost_usd == Decimal("7") and even["notebook"].cost_usd == Decimal("3")
    assert even["train"].idle_cost_usd == even["notebook"].idle_cost_usd == Decimal("2")


def test_leftover_units_go_to_the_largest_remainders_and_ties_to_the_lower_key():
    one_unit = Decimal("0.000000000001")
    tied = allocate_pool_cost(one_unit, 100, [Workload("b", 50, 0), Workload("a", 50, 0)], "proportional")
    assert [(s.key, s.cost_usd) for s in tied] == [("a", one_unit), ("b", Decimal(0))]
    assert apportion(Decimal("0.000000000002"), [("x", Fraction(2, 10**12) * Fraction(1, 3)),
                                                  ("y", Fraction(2, 10**12) * Fraction(2, 3))]) == {
        "x": Decimal("0.000000000001"), "y": Decimal("0.000000000001")}  # y: 1 unit + 1/3, x: 0 + 2/3 -> x gets it
    three = apportion(Decimal("1"), [("a", Fraction(1, 3)), ("b", Fraction(1, 3)), ("c", Fraction(1, 3))])
    assert three == {"a": Decimal("0.333333333334"), "b": Decimal("0.333333333333"), "c": Decimal("0.333333333333")}


def test_no_workloads_puts_the_whole_pool_in_the_idle_bucket_whatever_the_policy():
    for policy in IDLE_POLICIES:
        (idle,) = allocate_pool_cost(Decimal("3.5"), 7200, [], policy)
        assert idle.key == IDLE_KEY and idle.cost_usd == Decimal("3.5") and idle.charged_gpu_seconds == 7200


def test_zero_usage_everywhere_shares_idle_evenly_under_proportional():
    shares = allocate_pool_cost(Decimal("1"), 3600, [Workload("a", 0, 0), Workload("b", 0, 0)], "proportional")
    assert [s.cost_usd for s in shares] == [Decimal("0.5"), Decimal("0.5")]
    assert all(s.direct_cost_usd == 0 and s.idle_cost_usd == Decimal("0.5") for s in shares)


def test_huge_costs_stay_exact_beyond_the_default_decimal_precision():
    pool = Decimal("12345678901234567890123456.789012345678")  # 38 digits, Decimal(38, 12)'s limit
    shares = allocate_pool_cost(pool, 7, [Workload("a", 1, 0), Workload("b", 2, 0)], "bucket")
    assert total(shares) == pool


@pytest.mark.parametrize("call, message", [
    (lambda: allocate_pool_cost(Decimal("1"), 10, [], "greedy"), "idle_policy"),
    (lambda: allocate_pool_cost(Decimal("0.0000000000001"), 10, [], "even"), "decimal places"),
    (lambda: allocate_pool_cost(Decimal("-1"), 10, [], "even"), ">= 0"),
    (lambda: allocate_pool_cost(Decimal("1"), -1, [], "even"), "capacity"),
    (lambda: allocate_pool_cost(Decimal("1"), 10, [Workload("a", 1, 1), Workload("a", 2, 2)], "even"), "unique"),
    (lambda: allocate_pool_cost(Decimal("1"), 10, [Workload(IDLE_KEY, 1, 1)], "even"), "unique"),
    (lambda: apportion(Decimal("1"), [("a", Fraction(1, 2))]), "sum to the total"),
])
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- pool cost ----------------------------------------------------------------------------------------------


def test_pool_cost_is_gpus_times_hours_times_price_rounded_once_half_even():
    gpus = {0: ("H100-SXM-80GB", "on_demand"), 1: ("H100-SXM-80GB", "on_demand"), 5: ("H100-SXM-80GB", "on_demand")}
    after_cut = dt.datetime(2025, 7, 1, tzinfo=UTC)
    cost = pool_window_cost(gpus, after_cut, 3600, CATALOG)
    assert cost.cost_usd == Decimal("20.64") and cost.priced and cost.gpu_count == 3  # 3 x $6.88
    assert cost.price_version == "gpu-2026-11-01@2025-06-01"
    before_cut = pool_window_cost(gpus, dt.datetime(2025, 5, 1, tzinfo=UTC), 60, CATALOG)
    assert before_cut.cost_usd == Decimal("0.6145")  # 3 x $12.29 / 60
    # on-prem, amortized: (35000 / 26280 + 0.25) $/h for 7 s = 0.0030822... -> half-even at 12 places
    on_prem = pool_window_cost({0: ("H100-SXM-80GB", "on_prem")}, after_cut, 7, CATALOG)
    exact = (Fraction(35000, 26280) + Fraction(1, 4)) * 7 / 3600
    assert on_prem.exact_cost_usd == exact
    assert on_prem.cost_usd == Decimal(round(exact * 10**12)).scaleb(-12)


def test_a_pool_with_any_unknown_gpu_is_unpriced_not_zero_priced_silently():
    gpus = {0: ("H100-SXM-80GB", "on_demand"), 1: ("TPU-v5", "on_demand")}
    cost = pool_window_cost(gpus, START, 3600, CATALOG)
    assert not cost.priced and cost.price_version == "unpriced" and cost.cost_usd == 0
    assert "TPU-v5/on_demand" in cost.unpriced_reason


# --- records -------------------------------------------------------------------------------------------------


def closed_window(gpus, workloads, **overrides) -> ClosedWindow:
    fields = dict(
        pool="aws-use1/p5-a", cluster="aws-use1", node="p5-a", window_start=START,
        window_end=START + dt.timedelta(hours=1), gpus=gpus, workloads=tuple(workloads), late=False,
        closed_by="watermark", events=len(workloads),
    )
    fields.update(overrides)
    return ClosedWindow(**fields)


def workload(tenant, team, requested, used, namespace="ml", job="train") -> Workload:
    return Workload(workload_key(tenant, team, namespace, job), Fraction(requested), Fraction(used),
                    tenant=tenant, team=team, namespace=namespace, job=job)


def test_attribute_window_builds_allocations_and_one_cost_line_each_that_encode_and_sum_exactly():
    window = closed_window(
        {0: ("H100-SXM-80GB", "on_demand"), 1: ("H100-SXM-80GB", "on_demand")},
        [workload("acme", "search", 3600, 1200), workload("globex", None, 0, Fraction(3600, 7), job="notebook")],
    )
    result = attribute_window(window, CATALOG, "bucket", 3600)
    assert result.pool_cost.cost_usd == Decimal("13.76")
    assert sum(a["cost_usd"] for a in result.allocations) == Decimal("13.76")
    assert sum(line["cost_usd"] for line in result.cost_lines) == Decimal("13.76")
    allocation_codec, line_codec = codec_for("gpu_allocation"), codec_for("cost_line")
    for allocation, line in zip(result.allocations, result.cost_lines):
        decoded = allocation_codec.decode(allocation_codec.encode(allocation))
        assert decoded["cost_usd"] == allocation["cost_usd"]
        assert line_codec.decode(line_codec.encode(line))["cost_usd"] == allocation["cost_usd"]
        assert line["line_id"] == cost_line_id("gpu", allocation["allocation_id"])
        assert line["source"] == "gpu" and line["usage_unit"] == "gpu_second" and line["charge_category"] == "usage"
        assert line["usage_quantity"] == allocation["charged_gpu_seconds"]
        assert line["resource"] == "aws-use1/p5-a" and line["provider"] == "aws-use1" and line["model"] == "H100-SXM-80GB"
        row = allocation_row(decoded, kafka_partition=1, kafka_offset=7, ingested_at=START)
        assert row["window_date"] == START.date() and row["cost_usd"] == allocation["cost_usd"] and row["late"] == 0
    by_tenant = {a["tenant"]: a for a in result.allocations}
    assert by_tenant["acme"]["charged_gpu_seconds"] == Decimal(3600) and by_tenant["acme"]["kind"] == "workload"
    assert by_tenant["unallocated"]["kind"] == "idle" and by_tenant["unallocated"]["team"] == "unallocated"
    lines = {line["tenant"]: line for line in result.cost_lines}
    assert lines["unallocated"]["tag_source"]["tenant"] == "default" and lines["unallocated"]["tag_source"]["team"] == "default"
    assert lines["acme"]["tag_source"]["team"] == "explicit" and lines["acme"]["team"] == "search"
    assert lines["globex"]["team"] == "unallocated" and lines["globex"]["tag_source"]["team"] == "default"
    assert lines["globex"]["labels"]["job"] == "notebook"


def test_allocation_ids_are_deterministic_and_distinct_per_pool_window_and_share():
    window = closed_window({0: ("L4-24GB", "spot")}, [workload("acme", "a", 10, 0), workload("hooli", "b", 10, 0)])
    first = attribute_window(window, CATALOG, "bucket", 3600)
    again = attribute_window(window, CATALOG, "bucket", 3600)
    assert [a["allocation_id"] for a in first.allocations] == [a["allocation_id"] for a in again.allocations]
    assert len({a["allocation_id"] for a in first.allocations}) == 3
    later = attribute_window(closed_window({0: ("L4-24GB", "spot")}, window.workloads,
                                           window_start=START + dt.timedelta(hours=1),
                                           window_end=START + dt.timedelta(hours=2)), CATALOG, "bucket", 3600)
    assert not {a["allocation_id"] for a in first.allocations} & {a["allocation_id"] for a in later.allocations}


def test_unpriced_pool_keeps_the_gpu_seconds_and_flags_every_line():
    window = closed_window({0: ("MI300X", "on_demand")}, [workload("acme", "a", 100, 50)])
    result = attribute_window(window, CATALOG, "proportional", 3600)
    assert all(a["price_version"] == "unpriced" and a["cost_usd"] == 0 for a in result.allocations)
    assert all(not line["priced"] and "MI300X" in line["labels"]["unpriced_reason"] for line in result.cost_lines)
    assert result.allocations[0]["charged_gpu_seconds"] == Decimal(100)


def test_node_inventory_adds_unobserved_gpus_to_capacity_and_cost():
    catalog = parse_gpu_catalog({
        "version": "t", "effective_from": "2025-01-01T00:00:00Z",
        "prices": [{"gpu_model": "L4-24GB", "capacity_type": "reserved", "usd_per_gpu_hour": "1"}],
        "nodes": [{"cluster": "aws-use1", "node": "p5-a", "gpus": 4, "gpu_model": "L4-24GB", "capacity_type": "reserved"}],
    })
    window = closed_window({1: ("L4-24GB", "reserved")}, [workload("acme", "a", 3600, 0)])
    result = attribute_window(window, catalog, "bucket", 3600)
    assert result.pool_cost.gpu_count == 4 and result.pool_cost.cost_usd == Decimal(4)
    assert {a["kind"]: a["cost_usd"] for a in result.allocations} == {"workload": Decimal(1), "idle": Decimal(3)}


# --- inference pools -------------------------------------------------------------------------------------------


def test_inference_pool_cost_is_split_by_tokens_exactly_with_a_rate_per_million_tokens():
    shares = allocate_inference_pool(Decimal("10"), {"acme": 600_000, "globex": 300_000, "idle-tenant": 0, "hooli": 100_000})
    assert sum(s.cost_usd for s in shares) == Decimal("10")
    by_tenant = {s.tenant: s for s in shares}
    assert set(by_tenant) == {"acme", "globex", "hooli"}
    assert by_tenant["acme"].cost_usd == Decimal("6") and by_tenant["acme"].usd_per_mtok == Decimal("10")
    thirds = allocate_inference_pool(Decimal("1"), {"a": 1, "b": 1, "c": 1})
    assert [s.cost_usd for s in thirds] == [Decimal("0.333333333334"), Decimal("0.333333333333"), Decimal("0.333333333333")]
    assert thirds[0].usd_per_mtok == Decimal("333333.333334")


def test_an_unused_inference_pool_is_idle():
    (idle,) = allocate_inference_pool(Decimal("2.5"), {"acme": 0})
    assert idle.tenant == IDLE_KEY and idle.cost_usd == Decimal("2.5") and idle.usd_per_mtok is None


@settings(max_examples=200)
@given(pool_costs, st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), st.integers(0, 10**9), max_size=6))
def test_inference_shares_always_sum_to_the_pool_cost(pool_cost, tokens):
    assert total(allocate_inference_pool(pool_cost, tokens)) == pool_cost


def llm_line(tenant, provider, model, tokens, minute=5):
    return {"source": "llm", "tenant": tenant, "provider": provider, "model": model, "input_tokens": tokens,
            "output_tokens": tokens // 2, "event_time": START + dt.timedelta(minutes=minute)}


def test_inference_pool_allocations_take_tokens_of_the_pools_local_models_in_the_window(tmp_path):
    path = tmp_path / "pools.yaml"
    path.write_text("pools:\n  - {name: llama-serving, cluster: onprem-dc1, nodes: [dgx-02, dgx-03], models: [Llama-3.1-8B]}\n")
    (pool,) = load_inference_pools(path)
    assert pool == InferencePool("llama-serving", "onprem-dc1", ("dgx-02", "dgx-03"), ("llama-3.1-8b",))
    end = START + dt.timedelta(hours=1)
    lines = [
        llm_line("acme", "local", "llama-3.1-8b", 3000),
        llm_line("globex", "local", "llama-3.1-8b", 1000),
        llm_line("globex", "openai", "gpt-4o", 99_999),  # not served by the pool
        llm_line("hooli", "local", "mistral-7b", 5000),  # not one of its models
        llm_line("acme", "local", "llama-3.1-8b", 7000, minute=61),  # next window
    ]
    assert tokens_by_tenant(lines, pool, START, end) == {"acme": 4500, "globex": 1500}
    node_allocations = []
    for node, cost in (("dgx-02", "4.000000000001"), ("dgx-03", "2")):
        node_allocations += [{"cluster": "onprem-dc1", "node": node, "pool": f"onprem-dc1/{node}", "window_start": START,
                              "kind": kind, "pool_cost_usd": Decimal(cost), "gpu_model": "H100-SXM-80GB",
                              "capacity_type": "on_prem", "price_version": "v@1", "late": False}
                             for kind in ("workload", "idle")]
    records = inference_pool_allocations(pool, START, end, node_allocations, lines)
    assert sum(r["cost_usd"] for r in records) == Decimal("6.000000000001")
    by_tenant = {r["tenant"]: r for r in records}
    assert by_tenant["acme"]["tokens"] == 4500 and by_tenant["acme"]["kind"] == "inference_tenant"
    assert by_tenant["acme"]["cost_usd"] == Decimal("4.500000000001")  # 3/4 of the pool; remainder 0.75 units wins
    assert by_tenant["acme"]["usd_per_mtok"] == Decimal("1000.000000000222")
    codec = codec_for("gpu_allocation")
    assert all(codec.decode(codec.encode(r))["pool"] == "llama-serving" for r in records)
    assert records[0]["allocation_id"] == allocation_id("llama-serving", START, end, "inference:acme")


def test_inference_pool_files_are_checked():
    assert load_inference_pools(None) == ()
    with pytest.raises(ValueError, match="needs a name, a cluster, nodes and models"):
        parse_inference_pools({"pools": [{"name": "x", "cluster": "c", "nodes": []}]})
    with pytest.raises(ValueError, match="unique"):
        parse_inference_pools({"pools": [{"name": "x", "cluster": "c", "nodes": ["n"], "models": ["m"]}] * 2})
    pool = InferencePool("x", "c", ("n",), ("m",))
    assert pool.serves("LOCAL", " M ") and not pool.serves("openai", "m") and pool.has_node("c", "n")


def test_records_are_plain_json_after_the_codec(tmp_path):
    window = closed_window({0: ("A100-SXM4-80GB", "spot")}, [workload("acme", "a", 60, 30)])
    (allocation,) = attribute_window(window, CATALOG, "proportional", 60).allocations
    assert json.loads(codec_for("gpu_allocation").encode_json(allocation))["cost_usd"] == "0.031666666667"  # 1.90 / 60
