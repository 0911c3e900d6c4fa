"""`prismops price --batch`: JSON lines of calls in, JSON lines of priced calls out, against the LiteLLM-format
excerpt in tests/fixtures (its hand-written tiered, off-peak, service-tier and namespaced entries). Every
expected cost below is computed by hand from the per-token prices written in that file; the arithmetic is in
the comment next to it. Plus the errors: a bad line, an unreadable catalog, absurd token counts.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

import prismops.cli.app
import prismops.settings

EXCERPT = Path(__file__).resolve().parents[1] / "fixtures" / "litellm" / "model_prices_excerpt.json"
MONDAY_NOON = "2026-03-02T12:00:00Z"
D = Decimal


def run(*args: str, stdin: str | None = None, settings: prismops.settings.Settings | None = None):
    return CliRunner().invoke(prismops.cli.app.main, ["price", *args], input=stdin,
                              obj=settings or prismops.settings.Settings())


def lines_of(calls: list[dict]) -> str:
    return "".join(json.dumps(call) + "\n" for call in calls)


def call(model: str, input_tokens: int, output_tokens: int, provider: str | None = None, **more) -> dict:
    return {"model": model, "provider": provider, "input_tokens": input_tokens, "output_tokens": output_tokens,
            "event_time": more.pop("event_time", MONDAY_NOON), **more}


# (call, expected cost in USD, expected price tier: service tier, threshold crossed, off-peak)
PRICED = [
    # gemini/gemini-2.5-pro at the 200k threshold: not above it. 150k × 1.25e-6 + 50k × 1.25e-7 + 1k × 1e-5
    (call("gemini-2.5-pro", 200_000, 1_000, "gemini", cached_input_tokens=50_000),
     D("0.1875") + D("0.00625") + D("0.01"), ("standard", None, False)),
    # one token above: the whole call at the tier. 150,001 × 2.5e-6 + 50k × 2.5e-7 + 1k × 1.5e-5
    (call("gemini-2.5-pro", 200_001, 1_000, "gemini", cached_input_tokens=50_000),
     D("0.3750025") + D("0.0125") + D("0.015"), ("standard", 200_000, False)),
    # the same model in the vertex namespace (via the alias vertex_ai), its own prices; it has no tier cache
    # price, so cache reads keep 1.3e-7: 240k × 2.6e-6 + 10k × 1.3e-7 + 1k × 1.55e-5
    (call("gemini-2.5-pro", 250_000, 1_000, "vertex_ai", cached_input_tokens=10_000),
     D("0.624") + D("0.0013") + D("0.0155"), ("standard", 200_000, False)),
    # claude-sonnet-4-5 above 200k, every kind at its tier price:
    # 100k × 6e-6 + 100k cache reads × 6e-7 + 100k cache writes × 7.5e-6 + 2k × 2.25e-5
    (call("claude-sonnet-4-5", 300_000, 2_000, cached_input_tokens=100_000, cache_write_tokens=100_000),
     D("0.6") + D("0.06") + D("0.75") + D("0.045"), ("standard", 200_000, False)),
    # xAI bills the tier once the prompt reaches 128k: 128k × 4e-7 + 1k × 1e-6; one below: 127,999 × 2e-7 + 1k × 5e-7
    (call("grok-4-fast", 128_000, 1_000, "xai"), D("0.0512") + D("0.001"), ("standard", 127_999, False)),
    (call("grok-4-fast", 127_999, 1_000, "xai"), D("0.0255998") + D("0.0005"), ("standard", None, False)),
    # namespaces: openai and azure gpt-4.1, each its own price. 10k × 2e-6 + 1k × 8e-6; 10k × 2.2e-6 + 1k × 8.8e-6
    (call("gpt-4.1", 10_000, 1_000, "openai"), D("0.02") + D("0.008"), ("standard", None, False)),
    (call("gpt-4.1", 10_000, 1_000, "azure"), D("0.022") + D("0.0088"), ("standard", None, False)),
    # service tiers: priority 10k × 3.5e-6 + 1k × 1.4e-5; batch 10k × 1e-6 + 1k × 4e-6
    (call("gpt-4.1", 10_000, 1_000, "openai", service_tier="priority"), D("0.035") + D("0.014"), ("priority", None, False)),
    (call("gpt-4.1", 10_000, 1_000, "openai", service_tier="batch"), D("0.01") + D("0.004"), ("batch", None, False)),
    # gpt-5.4 priority above 272k: its own tier input 1e-5; output and cache read from the standard tier at 272k:
    # 200k × 1e-5 + 100k × 5e-7 + 1k × 2.25e-5
    (call("gpt-5.4", 300_000, 1_000, service_tier="priority", cached_input_tokens=100_000),
     D("2") + D("0.05") + D("0.0225"), ("priority", 272_000, False)),
    # gpt-5.4 batch above 272k: batch tier input 2.5e-6, flat batch output 7.5e-6, standard tier cache read 5e-7:
    # 200k × 2.5e-6 + 100k × 5e-7 + 1k × 7.5e-6
    (call("gpt-5.4", 300_000, 1_000, service_tier="batch", cached_input_tokens=100_000),
     D("0.5") + D("0.05") + D("0.0075"), ("batch", 272_000, False)),
    # gpt-5.4 flex above 272k: no flex tier prices, so the standard tier's: 300k × 5e-6 + 1k × 2.25e-5
    (call("gpt-5.4", 300_000, 1_000, service_tier="flex"), D("1.5") + D("0.0225"), ("flex", 272_000, False)),
    # gpt-5.4 standard at 272k exactly: 272k × 2.5e-6 + 1k × 1.5e-5
    (call("gpt-5.4", 272_000, 1_000), D("0.68") + D("0.015"), ("standard", None, False)),
    # DeepSeek off-peak 16:30-00:30 UTC: 1M × 2.7e-7 + 100k × 1.1e-6 at peak; 1M × 1.35e-7 + 100k × 5.5e-7 off
    (call("deepseek-chat", 1_000_000, 100_000, "deepseek", event_time="2026-03-02T16:29:59Z"),
     D("0.27") + D("0.11"), ("standard", None, False)),
    (call("deepseek-chat", 1_000_000, 100_000, "deepseek", event_time="2026-03-02T16:30:00Z"),
     D("0.135") + D("0.055"), ("standard", None, True)),
    (call("deepseek-chat", 1_000_000, 100_000, "deepseek", event_time="2026-03-03T01:15:00+01:00"),  # 00:15 UTC
     D("0.135") + D("0.055"), ("standard", None, True)),
    (call("deepseek-chat", 1_000_000, 100_000, "deepseek", event_time="2026-03-03T00:30:00"),  # no zone: UTC
     D("0.27") + D("0.11"), ("standard", None, False)),
    # weekday windows (tencent): Saturday all day off-peak, Friday 05:00 UTC peak.
    # 1M × 1.5e-7 + 100k × 6e-7; 1M × 3e-7 + 100k × 1.2e-6
    (call("deepseek-v4-flash", 1_000_000, 100_000, "tencent", event_time="2026-03-07T05:00:00Z"),
     D("0.15") + D("0.06"), ("standard", None, True)),
    (call("deepseek-v4-flash", 1_000_000, 100_000, "tencent", event_time="2026-03-06T05:00:00Z"),
     D("0.3") + D("0.12"), ("standard", None, False)),
    # Dashscope range tiers: (0, 128k] → 128k × 4e-7 + 1k × 1.2e-6; (128k, 256k] → 128,001 × 1.2e-6 + 1k × 3.6e-6
    (call("qwen-plus", 128_000, 1_000, "dashscope"), D("0.0512") + D("0.0012"), ("standard", None, False)),
    (call("qwen-plus", 128_001, 1_000, "dashscope"), D("0.1536012") + D("0.0036"), ("standard", 128_000, False)),
    (call("qwen-plus", 300_000, 1_000, "dashscope"), D("0.72") + D("0.0072"), ("standard", 256_000, False)),
    # Bedrock regions are names of their own: 1M × 3e-7 (eu-central-1) vs 1M × 2.5e-7; LiteLLM's spelling too
    (call("eu-central-1/anthropic.claude-3-haiku-20240307-v1:0", 1_000_000, 0, "bedrock"), D("0.3"), ("standard", None, False)),
    (call("anthropic.claude-3-haiku-20240307-v1:0", 1_000_000, 0, "bedrock"), D("0.25"), ("standard", None, False)),
    (call("bedrock/eu-central-1/anthropic.claude-3-haiku-20240307-v1:0", 1_000_000, 0), D("0.3"), ("standard", None, False)),
]


def test_every_priced_line_against_hand_computed_costs():
    result = run("--catalog", str(EXCERPT), "--batch", "-", stdin=lines_of([c for c, _, _ in PRICED]))
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(PRICED)
    for number, (record, (sent, expected, (tier, above, off_peak))) in enumerate(zip(records, PRICED), start=1):
        assert record["line"] == number
        assert "error" not in record, record
        assert isinstance(record["cost_usd"], str) and D(record["cost_usd"]) == expected, (sent, record["cost_usd"])
        assert record["price_tier"]["service_tier"] == tier, sent
        assert record["price_tier"]["above_input_tokens"] == above, sent
        assert record["price_tier"]["off_peak"] is off_peak, sent
        breakdown = record["breakdown"]
        assert sum(D(part["cost_usd"]) for part in breakdown.values()) == expected
        assert sum(part["tokens"] for part in breakdown.values()) == sent["input_tokens"] + sent["output_tokens"]
        assert record["price_version"].startswith("litellm-")
    assert "priced 26 of 26 lines" in result.stderr


def test_the_azure_call_asking_for_flex_is_priced_standard_and_says_so():
    result = run("--catalog", str(EXCERPT), "--batch", "-",
                 stdin=lines_of([call("gpt-4.1", 10_000, 1_000, "azure", service_tier="flex")]))
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    assert D(record["cost_usd"]) == D("0.0308")
    assert record["price_tier"] == {"service_tier": "standard", "above_input_tokens": None, "off_peak": False,
                                    "service_tier_requested": "flex"}


BAD_LINES = [
    ("not json", None, "json"),
    ("[1, 2]", None, "object"),
    (json.dumps({"input_tokens": 1, "output_tokens": 1}), "model", "required"),
    (json.dumps(call("gpt-4o", 10**40, 1)), "input_tokens", "max_tokens"),
    (json.dumps(call("gpt-4o", 10**15, 1)), "input_tokens", "max_tokens"),
    (json.dumps(call("gpt-4o", 1, 1)).replace('"input_tokens": 1,', '"input_tokens": 1.5,'), "input_tokens", "integer"),
    (json.dumps(call("gpt-4o", 1, 1, cached_input_tokens=2)), "cached_input_tokens", "within_input_tokens"),
    (json.dumps(call("gpt-4o", 1, 1, reasoning_tokens=2)), "reasoning_tokens", "within_output_tokens"),
    (json.dumps(call("gpt-4o", -1, 1)), "input_tokens", "non_negative"),
    (json.dumps(call("gpt-4o", 1, 1, service_tier="turbo")), "service_tier", "known_service_tier"),
    (json.dumps(call("gpt-9-ultra", 1, 1)), "model", "in_catalog"),
    (json.dumps(call("gpt-4.1", 1, 1)), "provider", "unambiguous_model"),
    (json.dumps(call("gpt-4o", 1, 1, event_time="yesterday")), "event_time", "iso_8601"),
    (json.dumps(call("gpt-4o", 1, 1, provider=7)), "provider", "type"),
]


@pytest.mark.parametrize(("line", "field", "rule"), BAD_LINES, ids=[r for _, _, r in BAD_LINES])
def test_a_bad_line_is_an_error_record_naming_line_field_and_rule(line, field, rule):
    good = json.dumps(call("gpt-4o", 1_000_000, 0))  # 1M × 2.5e-6
    result = run("--catalog", str(EXCERPT), "--batch", "-", stdin=f"{good}\n{line}\n\n{good}\n")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    first, error, blank_skipped = [json.loads(text) for text in result.stdout.splitlines()][:3]
    assert D(first["cost_usd"]) == D("2.5") and D(blank_skipped["cost_usd"]) == D("2.5")
    assert blank_skipped["line"] == 4
    assert error["line"] == 2
    assert (error["error"]["field"], error["error"]["rule"]) == (field, rule)
    assert error["error"]["message"]
    assert result.stderr.count("\n") == 2  # the skipped-entries note and one error line
    assert "priced 2 of 3 lines" in result.stderr and f"line 2: " in result.stderr and f"[{rule}]" in result.stderr


def test_the_ambiguity_error_lists_the_candidates():
    result = run("--catalog", str(EXCERPT), "--batch", "-", stdin=json.dumps(call("gpt-4.1", 1, 1)) + "\n")
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    message = record["error"]["message"]
    assert "ambiguous" in message and "azure/gpt-4.1" in message and "openai/gpt-4.1" in message


def test_a_thousand_lines_from_a_file(tmp_path: Path):
    cycle = [PRICED[1], PRICED[4], PRICED[9], PRICED[16], PRICED[21]]
    calls = [dict(cycle[i % len(cycle)][0], event_id=f"e{i}") for i in range(1_200)]
    expected = [cycle[i % len(cycle)][1] for i in range(1_200)]
    path = tmp_path / "usage.jsonl"
    path.write_text(lines_of(calls))
    result = run("--catalog", str(EXCERPT), "--batch", str(path))
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["event_id"] for r in records] == [c["event_id"] for c in calls]
    assert [D(r["cost_usd"]) for r in records] == expected
    assert sum(D(r["cost_usd"]) for r in records) == sum(expected)


def test_lines_without_event_time_are_priced_at_the_at_option():
    plain = {"model": "deepseek-chat", "provider": "deepseek", "input_tokens": 1_000_000, "output_tokens": 0}
    off = run("--catalog", str(EXCERPT), "--batch", "-", "--at", "2026-03-02T17:00:00Z", stdin=json.dumps(plain) + "\n")
    peak = run("--catalog", str(EXCERPT), "--batch", "-", "--at", "2026-03-02T12:00:00Z", stdin=json.dumps(plain) + "\n")
    assert D(json.loads(off.stdout)["cost_usd"]) == D("0.135")
    assert D(json.loads(peak.stdout)["cost_usd"]) == D("0.27")


# --- one call: --at, --service-tier, ambiguity, limits --------------------------------------------------------

def test_at_picks_off_peak_prices_for_one_call():
    args = ["--catalog", str(EXCERPT), "--provider", "deepseek", "--model", "deepseek-chat",
            "--input-tokens", "1000000", "--output-tokens", "0", "--format", "json"]
    peak = json.loads(run(*args, "--at", "2026-03-02T12:00:00Z").stdout)
    off = json.loads(run(*args, "--at", "2026-03-02T23:00:00Z").stdout)
    assert (D(peak["cost_usd"]), peak["off_peak"]) == (D("0.27"), False)
    assert (D(off["cost_usd"]), off["off_peak"]) == (D("0.135"), True)


def test_service_tier_option():
    result = run("--catalog", str(EXCERPT), "--provider", "openai", "--model", "gpt-4.1", "--service-tier", "batch",
                 "--input-tokens", "10000", "--output-tokens", "1000", "--format", "json")
    payload = json.loads(result.stdout)
    assert D(payload["cost_usd"]) == D("0.014") and payload["service_tier"] == "batch"
    bad = run("--catalog", str(EXCERPT), "--model", "gpt-4o", "--service-tier", "turbo", "--input-tokens", "1",
              "--output-tokens", "1")
    assert bad.exit_code == 2 and "not a service tier" in bad.stderr


def test_an_ambiguous_model_name_is_an_error_listing_the_candidates_never_not_in_catalog():
    result = run("--catalog", str(EXCERPT), "--model", "gpt-4.1", "--input-tokens", "1", "--output-tokens", "1")
    assert result.exit_code == 1
    assert "not in the catalog" not in result.stderr
    assert "gpt-4.1 is ambiguous" in result.stderr
    assert "azure/gpt-4.1" in result.stderr and "openai/gpt-4.1" in result.stderr and "--provider" in result.stderr
    assert result.stdout == ""


def test_the_table_names_the_tier_used():
    result = run("--catalog", str(EXCERPT), "--provider", "gemini", "--model", "gemini-2.5-pro",
                 "--input-tokens", "250000", "--output-tokens", "567")
    assert result.exit_code == 0, result.stderr
    assert "above 200000 input tokens" in result.stdout
    assert "0.633505000000" in result.stdout  # 250k × 2.5e-6 + 567 × 1.5e-5, by hand


@pytest.mark.parametrize("tokens", [str(10**15), str(10**40)])
def test_absurd_token_counts_are_refused_with_field_and_rule(tokens):
    result = run("--model", "gpt-4o", "--input-tokens", tokens, "--output-tokens", "1")
    assert result.exit_code == 1
    assert "--input-tokens" in result.stderr and "[max_tokens]" in result.stderr
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1


def test_the_maximum_is_a_setting():
    settings = prismops.settings.Settings().with_overrides(pricing={"max_tokens_per_call": 1000})
    result = run("--model", "gpt-4o", "--input-tokens", "1001", "--output-tokens", "1", settings=settings)
    assert result.exit_code == 1 and "more than the 1000 tokens" in result.stderr
    ok = run("--model", "gpt-4o", "--input-tokens", "1000", "--output-tokens", "1", settings=settings)
    assert ok.exit_code == 0


def test_show_skipped_lists_entries_and_reasons():
    result = run("--catalog", str(EXCERPT), "--show-skipped", "--format", "json")
    assert result.exit_code == 0
    skipped = {row["entry"]: row["reason"] for row in json.loads(result.stdout)}
    assert set(skipped) == {"sample_spec", "hd/1024-x-1792/dall-e-3", "deepseek-chat"}


@pytest.mark.parametrize(("name", "content", "rule"), [
    ("prices.yaml", "models:\n  - {provider: p, model: m\n", "yaml_syntax"),
    ("prices.json", "[1, 2, 3]", "top_level_object"),
    ("prices.json", "this is not json", "json_syntax"),
    ("prices.yaml", "models:\n  - {provider: p, model: m, input_per_mtok: '1', output_per_mtok: '1', oops: 1}\n",
     "known_field"),
])
def test_a_bad_catalog_is_one_line_naming_the_file_and_rule(tmp_path: Path, name, content, rule):
    path = tmp_path / name
    path.write_text(content)
    result = run("--catalog", str(path), "--model", "m", "--input-tokens", "1", "--output-tokens", "1")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1
    assert str(path) in result.stderr and f"[{rule}]" in result.stderr
