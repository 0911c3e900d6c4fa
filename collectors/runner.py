"""The collectors' I/O: fetch (exporter /metrics, Prometheus HTTP API, sacct, the pod list), turn each closed
window into events with the plain logic of dcgm/slurm/k8s, hand them to a sink (Kafka or a JSON-lines file),
and only then move the cursor.

Order per window: build events -> sink.write -> sink.flush (Kafka confirmed every record) -> cursor.advance.
A crash before the cursor is saved re-collects that window with the same deterministic event ids; the
cursor never moves past a window whose events were not confirmed, so nothing is lost.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prismops.collectors.common import UTC, aligned, closed_windows
from prismops.collectors.cursor import Cursor
from prismops.collectors.dcgm import GpuSeries, WindowAccumulator, parse_exposition, prometheus_queries, series_from_prometheus
from prismops.collectors.k8s import PodGpus, k8s_events, parse_pod_list
from prismops.collectors.slurm import SlurmJob, parse_sacct_json, parse_sacct_parsable, slurm_events
from prismops.finops.gpu_pricing import GpuCatalog

SACCT_FORMAT = "JobID,Cluster,Account,User,QOS,Partition,NodeList,Start,End,State,AllocTRES,TRESUsageInAve,TRESUsageInMax,JobName"


class EventSink(Protocol):
    def write(self, event: Mapping[str, Any]) -> None: ...
    def flush(self) -> None: ...


class KafkaSink:
    """usage.gpu.v1 through the SDK producer (idempotent, acks=all); flush raises if a record was not confirmed."""

    def __init__(self, producer: Any):
        self.producer = producer

    def write(self, event: Mapping[str, Any]) -> None:
        self.producer.record_gpu_usage(event)

    def flush(self) -> None:
        self.producer.flush()


class JsonLinesSink:
    """Events as JSON lines (decimals as strings, times ISO 8601): a dry run, or input for `recommend gpu`."""

    def __init__(self, path: Path):
        self.path = path
        self._pending: list[str] = []

    def write(self, event: Mapping[str, Any]) -> None:
        self._pending.append(json.dumps(event, default=_jsonable, sort_keys=True))

    def flush(self) -> None:
        if self._pending:
            with open(self.path, "a") as handle:
                handle.write("\n".join(self._pending) + "\n")
        self._pending = []


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return format(value, "f") if hasattr(value, "is_finite") else str(value)


@dataclass
class RunSummary:
    windows: list[tuple[dt.datetime, dt.datetime]] = field(default_factory=list)
    events: int = 0
    skipped_windows: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"windows": len(self.windows),
                "first_window": self.windows[0][0].isoformat() if self.windows else None,
                "last_window_end": self.windows[-1][1].isoformat() if self.windows else None,
                "events": self.events, "skipped_windows": self.skipped_windows, "notes": self.notes}


def http_get(url: str, timeout_s: float = 10.0) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json, text/plain"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (operator-given URL)
        return response.read()


def prometheus_series(base_url: str, window_end: dt.datetime, window_s: int,
                      get: Callable[[str], bytes] = http_get, scrape_interval_s: float | None = None) -> list[GpuSeries]:
    """The window's aggregates from a Prometheus server's /api/v1/query, evaluated at the window's end.

    With the exporters' scrape interval known, a series' presence is its samples over window / interval;
    without it, over the most samples any series has in the window (which over-counts a window in which
    every series started late, e.g. the first window after the exporters were deployed)."""
    answers = {}
    for name, query in prometheus_queries(window_s).items():
        params = urllib.parse.urlencode({"query": query, "time": f"{window_end.timestamp():.3f}"})
        answers[name] = json.loads(get(f"{base_url.rstrip('/')}/api/v1/query?{params}"))
    expected = int(window_s // scrape_interval_s) if scrape_interval_s else None
    return series_from_prometheus(answers, expected_samples=expected)


def emit_window(events: list[dict[str, Any]], sink: EventSink, cursor: Cursor | None, window: tuple[dt.datetime, dt.datetime],
                summary: RunSummary) -> None:
    for event in events:
        sink.write(event)
    sink.flush()
    if cursor is not None:
        cursor.advance(window[1])
    summary.windows.append(window)
    summary.events += len(events)


def pending_windows(cursor: Cursor | None, since: dt.datetime | None, now: dt.datetime, window_s: int,
                    max_windows: int) -> list[tuple[dt.datetime, dt.datetime]]:
    """Closed windows after the cursor (or from `since`, or just the last closed one), at most `max_windows`."""
    start = (cursor.position if cursor else None) or since or (aligned(now, window_s) - dt.timedelta(seconds=window_s))
    return list(closed_windows(start, now, window_s))[:max_windows]


def run_windows(
    windows: Iterable[tuple[dt.datetime, dt.datetime]], build: Callable[[dt.datetime, dt.datetime], list[dict[str, Any]]],
    sink: EventSink, cursor: Cursor | None,
) -> RunSummary:
    summary = RunSummary()
    for window in windows:
        if cursor is not None and cursor.position is not None and window[1] <= cursor.position:
            summary.skipped_windows += 1
            continue
        emit_window(build(*window), sink, cursor, window, summary)
    return summary


def sacct_output(start: dt.datetime, end: dt.datetime, *, parsable: bool, sacct: str = "sacct") -> str:
    """Run sacct for the jobs active in [start, end) (all users; times in UTC)."""
    fmt = "%Y-%m-%dT%H:%M:%S"
    command = [sacct, "-a", "-S", start.astimezone(UTC).strftime(fmt), "-E", end.astimezone(UTC).strftime(fmt)]
    command += ["-P", "-o", SACCT_FORMAT] if parsable else ["--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "TZ": "UTC"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[:300]}")
    return done.stdout


def parse_sacct(text: str, default_cluster: str = "") -> list[SlurmJob]:
    """sacct output in either form: JSON (starts with '{') or -P parsable text with a header line."""
    return parse_sacct_json(json.loads(text)) if text.lstrip().startswith("{") else parse_sacct_parsable(text, default_cluster)


def scrape_window(metrics_url: str, window_end: dt.datetime, interval_s: float, get: Callable[[str], bytes] = http_get,
                  clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(UTC),
                  sleep: Callable[[float], None] = time.sleep) -> list[GpuSeries]:
    """Scrape an exporter's /metrics every `interval_s` until `window_end`; the window's aggregates."""
    accumulator = WindowAccumulator()
    while clock() < window_end:
        accumulator.add(parse_exposition(get(metrics_url).decode()))
        remaining = (window_end - clock()).total_seconds()
        if remaining > 0:
            sleep(min(interval_s, remaining))
    return accumulator.series()


def file_series(path: Path) -> list[GpuSeries]:
    """A saved exporter page as one scrape of its window."""
    accumulator = WindowAccumulator()
    accumulator.add(parse_exposition(path.read_text()))
    return accumulator.series()


def pods_from(source: str, get: Callable[[str], bytes] = http_get) -> list[PodGpus]:
    """A PodList from a file, or from a URL (e.g. `kubectl proxy`'s http://127.0.0.1:8001/api/v1/pods)."""
    raw = get(source) if source.startswith(("http://", "https://")) else Path(source).read_bytes()
    return parse_pod_list(json.loads(raw))


def k8s_builder(pods: Callable[[], list[PodGpus]], series: Callable[[dt.datetime, dt.datetime], list[GpuSeries]], *,
                cluster: str, catalog: GpuCatalog, capacity_type: str, notes: list[str]) -> Callable[..., list[dict[str, Any]]]:
    def build(start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
        result = k8s_events(pods(), series(start, end), start, end, cluster=cluster, catalog=catalog, capacity_type=capacity_type)
        for pod in result.unmatched_pods:
            notes.append(f"{start.isoformat()}: pod {pod.namespace}/{pod.name} on {pod.node} requests GPUs but has no DCGM series")
        for item in result.unknown_series:
            notes.append(f"{start.isoformat()}: DCGM series of pod {item.key.namespace}/{item.key.pod} is not in the pod list")
        return result.events
    return build


def slurm_builder(jobs: Callable[[dt.datetime, dt.datetime], list[SlurmJob]], *, cluster: str, capacity_type: str,
                  default_gpu_model: str) -> Callable[..., list[dict[str, Any]]]:
    def build(start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
        return slurm_events(jobs(start, end), start, end, cluster=cluster, capacity_type=capacity_type,
                            default_gpu_model=default_gpu_model)
    return build
