"""The worker creates Faust's changelog topics itself: compacted, with the segment roll that lets the broker's
cleaner compact them while the worker runs (no broker needed to plan them)."""

from __future__ import annotations

from prismops.agents.worker import build_worker_app, internal_topic_plans
from prismops.settings import Settings


def test_every_changelog_is_compacted_and_rolls_its_segments_as_configured(tmp_path):
    settings = Settings().with_overrides(stack={"home": tmp_path}, kafka={"changelog_segment_ms": 30_000})
    plans = {plan.name: plan for plan in internal_topic_plans(build_worker_app(settings))}
    changelogs = [plan for name, plan in plans.items() if name.endswith("-changelog")]
    tables = {name[len(settings.worker_app_id) + 1:-len("-changelog")] for name in plans if name.endswith("-changelog")}
    assert {"budget-ledger-tenant", "budget-ledger-team", "anomaly_watch", "gpu_pool_windows"} <= tables
    for plan in changelogs:
        assert plan.config["cleanup.policy"] == "compact"
        assert plan.config["segment.ms"] == "30000"
        assert float(plan.config["min.cleanable.dirty.ratio"]) <= 0.5
