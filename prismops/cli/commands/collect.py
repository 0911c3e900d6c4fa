"""`prismops collect dcgm|slurm|k8s`: GPU usage from what clusters already expose, as usage.gpu.v1 events.

Each collector reports closed, epoch-aligned windows of settings.gpu.window_s (or --window-s, at most that) and
keeps a cursor file (--cursor): the end of the last window whose events Kafka confirmed. It resumes there after
a restart, so no window is lost; a window re-collected after a crash carries the same event ids (deduplicated
downstream). --once collects the windows closed so far and exits; otherwise it keeps going, one window at a time.
--output FILE writes JSON lines instead of producing to Kafka (a dry run, or input for `prismops recommend gpu`).

Exit codes: 0 done; 1 a source or Kafka failed, or an input broke a rule (error on stderr naming the field and
the rule; the cursor stays at the last confirmed window); 2 usage error.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from prismops.cli.output import FORMAT_OPTION, emit, emit_json, fail, stderr_console
from prismops.settings import Settings

CAPACITY = click.Choice(["on_demand", "spot", "reserved", "on_prem"])


def _common(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--cluster", required=True, help="cluster name of the events (the pool is cluster/node)"),
        click.option("--cursor", "cursor_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="cursor file (default: ~/.prismops/collect-<collector>-<cluster>.json)"),
        click.option("--since", type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"]), default=None,
                     help="first window when there is no cursor yet (UTC; default: the last closed window)"),
        click.option("--until", type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"]), default=None,
                     help="treat this moment as now (UTC): collect windows closed by then"),
        click.option("--window-s", type=int, default=None, help="window length (default and maximum: settings.gpu.window_s)"),
        click.option("--max-windows", type=int, default=168, show_default=True, help="windows per round (catching up)"),
        click.option("--lag-s", type=click.IntRange(min=0), default=30, show_default=True,
                     help="wait this long after a window ends before collecting it (last scrape, accounting delay)"),
        click.option("--capacity-type", type=CAPACITY, default=None, help="capacity type of the GPUs"),
        click.option("--once", is_flag=True, help="collect the closed windows and exit"),
        click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="write JSON lines here instead of producing to Kafka"),
        FORMAT_OPTION,
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.group(name="collect")
def command() -> None:
    """Collect GPU usage (DCGM exporter / Prometheus, Slurm, Kubernetes) into usage.gpu.v1."""


def _window_s(settings: Settings, window_s: int | None) -> int:
    limit = settings.gpu.window_s
    if window_s is None:
        return limit
    if not 0 < window_s <= limit or limit % window_s:
        fail(f"--window-s must divide the attribution window settings.gpu.window_s ({limit} s); got {window_s}")
    return window_s


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    return None if moment is None else (moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment)


def _run(settings: Settings, name: str, cluster: str, build: Callable[..., list[dict[str, Any]]], *, cursor_path: Path | None,
         since: dt.datetime | None, until: dt.datetime | None, window_s: int, max_windows: int, once: bool,
         output: Path | None, fmt: str, notes: list[str], lag_s: int = 0) -> None:
    from prismops.collectors.common import CollectorInputError
    from prismops.collectors.cursor import Cursor
    from prismops.collectors.runner import JsonLinesSink, KafkaSink, RunSummary, pending_windows, run_windows

    path = cursor_path or Path.home() / ".prismops" / f"collect-{name}-{cluster}.json"
    try:
        cursor = Cursor(path)
    except ValueError as exc:
        fail(escape(str(exc)))
    producer = None
    if output is not None:
        sink: Any = JsonLinesSink(output)
    else:
        from prismops.streams.producer import UsageProducer

        producer = UsageProducer(settings)
        sink = KafkaSink(producer)
    total = RunSummary()
    try:
        while True:
            now = _utc(until) or (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=lag_s))
            windows = pending_windows(cursor, _utc(since), now, window_s, max_windows)
            summary = run_windows(windows, build, sink, cursor)
            total.windows += summary.windows
            total.events += summary.events
            total.skipped_windows += summary.skipped_windows
            if once or until is not None:
                break
            next_due = (cursor.position or now) + dt.timedelta(seconds=window_s + lag_s)
            time.sleep(max(1.0, (next_due - dt.datetime.now(dt.timezone.utc)).total_seconds()))
    except CollectorInputError as exc:
        fail(escape(f"{name}: {exc} (cursor {path} stays at {cursor.position.isoformat() if cursor.position else 'start'})"))
    except (OSError, RuntimeError, ValueError) as exc:
        fail(escape(f"{name}: {type(exc).__name__}: {exc} (cursor {path} stays at "
                    f"{cursor.position.isoformat() if cursor.position else 'start'})"))
    finally:
        if producer is not None:
            try:
                producer.close()
            except Exception:  # noqa: BLE001 - a flush failure was already reported by the window that met it
                pass
    total.notes = notes
    document = {"collector": name, "cluster": cluster, "cursor": str(path), **total.as_dict(),
                "sink": str(output) if output else "kafka"}
    if fmt == "json":
        emit_json(document)
    else:
        emit([{k: v for k, v in document.items() if k != "notes"}], fmt, title=f"collect {name}")
        for note in notes:
            stderr_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def _catalog(settings: Settings) -> Any:
    from prismops.finops.gpu_pricing import load_gpu_catalog

    return load_gpu_catalog(settings.gpu.price_table)


@command.command("dcgm")
@_common
@click.option("--prometheus", "prometheus_url", default=None, help="Prometheus server URL (windows from its history)")
@click.option("--metrics-url", default=None, help="a DCGM exporter's /metrics URL, scraped every --scrape-interval")
@click.option("--metrics-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="a saved exporter page, taken as one scrape of each window (tests, ad-hoc runs)")
@click.option("--scrape-interval", type=float, default=None,
              help="seconds between scrapes (--metrics-url: default 15; --prometheus: the exporters' scrape interval, "
                   "which makes presence exact)")
@click.pass_obj
def dcgm(settings: Settings, cluster: str, cursor_path: Path | None, since: dt.datetime | None, until: dt.datetime | None,
         window_s: int | None, max_windows: int, lag_s: int, capacity_type: str | None, once: bool, output: Path | None, fmt: str,
         prometheus_url: str | None, metrics_url: str | None, metrics_file: Path | None, scrape_interval: float) -> None:
    """GPU and MIG-slice use per pod from the NVIDIA DCGM exporter (directly or through Prometheus)."""
    from prismops.collectors.dcgm import dcgm_events
    from prismops.collectors.runner import file_series, prometheus_series, scrape_window

    if sum(x is not None for x in (prometheus_url, metrics_url, metrics_file)) != 1:
        fail("give exactly one of --prometheus, --metrics-url, --metrics-file")
    size = _window_s(settings, window_s)
    catalog = _catalog(settings)

    def series(start: dt.datetime, end: dt.datetime) -> Any:
        if prometheus_url:
            return prometheus_series(prometheus_url, end, size, scrape_interval_s=scrape_interval)
        if metrics_url:
            return scrape_window(metrics_url, end, scrape_interval or 15.0)
        return file_series(metrics_file)

    def build(start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
        return dcgm_events(series(start, end), start, end, cluster=cluster, catalog=catalog,
                           capacity_type=capacity_type or "on_demand")

    if metrics_url and until is None:
        _run_scraping(settings, cluster, build, cursor_path, size, once, output, fmt)
        return
    _run(settings, "dcgm", cluster, build, cursor_path=cursor_path, since=since, until=until, window_s=size,
         max_windows=max_windows, once=once, output=output, fmt=fmt, notes=[], lag_s=lag_s)


def _run_scraping(settings: Settings, cluster: str, build: Callable[..., list[dict[str, Any]]], cursor_path: Path | None,
                  window_s: int, once: bool, output: Path | None, fmt: str) -> None:
    """Scrape mode: the current window is scraped until it closes, then reported (with --once: one window).
    An exporter keeps no history, so windows missed while the collector was down cannot be recovered here
    (they are reported empty); collect through --prometheus to catch up from Prometheus' history instead."""
    from prismops.collectors.common import aligned

    now = dt.datetime.now(dt.timezone.utc)
    start = aligned(now, window_s)
    end = start + dt.timedelta(seconds=window_s)
    while True:
        _run(settings, "dcgm", cluster, build, cursor_path=cursor_path, since=start, until=end, window_s=window_s,
             max_windows=1, once=True, output=output, fmt=fmt, notes=[])
        if once:
            return
        start, end = end, end + dt.timedelta(seconds=window_s)


