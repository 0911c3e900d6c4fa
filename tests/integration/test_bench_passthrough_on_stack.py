"""The pipeline bench's floor, a plain confluent-kafka pass-through, on the real stack (no skip: the session's stack
fixture starts Kafka or fails with a clear message)."""

from __future__ import annotations

import uuid

import pytest

from prismops.settings import Settings
from prismops.sinks.migrations import apply_migrations
from prismops.streams.replay import end_offsets
from prismops.testing import delete_topics_with_prefix
from prismops.testing import pipeline_bench as bench


@pytest.mark.timeout(60)
def test_the_pass_through_moves_every_record_it_was_given_to_the_second_topic(stack_settings: Settings):
    settings = stack_settings.with_overrides(kafka={"topic_namespace": f"t{uuid.uuid4().hex[:8]}."})
    try:
        records = bench.usage_records(50)
        result = bench.kafka_passthrough(settings, records, 1500, timeout_s=45)
        assert result.records == 1500
        assert result.record_bytes == pytest.approx(sum(len(v) for _, v in (records * 30)) / 1500)
        assert sum(end_offsets(settings, settings.namespaced("bench.passthrough.out")).values()) == 1500
        assert result.msgs_per_s > 0
    finally:
        delete_topics_with_prefix(settings, (settings.kafka.topic_namespace,))


@pytest.mark.timeout(60)
def test_the_count_sampler_takes_a_sample_from_another_thread_while_its_loop_runs(isolated_settings: Settings):
    """The bench's last sample comes from the main thread while the loop still samples: one ClickHouse
    connection refuses two queries at once ("Simultaneous queries on single connection")."""
    apply_migrations(isolated_settings)
    sampler = bench.CountSampler(isolated_settings)
    sampler.interval_s = 0.0
    sampler.start()
    try:
        counts = [sampler.sample_now() for _ in range(200)]
    finally:
        sampler.stop()
    assert counts == [(0, 0)] * 200
    assert len(sampler.rows) > 200
