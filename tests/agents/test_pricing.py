"""agents/pricing.py: exact Decimal costs from the price table, half-even rounding at 12 places."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.pricing import (
    UNPRICED_VERSION,
    ModelPrice,
    PriceTable,
    load_price_table,
    parse_price_table,
    price_llm_call,
)

MILLION = Decimal(1_000_000)
BUNDLED_YAML = yaml.safe_load(resources.files("agents").joinpath("price_table.yaml").read_text())
TABLE = load_price_table()


def _call(provider: str, model: str, input_tokens: int, output_tokens: int, cached: int = 0) -> dict:
    return {"provider": provider, "model": model, "input_tokens": input_tokens,
            "output_tokens": output_tokens, "cached_input_tokens": cached}


def _yaml_entry(model: str) -> dict:
    [entry] = [e for e in BUNDLED_YAML["models"] if e["model"] == model]
    return entry


def test_gpt_4o_worked_example():
    entry = _yaml_entry("gpt-4o")
    # 1000 input tokens of which 200 cached, 500 output: 800 at the input rate, 200 at the cached rate.
    expected = (
        800 * Decimal(entry["input_per_mtok"]) / MILLION
        + 200 * Decimal(entry["cached_input_per_mtok"]) / MILLION
        + 500 * Decimal(entry["output_per_mtok"]) / MILLION
    )
    priced = price_llm_call(_call("openai", "gpt-4o", 1000, 500, cached=200), TABLE)
    assert priced.cost_usd == expected
    assert priced.cost_usd == Decimal("0.00725")  # 0.002 + 0.00025 + 0.005 by hand
    assert priced.priced is True
    assert priced.price_version == BUNDLED_YAML["version"]
    assert priced.price.model == "gpt-4o"


@pytest.mark.parametrize("entry", BUNDLED_YAML["models"], ids=lambda e: e["model"])
def test_every_bundled_model_is_priced_from_its_yaml_numbers(entry):
    input_tokens, cached, output_tokens = 123_457, 23_456, 7_891
    expected = (
        (input_tokens - cached) * Decimal(entry["input_per_mtok"])
        + cached * Decimal(entry["cached_input_per_mtok"])
        + output_tokens * Decimal(entry["output_per_mtok"])
    ) / MILLION
    priced = price_llm_call(_call(entry["provider"], entry["model"], input_tokens, output_tokens, cached), TABLE)
    assert priced.cost_usd == expected
    assert priced.cost_usd.as_tuple().exponent == -12  # always at the money scale


def test_missing_cached_tokens_count_as_zero():
    event = _call("openai", "gpt-4o", 1000, 0)
    del event["cached_input_tokens"]
    assert price_llm_call(event, TABLE).cost_usd == 1000 * Decimal("2.50") / MILLION


def _tiny_table(input_per_mtok: str) -> PriceTable:
    price = ModelPrice("acme-ai", "tiny", Decimal(input_per_mtok), Decimal(0), Decimal(0))
    return PriceTable("t1", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), {("acme-ai", "tiny"): price})


# Price 0.0000005 USD per million tokens: n tokens cost n * 0.5e-12 USD, i.e. exactly half a unit of the
# 12th place for every odd n. Half-even rounds those ties to the even neighbour.
@pytest.mark.parametrize(("tokens", "units_of_1e_12"), [
    (1, 0),   # 0.5 -> 0
    (3, 2),   # 1.5 -> 2
    (5, 2),   # 2.5 -> 2 (half-up would give 3)
    (7, 4),   # 3.5 -> 4
    (2, 1),   # 1.0 exact
])
def test_rounding_is_half_even_at_twelve_places(tokens, units_of_1e_12):
    priced = price_llm_call(_call("acme-ai", "tiny", tokens, 0), _tiny_table("0.0000005"))
    assert priced.cost_usd == Decimal(units_of_1e_12) * Decimal("1e-12")
    assert priced.cost_usd.as_tuple().exponent == -12


def test_rounding_of_non_ties_goes_to_the_nearest():
    # 1 token at 0.0000007/Mtok = 0.7e-12 -> 1e-12 ; at 0.0000004/Mtok = 0.4e-12 -> 0
    assert price_llm_call(_call("acme-ai", "tiny", 1, 0), _tiny_table("0.0000007")).cost_usd == Decimal("1e-12")
    assert price_llm_call(_call("acme-ai", "tiny", 1, 0), _tiny_table("0.0000004")).cost_usd == 0


def test_unknown_model_is_flagged_unpriced_not_silently_free():
    priced = price_llm_call(_call("openai", "gpt-9-ultra", 1000, 500), TABLE)
    assert priced.priced is False
    assert priced.cost_usd == 0
    assert priced.price_version == UNPRICED_VERSION == "unpriced"
    assert priced.price is None


def test_known_model_under_another_provider_is_unknown():
    assert price_llm_call(_call("azure", "gpt-4o", 1000, 500), TABLE).priced is False


def test_lookup_ignores_case_and_surrounding_whitespace():
    reference = price_llm_call(_call("openai", "gpt-4o", 1000, 500, 200), TABLE)
    for provider, model in (("OpenAI", "GPT-4o"), ("  openai ", "gpt-4o\t"), ("OPENAI", " Gpt-4O ")):
        priced = price_llm_call(_call(provider, model, 1000, 500, 200), TABLE)
        assert priced.priced is True
        assert priced.cost_usd == reference.cost_usd


def test_table_entries_are_normalised_to_lower_case():
    table = parse_price_table({"version": "v", "effective_from": "2026-01-01T00:00:00Z", "models": [
        {"provider": "OpenAI", "model": "GPT-4o", "input_per_mtok": "1", "cached_input_per_mtok": "1",
         "output_per_mtok": "1"},
    ]})
    assert table.find("openai", "gpt-4o") is not None


def test_bundled_table_metadata():
    assert TABLE.version == str(BUNDLED_YAML["version"])
    assert TABLE.effective_from == dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert len(TABLE.prices) == len(BUNDLED_YAML["models"])
    for entry in BUNDLED_YAML["models"]:
        # yaml strings, so Decimal exactly as written
        price = TABLE.find(entry["provider"], entry["model"])
        assert price.input_per_mtok == Decimal(entry["input_per_mtok"])
        assert price.cached_input_per_mtok == Decimal(entry["cached_input_per_mtok"])
        assert price.output_per_mtok == Decimal(entry["output_per_mtok"])


def _document(**entry_overrides) -> dict:
    entry = {"provider": "p", "model": "m", "input_per_mtok": "1.5", "cached_input_per_mtok": "0.5",
             "output_per_mtok": "3"} | entry_overrides
    return {"version": "v9", "effective_from": "2026-02-01T00:00:00Z", "models": [entry]}


@pytest.mark.parametrize("name", ["input_per_mtok", "cached_input_per_mtok", "output_per_mtok"])
def test_float_prices_are_refused(name):
    with pytest.raises(ValueError, match=name):
        parse_price_table(_document(**{name: 2.5}))


@pytest.mark.parametrize("name", ["input_per_mtok", "cached_input_per_mtok", "output_per_mtok"])
def test_negative_prices_are_refused(name):
    with pytest.raises(ValueError, match=">= 0"):
        parse_price_table(_document(**{name: "-0.01"}))


def test_missing_price_is_refused():
    document = _document()
    del document["models"][0]["output_per_mtok"]
    with pytest.raises(ValueError, match="output_per_mtok"):
        parse_price_table(document)


def test_integer_prices_are_exact():
    table = parse_price_table(_document(output_per_mtok=3))
    assert table.find("p", "m").output_per_mtok == Decimal(3)


def test_float_in_yaml_file_is_refused(tmp_path: Path):
    path = tmp_path / "prices.yaml"
    path.write_text(
        'version: "x"\neffective_from: "2026-01-01T00:00:00Z"\nmodels:\n'
        "  - {provider: p, model: m, input_per_mtok: 0.1, cached_input_per_mtok: \"0\", output_per_mtok: \"0\"}\n"
    )
    with pytest.raises(ValueError, match="decimal string"):
        load_price_table(path)


def test_load_price_table_from_a_file(tmp_path: Path):
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(_document()))
    table = load_price_table(path)
    assert table.version == "v9"
    assert table.effective_from == dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    priced = price_llm_call(_call("p", "m", 2_000_000, 1_000_000, 1_000_000), table)
    assert priced.cost_usd == Decimal("1.5") + Decimal("0.5") + Decimal("3")
    assert priced.price_version == "v9"


# --- properties ----------------------------------------------------------------------------------------------

_models = st.sampled_from([(e["provider"], e["model"]) for e in BUNDLED_YAML["models"]])
_usage = st.integers(0, 10**9).flatmap(
    lambda input_tokens: st.tuples(st.just(input_tokens), st.integers(0, input_tokens), st.integers(0, 10**9))
)


@settings(max_examples=200, deadline=None)
@given(_models, _usage, _usage)
def test_cost_is_additive_over_token_counts(model, a, b):
    # Bundled prices have at most 3 decimals, so per-token costs are exact at 12 places: no rounding, so
    # pricing two calls separately must equal pricing their summed tokens.
    provider, name = model

    def cost(usage):
        input_tokens, cached, output_tokens = usage
        return price_llm_call(_call(provider, name, input_tokens, output_tokens, cached), TABLE).cost_usd

    combined = (a[0] + b[0], a[1] + b[1], a[2] + b[2])
    assert cost(a) + cost(b) == cost(combined)


_price = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(_price, _price, _price, _usage)
def test_cost_is_never_negative(input_price, cached_price, output_price, usage):
    table = PriceTable("p", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                       {("p", "m"): ModelPrice("p", "m", input_price, cached_price, output_price)})
    input_tokens, cached, output_tokens = usage
    cost = price_llm_call(_call("p", "m", input_tokens, output_tokens, cached), table).cost_usd
    assert cost >= 0
    assert cost.as_tuple().exponent == -12
