"""`prismops collect slurm` against the real Kafka: two runs that share a cursor file put every window on
usage.gpu.v1 exactly once, with the schema's encoding and the pool key the worker requires."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from prismops.cli.app import main
from prismops.collectors.runner import parse_sacct
from prismops.collectors.slurm import slurm_events
from prismops.collectors.common import closed_windows
from prismops.settings import Settings
from prismops.streams.codecs import codec_for
from prismops.streams.topics import GPU_USAGE

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SACCT = FIXTURES / "slurm" / "sacct.json"


def topic_records(settings: Settings) -> list[tuple[bytes, dict]]:
    from confluent_kafka import Consumer

    consumer = Consumer(settings.kafka_client_config() | {"group.id": f"check-{uuid.uuid4()}", "auto.offset.reset": "earliest"})
    consumer.subscribe([GPU_USAGE.name(settings)])
    records, idle_polls = [], 0
    while idle_polls < 5:
        batch = [m for m in consumer.consume(500, 1.0) if not m.error()]
        idle_polls = 0 if batch else idle_polls + 1
        records += [(m.key(), codec_for(GPU_USAGE.schema).decode(m.value())) for m in batch]
    consumer.close()
    return records


def test_collect_slurm_to_kafka_across_a_restart(isolated_settings: Settings, tmp_path: Path):
    cursor = tmp_path / "cursor.json"
    common = ["collect", "slurm", "--cluster", "hpc1", "--input", str(SACCT), "--cursor", str(cursor),
              "--since", "2026-12-05T10:00:00", "--format", "json"]
    for until in ("2026-12-05T11:30:00", "2026-12-05T12:10:00"):  # the second run resumes from the cursor
        result = CliRunner().invoke(main, [*common, "--until", until], obj=isolated_settings)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["windows"] == 1
    records = topic_records(isolated_settings)
    import datetime as dt

    start = dt.datetime(2026, 12, 5, 10, tzinfo=dt.timezone.utc)
    jobs = parse_sacct(SACCT.read_text())
    expected = [e for w in closed_windows(start, start + dt.timedelta(hours=2), 3600)
                for e in slurm_events(jobs, *w, cluster="hpc1", capacity_type="on_prem")]
    ids = [record["event_id"] for _key, record in records]
    assert sorted(ids) == sorted(e["event_id"] for e in expected)  # none lost, none twice
    for key, record in records:
        assert key == f"{record['cluster']}/{record['node']}".encode()
