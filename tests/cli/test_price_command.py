"""`prismops price`: what one call costs, checked against the per-token prices in the catalog file itself."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

import prismops.cli.app
import prismops.settings

EXCERPT = Path(__file__).resolve().parents[1] / "fixtures" / "litellm" / "model_prices_excerpt.json"
PRICES = json.loads(EXCERPT.read_bytes(), parse_float=Decimal)
MILLION = Decimal(1_000_000)
TOKENS = {"input": 1_234_567, "cached": 234_567, "write": 34_567, "output": 765_432, "reasoning": 65_432}
# Where each flat excerpt entry (no threshold tiers, no off-peak prices, a unique model name) should land:
# LiteLLM's provider is the namespace ("gemini", never merged into another), "gemini/" keys lose the prefix.
EXPECTED_KEYS = {
    "gpt-4o": ("openai", "gpt-4o"),
    "gpt-4o-mini": ("openai", "gpt-4o-mini"),
    "claude-sonnet-4-20250514": ("anthropic", "claude-sonnet-4-20250514"),
    "gemini/gemini-2.0-flash": ("gemini", "gemini-2.0-flash"),
    "gemini/gemini-2.5-flash-preview-04-17": ("gemini", "gemini-2.5-flash-preview-04-17"),
    "text-embedding-3-small": ("openai", "text-embedding-3-small"),
}
# The hand-written entries: threshold tiers, service tiers, off-peak windows, namespaces (test_price_batch.py)
SPECIAL_KEYS = {"gemini/gemini-2.5-pro", "gemini-2.5-pro", "claude-sonnet-4-5", "xai/grok-4-fast", "gpt-4.1",
                "azure/gpt-4.1", "gpt-5.4", "deepseek/deepseek-chat", "deepseek-chat", "tencent/deepseek-v4-flash",
                "dashscope/qwen-plus", "anthropic.claude-3-haiku-20240307-v1:0",
                "bedrock/eu-central-1/anthropic.claude-3-haiku-20240307-v1:0"}


def price(*args: str, settings: prismops.settings.Settings | None = None):
    return CliRunner().invoke(prismops.cli.app.main, ["price", *args], obj=settings or prismops.settings.Settings())


def token_args(tokens: dict[str, int]) -> list[str]:
    return ["--input-tokens", str(tokens["input"]), "--output-tokens", str(tokens["output"]),
            "--cached-input-tokens", str(tokens["cached"]), "--cache-write-tokens", str(tokens["write"]),
            "--reasoning-tokens", str(tokens["reasoning"])]


def expected_components(raw: dict, tokens: dict[str, int]) -> dict[str, tuple[int, Decimal, Decimal]]:
    """(tokens, USD per token, USD) per kind; a missing cache price is the input price, reasoning the output's."""
    input_price, output_price = raw["input_cost_per_token"], raw["output_cost_per_token"]
    counts_and_prices = {
        "input": (tokens["input"] - tokens["cached"] - tokens["write"], input_price),
        "cache_read": (tokens["cached"], raw.get("cache_read_input_token_cost", input_price)),
        "cache_write": (tokens["write"], raw.get("cache_creation_input_token_cost", input_price)),
        "output": (tokens["output"] - tokens["reasoning"], output_price),
        "reasoning": (tokens["reasoning"], raw.get("output_cost_per_reasoning_token", output_price)),
    }
    return {kind: (count, unit, count * unit) for kind, (count, unit) in counts_and_prices.items()}


def test_the_excerpt_covers_what_it_should():
    priced = {name for name, raw in PRICES.items() if name != "sample_spec"
              and ("input_cost_per_token" in raw or "tiered_pricing" in raw)}
    assert priced == set(EXPECTED_KEYS) | SPECIAL_KEYS
    assert "sample_spec" in PRICES
    assert any(raw.get("mode") == "image_generation" and "input_cost_per_token" not in raw for raw in PRICES.values())
    def floats(value) -> bool:
        if isinstance(value, dict):
            return any(floats(v) for v in value.values())
        if isinstance(value, list):
            return any(floats(v) for v in value)
        return isinstance(value, float)

    assert not any(floats(raw) for raw in PRICES.values())  # parse_float=Decimal kept every price exact


