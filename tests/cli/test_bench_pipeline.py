"""`prismops bench pipeline` through click, with the run itself replaced: what it prints and how it fails.
(The run needs the whole stack and minutes; `prismops bench pipeline` on a machine with the stack runs it.)"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from prismops.cli.app import main
from prismops.settings import Settings
from prismops.testing import pipeline_bench
from prismops.testing.pipeline_bench import RESULT_KEYS, Burst, PassThrough, Steady, assemble_result


def fake_result() -> dict:
    return assemble_result(
        PassThrough(records=20_000, seconds=0.4, record_bytes=196.0),
        Burst(events=20_000, produce_seconds=3.0, end_to_end_seconds=55.0, worker_events_per_s=700.0,
              sink_rows_per_s=900.0),
        Steady(target_per_s=10_000, seconds=20.0, produced=120_000, produce_seconds=20.0, backlog=90_000,
               freshness_ms=[1500.0, None], reactions_ms=[None, 2000.0, 2500.0], table_ages_ms=[900.0], drain_s=20.0),
        worker_rss_kib=180_000, output_path="faust",
    )


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    seen: list[dict] = []

    def run(base, options, progress, *, scratch_settings, wait_for_rows):  # type: ignore[no-untyped-def]
        progress("a progress line")
        seen.append({"options": options, "scratch_settings": scratch_settings, "wait_for_rows": wait_for_rows})
        return fake_result()

    monkeypatch.setattr(pipeline_bench, "run_pipeline_bench", run)
    return seen


def test_json_is_one_object_with_every_documented_key_and_progress_goes_to_stderr(calls):
    result = CliRunner().invoke(main, ["bench", "pipeline", "--events", "2000", "--rate", "300",
                                       "--steady-seconds", "5", "--format", "json"], obj=Settings())

    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert list(printed) == list(RESULT_KEYS)
    assert printed["steady_rate_held"] is False and printed["freshness_p99_ms"] is None
    assert "a progress line" in result.stderr and "a progress line" not in result.stdout
    options = calls[0]["options"]
    assert (options.events, options.rate_per_s, options.steady_seconds) == (2000, 300, 5.0)


def test_the_run_gets_the_demos_scratch_settings_and_row_wait(calls):
    from prismops.cli.demo import demo_settings, wait_for_rows

    CliRunner().invoke(main, ["bench", "pipeline", "--format", "json"], obj=Settings())

    assert (calls[0]["scratch_settings"], calls[0]["wait_for_rows"]) == (demo_settings, wait_for_rows)
    options = calls[0]["options"]
    assert (options.events, options.rate_per_s, options.steady_seconds) == (20_000, 10_000, 20.0)


def test_the_table_names_every_key_the_json_has(calls):
    result = CliRunner().invoke(main, ["bench", "pipeline"], obj=Settings())

    assert result.exit_code == 0, result.output
    assert not result.stdout.lstrip().startswith("{")
    for key in RESULT_KEYS:
        assert key in result.stdout


def test_a_failed_run_is_one_line_on_stderr_and_a_non_zero_exit(monkeypatch: pytest.MonkeyPatch):
    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("worker exited with 1; last log lines:\nTraceback (most recent call last):\n  boom")

    monkeypatch.setattr(pipeline_bench, "run_pipeline_bench", run)
    result = CliRunner().invoke(main, ["bench", "pipeline", "--format", "json"], obj=Settings())

    assert result.exit_code != 0
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == ["error: benchmark failed: worker exited with 1; last log lines:"]
