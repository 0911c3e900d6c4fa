"""The `prismops` commands that need no server: JSON output is parseable and says what the table says."""

from __future__ import annotations

import json

from click.testing import CliRunner

from prismops.cli.app import main
from prismops.settings import Settings
from prismops.streams.topics import ALL_TOPICS


def run(*args: str, settings: Settings | None = None):
    return CliRunner().invoke(main, list(args), obj=settings or Settings())


def test_topics_list_json_names_every_registered_topic_with_its_namespace():
    settings = Settings().with_overrides(kafka={"topic_namespace": "staging."})
    result = run("topics", "list", "--format", "json", settings=settings)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["topic"] for r in rows] == [f"staging.{spec.base_name}" for spec in ALL_TOPICS]
    assert {r["topic"] for r in rows if r["compacted"]} == {"staging.routing.tables.v1", "staging.routing.budgets.v1"}


def test_topics_list_table_is_for_people():
    result = run("topics", "list")
    assert result.exit_code == 0
    assert "usage.llm.v1" in result.output and not result.output.lstrip().startswith("[")


def test_bench_logic_prints_a_rate_for_every_step():
    result = run("bench", "logic", "--events", "1000", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["step"] for r in rows][-1] == "worker logic in total"
    assert all(r["events_per_s"] > 0 and r["us_per_event"] > 0 for r in rows)
    assert rows[-1]["vs_decoding_floor"] > 0


def test_simulate_against_an_unreachable_broker_fails_on_stderr_with_a_non_zero_exit():
    settings = Settings().with_overrides(kafka={"bootstrap_servers": "127.0.0.1:1", "admin_timeout_s": 1.0})
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", "--events", "5", "--format", "json"], obj=settings)
    assert result.exit_code != 0
    assert "not reachable" in result.stderr and "prismops stack up" in result.stderr
    assert result.stdout == ""


def test_chaos_run_refuses_a_scenario_named_twice_before_it_starts_anything():
    result = run("chaos", "run", "--scenario", "rebalance", "--scenario", "kill-worker", "--scenario", "rebalance")
    assert result.exit_code == 2
    assert "scenario(s) named twice: rebalance" in result.output
    assert "Traceback" not in result.output
