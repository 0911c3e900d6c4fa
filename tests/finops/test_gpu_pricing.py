"""finops/gpu_pricing.py: $/GPU-hour by model and capacity type, effective-dated; on-prem amortized; MIG fractions."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction
from importlib import resources

import pytest
import yaml

from prismops.finops.gpu_pricing import CAPACITY_TYPES, UnknownMigProfile, load_gpu_catalog, parse_gpu_catalog

UTC = dt.timezone.utc
BUNDLED = yaml.safe_load(resources.files("prismops.finops").joinpath("gpu_prices.yaml").read_text())
CATALOG = load_gpu_catalog()


def at(year: int, month: int, day: int = 1) -> dt.datetime:
    return dt.datetime(year, month, day, tzinfo=UTC)


def document(*prices: dict, **extra) -> dict:
    return {"version": "t1", "effective_from": "2025-01-01T00:00:00Z", "prices": list(prices), **extra}


def test_every_bundled_model_has_cloud_and_on_prem_prices_that_parse_exactly():
    capacity_types = {e["capacity_type"] for e in BUNDLED["prices"]}
    assert capacity_types == set(CAPACITY_TYPES)
    for entry in BUNDLED["prices"]:
        price = CATALOG.price_at(entry["gpu_model"], entry["capacity_type"], at(2026, 1))
        assert price is not None and price.usd_per_gpu_hour > 0
        if "usd_per_gpu_hour" in entry and "effective_from" not in entry and entry["gpu_model"] != "H100-SXM-80GB":
            assert price.usd_per_gpu_hour == Fraction(Decimal(entry["usd_per_gpu_hour"])) and price.basis == "list"


def test_on_prem_is_amortized_purchase_over_hours_plus_power_and_hosting():
    [entry] = [e for e in BUNDLED["prices"] if e["gpu_model"] == "H100-SXM-80GB" and e["capacity_type"] == "on_prem"]
    price = CATALOG.price_at("H100-SXM-80GB", "on_prem", at(2026, 1))
    expected = (Fraction(Decimal(entry["purchase_usd"])) / Fraction(Decimal(entry["amortization_hours"]))
                + Fraction(Decimal(entry["power_and_hosting_usd_per_hour"])))
    assert price.usd_per_gpu_hour == expected and price.basis == "amortized"
    assert price.usd_per_gpu_hour == Fraction(35000, 26280) + Fraction(1, 4)  # 1.3318 + 0.25 by hand
    assert price.usd_per_gpu_hour.denominator != 1  # kept exact, not rounded to cents


def test_prices_are_effective_dated_and_carry_their_version():
    before = CATALOG.price_at("H100-SXM-80GB", "on_demand", at(2025, 5, 31))
    after = CATALOG.price_at("H100-SXM-80GB", "on_demand", at(2025, 6, 1))
    assert before.usd_per_gpu_hour == Fraction("12.29") and before.version == "gpu-2026-11-01@2025-01-01"
    assert after.usd_per_gpu_hour == Fraction("6.88") and after.version == "gpu-2026-11-01@2025-06-01"
    assert CATALOG.price_at("H100-SXM-80GB", "on_demand", at(2024, 12, 31)) is None, "nothing in effect yet: unpriced"


def test_unknown_model_or_capacity_type_is_unpriced_and_names_match_case_insensitively():
    assert CATALOG.price_at("TPU-v5", "on_demand", at(2026, 1)) is None
    assert CATALOG.price_at("A100-SXM4-40GB", "on_prem", at(2026, 1)) is None
    assert CATALOG.price_at("  h100-sxm-80gb ", "spot", at(2026, 1)).usd_per_gpu_hour == Fraction("2.50")


@pytest.mark.parametrize("profile, fraction", [
    ("1g.10gb", Fraction(1, 7)), ("1g.20gb", Fraction(1, 7)), ("2g.20gb", Fraction(2, 7)), ("3g.40gb", Fraction(3, 7)),
    ("4g.40gb", Fraction(4, 7)), ("7g.80gb", Fraction(1)),
])
def test_mig_profiles_are_fractions_of_one_gpu(profile, fraction):
    assert CATALOG.mig_fraction("H100-SXM-80GB", profile) == fraction
    assert CATALOG.mig_fraction("A100-SXM4-80GB", profile.upper()) == fraction


def test_unknown_mig_profile_is_rejected_with_field_and_rule():
    with pytest.raises(UnknownMigProfile) as caught:
        CATALOG.mig_fraction("H100-SXM-80GB", "5g.60gb")
    assert caught.value.field == "mig_profile" and caught.value.rule == "known_mig_profile"
    assert "1g.10gb" in caught.value.message
    with pytest.raises(UnknownMigProfile, match="no MIG table"):
        CATALOG.mig_fraction("L4-24GB", "1g.10gb")


@pytest.mark.parametrize("entry, message", [
    ({"gpu_model": "X", "capacity_type": "spot", "usd_per_gpu_hour": 1.5}, "quoted decimal string"),
    ({"gpu_model": "X", "capacity_type": "spot", "usd_per_gpu_hour": "-1"}, ">= 0"),
    ({"gpu_model": "X", "capacity_type": "spot", "usd_per_gpu_hour": "cheap"}, "not a decimal"),
    ({"gpu_model": "X", "capacity_type": "preemptible", "usd_per_gpu_hour": "1"}, "capacity_type must be one of"),
    ({"gpu_model": "", "capacity_type": "spot", "usd_per_gpu_hour": "1"}, "gpu_model is required"),
    ({"gpu_model": "X", "capacity_type": "on_prem", "usd_per_gpu_hour": "1"}, "amortized"),
    ({"gpu_model": "X", "capacity_type": "on_prem", "purchase_usd": "1000", "amortization_hours": "0",
      "power_and_hosting_usd_per_hour": "0.1"}, "amortization_hours must be > 0"),
    ({"gpu_model": "X", "capacity_type": "on_prem", "purchase_usd": "1000", "amortization_hours": "100"},
     "power_and_hosting_usd_per_hour"),
])
def test_bad_price_entries_are_refused_with_a_message(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_gpu_catalog(document(entry))


def test_two_entries_taking_effect_at_the_same_moment_are_refused():
    entry = {"gpu_model": "X", "capacity_type": "spot", "usd_per_gpu_hour": "1"}
    with pytest.raises(ValueError, match="two entries"):
        parse_gpu_catalog(document(entry, dict(entry, usd_per_gpu_hour="2")))


def test_mig_fractions_must_be_exact_strings_within_one_gpu():
    with pytest.raises(ValueError, match="quoted strings"):
        parse_gpu_catalog(document(mig_profiles={"X": {"1g.1gb": 0.14}}))
    with pytest.raises(ValueError, match="at most 1 GPU"):
        parse_gpu_catalog(document(mig_profiles={"X": {"8g.1gb": "8/7"}}))


def test_node_inventory_is_read_and_checked(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(document(nodes=[
        {"cluster": "dc1", "node": "n1", "gpus": 8, "gpu_model": "H100-SXM-80GB", "capacity_type": "on_prem"}])))
    inventory = load_gpu_catalog(path).node_inventory("dc1", "n1")
    assert inventory.gpus == 8 and inventory.capacity_type == "on_prem"
    assert load_gpu_catalog(path).node_inventory("dc1", "n2") is None
    with pytest.raises(ValueError, match="gpus >= 1"):
        parse_gpu_catalog(document(nodes=[{"cluster": "c", "node": "n", "gpus": 0, "gpu_model": "X", "capacity_type": "spot"}]))
