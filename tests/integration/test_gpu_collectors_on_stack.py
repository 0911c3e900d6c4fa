"""`prismops collect slurm` against the real Kafka: two runs that share a cursor file put every window on
usage.gpu.v1 exactly once, with the schema's encoding and the pool key the worker requires."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from prismops.cli.app import main
from prismops.collectors.runner import parse_sacct
from prismops.collectors.slurm import slurm_events
from prismops.collectors.common import closed_windows
from prismops.settings import Settings
from prismops.streams.topics import GPU_USAGE
from prismops.testing import read_topic_to_end

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SACCT = FIXTURES / "slurm" / "sacct.json"


def topic_records(settings: Settings) -> list[tuple[bytes, dict]]:
    """Every record on the GPU usage topic up to its end now: the collector's producer has flushed, so the end
    is known and nothing depends on how long a consumer group takes to join."""
    return read_topic_to_end(settings, GPU_USAGE)


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