@pytest.mark.parametrize("name", sorted(EXPECTED_KEYS))
def test_every_excerpt_model_costs_its_per_token_prices_times_the_tokens(name):
    raw = PRICES[name]
    provider, model = EXPECTED_KEYS[name]
    result = price("--catalog", str(EXCERPT), "--model", model, *token_args(TOKENS), "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    payload = json.loads(result.stdout)

    expected = expected_components(raw, TOKENS)
    total = sum(usd for _, _, usd in expected.values())
    assert total.as_tuple().exponent >= -12  # these prices times whole tokens need no rounding at 12 places
    assert Decimal(payload["cost_usd"]) == total
    assert (payload["provider"], payload["model"]) == (provider, model)
    assert payload["price_version"].startswith("litellm-")
    assert payload["override"] is None
    rows = {row["component"]: row for row in payload["components"]}
    assert set(rows) == set(expected)
    for kind, (count, unit, usd) in expected.items():
        assert rows[kind]["tokens"] == count
        assert Decimal(rows[kind]["usd_per_mtok"]) == unit * MILLION
        assert Decimal(rows[kind]["cost_usd"]) == usd


@pytest.mark.parametrize("name", sorted(EXPECTED_KEYS))
def test_an_explicit_provider_gives_the_same_price(name):
    provider, model = EXPECTED_KEYS[name]
    tokens = {"input": 5_000, "cached": 1_000, "write": 0, "output": 700, "reasoning": 0}
    result = price("--catalog", str(EXCERPT), "--provider", provider.upper(), "--model", model.upper(),
                   *token_args(tokens), "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    expected = sum(usd for _, _, usd in expected_components(PRICES[name], tokens).values())
    assert Decimal(json.loads(result.stdout)["cost_usd"]) == expected


def test_the_catalog_can_come_from_settings():
    settings = prismops.settings.Settings().with_overrides(pricing={"catalog": EXCERPT})
    result = price("--model", "gpt-4o-mini", "--input-tokens", "1000000", "--output-tokens", "1000000",
                   "--format", "json", settings=settings)
    assert result.exit_code == 0, result.output + result.stderr
    raw = PRICES["gpt-4o-mini"]
    assert Decimal(json.loads(result.stdout)["cost_usd"]) == 1_000_000 * (raw["input_cost_per_token"] + raw["output_cost_per_token"])


def test_the_table_is_for_people():
    result = price("--model", "gpt-4o", "--input-tokens", "1000", "--output-tokens", "500",
                   "--cached-input-tokens", "200", "--at", "2025-03-01")
    assert result.exit_code == 0, result.output + result.stderr
    out = result.stdout
    assert not out.lstrip().startswith(("{", "["))
    assert "openai/gpt-4o" in out
    for component in ("input", "cache_read", "cache_write", "output", "reasoning"):
        assert component in out
    # 800 × $2.50/M + 200 × $1.25/M + 500 × $10/M from the bundled catalog's 2024-10-01 entry, by hand
    assert "0.007250000000" in out
    assert "0.00025" in out and "1.25" in out


def test_bundled_catalog_json_at_a_date():
    result = price("--model", "gpt-4o", "--input-tokens", "1000", "--output-tokens", "500",
                   "--cached-input-tokens", "200", "--at", "2024-06-01T12:00:00Z", "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    payload = json.loads(result.stdout)
    # the first gpt-4o entry ($5 / $15 per M, no cache price): 1000 × 5/M + 500 × 15/M
    assert Decimal(payload["cost_usd"]) == Decimal("0.0125")
    assert payload["effective_from"].startswith("2024-05-13")


def test_an_unknown_model_fails_on_stderr():
    result = price("--model", "gpt-9-ultra", "--input-tokens", "10", "--output-tokens", "10", "--format", "json")
    assert result.exit_code != 0
    assert "gpt-9-ultra is not in the catalog" in result.stderr
    assert "unpriced" in result.stderr
    assert result.stdout == ""


def test_a_model_under_the_wrong_provider_is_unknown():
    result = price("--catalog", str(EXCERPT), "--provider", "anthropic", "--model", "gpt-4o",
                   "--input-tokens", "10", "--output-tokens", "10")
    assert result.exit_code != 0
    assert "anthropic/gpt-4o is not in the catalog" in result.stderr


def test_before_the_first_entry_there_is_no_price():
    result = price("--model", "gpt-4o", "--input-tokens", "10", "--output-tokens", "10", "--at", "2024-01-01")
    assert result.exit_code != 0
    assert "gpt-4o has no price in effect at that time" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("tenant", "expected"), [
    ("hooli", Decimal("0.0061625")),  # 0.00725 less the bundled 15% discount on openai models, by hand
    ("acme", Decimal("0.00725")),
])
def test_a_tenant_discount(tenant, expected):
    result = price("--model", "gpt-4o", "--input-tokens", "1000", "--output-tokens", "500",
                   "--cached-input-tokens", "200", "--at", "2026-06-01", "--tenant", tenant, "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    payload = json.loads(result.stdout)
    assert Decimal(payload["cost_usd"]) == expected
    assert payload["tenant"] == tenant
    assert (payload["override"] is not None) == (tenant == "hooli")
    if tenant == "hooli":
        assert "hooli" in payload["override"] and "15" in payload["override"]


def test_hooli_before_its_discount_pays_list_price():
    result = price("--model", "gpt-4o", "--input-tokens", "1000", "--output-tokens", "500",
                   "--cached-input-tokens", "200", "--at", "2025-12-31", "--tenant", "hooli", "--format", "json")
    assert Decimal(json.loads(result.stdout)["cost_usd"]) == Decimal("0.00725")


@pytest.mark.parametrize(("args", "message"), [
    (["--input-tokens", "100", "--cached-input-tokens", "101", "--output-tokens", "0"], "--cached-input-tokens"),
    (["--input-tokens", "100", "--cached-input-tokens", "60", "--cache-write-tokens", "41", "--output-tokens", "0"],
     "--cache-write-tokens"),
    (["--input-tokens", "100", "--output-tokens", "10", "--reasoning-tokens", "11"], "--reasoning-tokens"),
])
def test_token_counts_that_cannot_be_are_refused(args, message):
    result = price("--model", "gpt-4o", *args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert result.stdout == ""


def test_a_bad_time_is_a_usage_error():
    result = price("--model", "gpt-4o", "--input-tokens", "1", "--output-tokens", "1", "--at", "yesterday")
    assert result.exit_code == 2
    assert "ISO-8601" in result.stderr


def test_negative_tokens_are_a_usage_error():
    result = price("--model", "gpt-4o", "--input-tokens", "-1", "--output-tokens", "1")
    assert result.exit_code == 2


def test_a_broken_catalog_is_reported(tmp_path: Path):
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  - {provider: p, model: m, input_per_mtok: 0.1, output_per_mtok: '0'}\n")
    result = price("--catalog", str(path), "--model", "m", "--input-tokens", "1", "--output-tokens", "1")
    assert result.exit_code != 0
    assert "cannot load the price catalog" in result.stderr and "decimal string" in result.stderr
