"""Cursor and restart: a collector that stops anywhere neither loses nor repeats a window."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from prismops.collectors.cursor import Cursor
from prismops.collectors.runner import (
    JsonLinesSink, parse_sacct, pending_windows, prometheus_series, run_windows, scrape_window, slurm_builder,
)

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 12, 5, 10, tzinfo=UTC)


class Crash(RuntimeError):
    pass


class RecordingSink:
    def __init__(self, fail_on_flush: int | None = None):
        self.confirmed: list[dict] = []
        self.pending: list[dict] = []
        self.flushes = 0
        self.fail_on_flush = fail_on_flush

    def write(self, event):
        self.pending.append(event)

    def flush(self):
        self.flushes += 1
        if self.flushes == self.fail_on_flush:
            self.pending = []
            raise Crash("broker went away")
        self.confirmed += self.pending
        self.pending = []


def _builder(fixtures):
    text = (fixtures / "slurm" / "sacct.json").read_text()
    return slurm_builder(lambda start, end: parse_sacct(text), cluster="hpc1", capacity_type="on_prem", default_gpu_model="unknown")


def test_restart_after_a_failed_flush_loses_and_repeats_nothing(tmp_path, fixtures):
    build = _builder(fixtures)
    now = T0 + dt.timedelta(hours=2, minutes=5)
    cursor = Cursor(tmp_path / "cursor.json")
    sink = RecordingSink(fail_on_flush=2)  # the second window's records are not confirmed
    with pytest.raises(Crash):
        run_windows(pending_windows(cursor, T0, now, 3600, 10), build, sink, cursor)
    assert Cursor(tmp_path / "cursor.json").position == T0 + dt.timedelta(hours=1)

    restarted = Cursor(tmp_path / "cursor.json")  # a new process reads the file
    summary = run_windows(pending_windows(restarted, T0, now, 3600, 10), build, sink, restarted)
    assert [w[0] for w in summary.windows] == [T0 + dt.timedelta(hours=1)]
    # every window once: the same events as one uninterrupted run
    reference = RecordingSink()
    run_windows(pending_windows(None, T0, now, 3600, 10), build, reference, None)
    assert sorted(e["event_id"] for e in sink.confirmed) == sorted(e["event_id"] for e in reference.confirmed)
    assert len({e["event_id"] for e in sink.confirmed}) == len(sink.confirmed)
    # nothing new until the next window closes; then exactly that one
    assert run_windows(pending_windows(restarted, T0, now, 3600, 10), build, sink, restarted).windows == []
    later = run_windows(pending_windows(restarted, T0, now + dt.timedelta(hours=1), 3600, 10), build, sink, restarted)
    assert [w[0] for w in later.windows] == [T0 + dt.timedelta(hours=2)]


def test_crash_after_flush_before_cursor_repeats_with_the_same_ids(tmp_path, fixtures):
    build = _builder(fixtures)
    sink = RecordingSink()
    window = (T0, T0 + dt.timedelta(hours=1))
    run_windows([window], build, sink, None)  # produced and confirmed, but the cursor was never written
    cursor = Cursor(tmp_path / "c.json")
    run_windows([window], build, sink, cursor)
    ids = [e["event_id"] for e in sink.confirmed]
    assert len(ids) == 2 * len(set(ids))  # the repeat carries the same ids, so downstream drops it


def test_cursor_file_is_checked(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        Cursor(path)


def test_json_lines_sink_writes_decimals_as_text(tmp_path, fixtures):
    sink = JsonLinesSink(tmp_path / "out.jsonl")
    run_windows([(T0, T0 + dt.timedelta(hours=1))], _builder(fixtures), sink, None)
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert first["requested_gpu_seconds"] == "2400.000000" and first["window_start"] == T0.isoformat()


def test_scraping_averages_until_the_window_closes():
    page = ('DCGM_FI_DEV_GPU_UTIL{{gpu="0",Hostname="n",namespace="ns",pod="p",modelName="NVIDIA L4"}} {v}\n')
    values = iter([10, 30, 50])
    clock = [T0]

    def get(_url):
        return page.format(v=next(values)).encode()

    def sleep(seconds):
        clock[0] += dt.timedelta(seconds=seconds)

    series = scrape_window("http://exporter:9400/metrics", T0 + dt.timedelta(seconds=45), 15, get=get,
                           clock=lambda: clock[0], sleep=sleep)
    assert [s.utilization for s in series] == [Decimal("0.3")]


def test_prometheus_series_queries_at_the_window_end():
    asked = []

    def get(url):
        asked.append(url)
        return json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()

    assert prometheus_series("http://prom:9090/", T0, 3600, get=get) == []
    assert all(u.startswith("http://prom:9090/api/v1/query?query=") and f"time={T0.timestamp():.3f}" in u for u in asked)
    assert any("avg_over_time%28DCGM_FI_DEV_GPU_UTIL%5B3600s%5D%29" in u for u in asked)


def test_sacct_is_run_for_the_windows_in_utc(tmp_path, fixtures):
    from prismops.collectors.runner import sacct_output

    fake = tmp_path / "sacct"
    fake.write_text(f"#!/bin/sh\necho \"$TZ $@\" > {tmp_path / 'args'}\ncat {fixtures / 'slurm' / 'sacct.json'}\n")
    fake.chmod(0o755)
    text = sacct_output(T0, T0 + dt.timedelta(hours=1), parsable=False, sacct=str(fake))
    assert len(parse_sacct(text)) == 3
    assert (tmp_path / "args").read_text().split() == ["UTC", "-a", "-S", "2026-12-05T10:00:00", "-E", "2026-12-05T11:00:00", "--json"]
    fake.write_text("#!/bin/sh\necho 'sacct: error: Problem talking to the database' >&2\nexit 1\n")
    with pytest.raises(RuntimeError, match="Problem talking to the database"):
        sacct_output(T0, T0 + dt.timedelta(hours=1), parsable=True, sacct=str(fake))