@command.command("slurm")
@_common
@click.option("--input", "input_file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="saved `sacct --json` or `sacct -P` output instead of running sacct")
@click.option("--parsable", is_flag=True, help="run `sacct -P` instead of `sacct --json` (Slurm before 21.08)")
@click.option("--gpu-model", default="unknown", show_default=True, help="GPU model of jobs whose GRES has no type")
@click.pass_obj
def slurm(settings: Settings, cluster: str, cursor_path: Path | None, since: dt.datetime | None, until: dt.datetime | None,
          window_s: int | None, max_windows: int, lag_s: int, capacity_type: str | None, once: bool, output: Path | None, fmt: str,
          input_file: Path | None, parsable: bool, gpu_model: str) -> None:
    """Requested (and, where Slurm measured it, used) GPU-seconds per job from Slurm accounting."""
    from prismops.collectors.runner import parse_sacct, sacct_output, slurm_builder

    size = _window_s(settings, window_s)

    def jobs(start: dt.datetime, end: dt.datetime) -> Any:
        text = input_file.read_text() if input_file else sacct_output(start, end, parsable=parsable)
        return parse_sacct(text, cluster)

    build = slurm_builder(jobs, cluster=cluster, capacity_type=capacity_type or "on_prem", default_gpu_model=gpu_model)
    _run(settings, "slurm", cluster, build, cursor_path=cursor_path, since=since, until=until, window_s=size,
         max_windows=max_windows, once=once, output=output, fmt=fmt, notes=[], lag_s=lag_s)


@command.command("k8s")
@_common
@click.option("--pods", "pods_source", required=True,
              help="PodList JSON: a file, or a URL such as kubectl proxy's http://127.0.0.1:8001/api/v1/pods")
@click.option("--prometheus", "prometheus_url", default=None, help="Prometheus server with the DCGM exporters' series")
@click.option("--metrics-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="a saved exporter page, taken as one scrape of each window")
@click.pass_obj
def k8s(settings: Settings, cluster: str, cursor_path: Path | None, since: dt.datetime | None, until: dt.datetime | None,
        window_s: int | None, max_windows: int, lag_s: int, capacity_type: str | None, once: bool, output: Path | None, fmt: str,
        pods_source: str, prometheus_url: str | None, metrics_file: Path | None) -> None:
    """Pods' nvidia.com/gpu and MIG requests joined to DCGM usage by pod (tenant and team from pod labels)."""
    from prismops.collectors.runner import file_series, k8s_builder, pods_from, prometheus_series

    if (prometheus_url is None) == (metrics_file is None):
        fail("give exactly one of --prometheus, --metrics-file")
    size = _window_s(settings, window_s)
    notes: list[str] = []

    def series(start: dt.datetime, end: dt.datetime) -> Any:
        return prometheus_series(prometheus_url, end, size) if prometheus_url else file_series(metrics_file)

    build = k8s_builder(lambda: pods_from(pods_source), series, cluster=cluster, catalog=_catalog(settings),
                        capacity_type=capacity_type or "on_demand", notes=notes)
    _run(settings, "k8s", cluster, build, cursor_path=cursor_path, since=since, until=until, window_s=size,
         max_windows=max_windows, once=once, output=output, fmt=fmt, notes=notes, lag_s=lag_s)
