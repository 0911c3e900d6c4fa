"""`prismops topics create` and `prismops simulate` on the real broker."""

from __future__ import annotations

import json
import uuid

from click.testing import CliRunner
from confluent_kafka import Consumer

from prismops.cli.app import main
from prismops.streams.codecs import batch_codec_for, codec_for
from prismops.streams.topics import LLM_USAGE


def test_simulate_produces_decodable_events_through_the_sdk(isolated_settings):
    runner = CliRunner()
    created = runner.invoke(main, ["topics", "create", "--format", "json"], obj=isolated_settings)
    assert created.exit_code == 0, created.output
    assert all(row["topic"].startswith(isolated_settings.kafka.topic_namespace) for row in json.loads(created.stdout))

    result = runner.invoke(main, ["simulate", "--events", "300", "--seed", "3", "--format", "json"], obj=isolated_settings)
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.stdout)
    assert summary["events"] == 300 and summary["events_per_s"] > 0

    consumer = Consumer(isolated_settings.kafka_client_config() | {"group.id": f"check-{uuid.uuid4()}", "auto.offset.reset": "earliest"})
    consumer.subscribe([LLM_USAGE.name(isolated_settings)])
    events = []
    for _ in range(60):
        events += [item.value for m in consumer.consume(500, 1.0) if not m.error()
                   for item in batch_codec_for("llm_usage_event").decode(m.value()).items]
        if len(events) >= 300:
            break
    consumer.close()
    assert len(events) == 300
    assert len({e["event_id"] for e in events}) == 300
    assert len({e["tenant"] for e in events}) >= 3
