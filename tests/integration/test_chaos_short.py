"""The short CI run of `prismops chaos`: kill-worker, fuzz and namespaces with small event counts, on a
chaos stack of their own (its own Kafka and ClickHouse, ports and home), exactly as the command runs them.

The full run (every scenario, 20,000 events each) stays a command: `prismops chaos run --format json`.
"""

from __future__ import annotations

import pytest

from prismops.chaos import ChaosOptions, run_scenarios
from prismops.settings import Settings


@pytest.fixture(scope="module")
def results(stack_settings: Settings) -> dict:
    options = ChaosOptions(events=1500, kills=2, settle_timeout_s=300)
    done = run_scenarios(stack_settings, ["kill-worker", "fuzz", "namespaces"], options, progress=lambda _: None)
    return {result.name: result for result in done}


def test_kill_worker_loses_and_duplicates_nothing_and_budgets_stay_exact(results):
    result = results["kill-worker"]
    assert result.failures() == [], result.as_row()
    assert result.observed.rows_final == result.events_sent == 1500
    assert result.observed.recovery_s is not None


def test_fuzz_dead_letters_every_bad_record_and_stores_no_personal_data(results):
    result = results["fuzz"]
    assert result.failures() == [], result.as_row()
    assert result.observed.dlq == result.extra["malformed"] == 1500
    assert result.observed.rows_final == result.extra["valid"] == 150
    assert result.observed.worker_alive


def test_two_namespaces_on_one_cluster_share_nothing(results):
    result = results["namespaces"]
    assert result.failures() == [], result.as_row()
    assert result.extra["app_ids"] == ["ns-a.prismops-worker", "ns-b.prismops-worker"]
    assert result.budgets_exact and result.unexpected == 0
