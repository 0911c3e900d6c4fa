"""`prismops bench`: throughput figures, printed rather than asserted in tests."""

from __future__ import annotations

import datetime as dt
import time

import click

from prismops.cli.output import FORMAT_OPTION, emit, emit_json, fail, stderr_console
from prismops.settings import Settings


@click.group("bench")
def command() -> None:
    """Measure throughput (figures go in issue notes; tests assert behaviour, not timings)."""


@command.command("logic")
@click.option("--events", default=50_000, show_default=True, type=click.IntRange(min=1000))
@FORMAT_OPTION
def logic(events: int, fmt: str) -> None:
    """The worker's Python per event on batch records, in process on one core: each stage's microseconds per
    event, the whole path's events/s, and fastavro's reads of the same batches as the floor."""
    from rich.progress import Progress

    from prismops.testing.logic_bench import run_logic_bench

    with Progress(console=stderr_console, transient=True) as progress:
        task = progress.add_task("worker logic", total=events)
        result = run_logic_bench(events, on_progress=lambda done: progress.update(task, completed=done))
    emit(result.rows(), fmt, title=f"worker logic per event, {events} simulated events in 500-event batches, one core")


@command.command("pipeline")
@click.option("--events", default=20_000, show_default=True, type=click.IntRange(min=1000),
              help="burst size, and records moved by the pass-through floor")
@click.option("--rate", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="events per second of the steady run (freshness, budget reaction, live table age)")
@click.option("--steady-seconds", default=20.0, show_default=True, type=click.FloatRange(min=1),
              help="length of the steady run")
@FORMAT_OPTION
@click.pass_obj
def pipeline(settings: Settings, events: int, rate: int, steady_seconds: float, fmt: str) -> None:
    """SDK → Kafka → worker → sink → ClickHouse on the local stack, against a plain confluent-kafka
    pass-through measured in the same run; then a steady run at --rate for freshness, budget reaction and
    live table age. Scratch topics and database are removed afterwards. JSON: one object, the table's keys."""
    from prismops.cli.demo import demo_settings, wait_for_rows
    from prismops.cli.output import emit_json, emit_table
    from prismops.testing.pipeline_bench import PipelineBenchOptions, result_rows, run_pipeline_bench

    options = PipelineBenchOptions(events=events, rate_per_s=rate, steady_seconds=steady_seconds)
    try:
        result = run_pipeline_bench(settings, options, lambda line: stderr_console.print(line, highlight=False),
                                    scratch_settings=demo_settings, wait_for_rows=wait_for_rows)
    except Exception as exc:
        fail(f"benchmark failed: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
    if fmt == "json":
        emit_json(result)
    else:
        emit_table(result_rows(result), title=f"pipeline, {events} events + {steady_seconds:g} s at {rate} ev/s "
                                              "(everything on this machine)")


@command.command("route")
@click.option("--requests", "requests_", default=5000, show_default=True, type=click.IntRange(min=1),
              help="timed calls per target and round")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1),
              help="rounds, each timing every scenario and then the echo; ratios are the median of the rounds'")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(min=1),
              help="client threads, each on its own channel")
@click.option("--warmup", default=500, show_default=True, type=click.IntRange(min=0),
              help="untimed calls per target before timing")
@FORMAT_OPTION
@click.pass_obj
def route(settings: Settings, requests_: int, rounds: int, concurrency: int, warmup: int, fmt: str) -> None:
    """Router Decide against a do-nothing gRPC echo, same process and load: what routing adds to a call, with
    the plain policy, with rate limits and tier quotas (local; on Redis when one answers) and with a
    concurrency lease given back by ReportOutcome. Each round times every scenario and then the echo; a row's
    qps_vs_echo is the median of its rounds' ratios, each against its own round's echo (qps_rounds has each
    round's rate). JSON: one object per row, `scenario` naming it."""
    from rich.progress import Progress

    from prismops.testing.echo_baseline import (
        ECHO_SCENARIO, LoadResult, bench_scenarios, compare_router_with_echo, median_ratio, nearest_rank,
    )

    scenarios = bench_scenarios(concurrency)
    with Progress(console=stderr_console, transient=True) as progress:
        tasks = {name: progress.add_task(name, total=requests_ * rounds)
                 for name in [scenario.name for scenario in scenarios] + [ECHO_SCENARIO]}
        try:
            result = compare_router_with_echo(
                settings, requests=requests_, concurrency=concurrency, warmup=warmup, rounds=rounds,
                scenarios=scenarios,
                on_progress=lambda name, done: progress.advance(tasks[name], done),
            )
        except Exception as exc:
            fail(f"benchmark failed: {exc}")

    def row(scenario: str, target: str, measured: LoadResult, measured_rounds: tuple[LoadResult, ...],
            server_ms: tuple[float, ...]) -> dict:
        baseline = result.echo
        p50, baseline_p50 = measured.percentile_ms(0.50), baseline.percentile_ms(0.50)
        return {
            "scenario": scenario, "target": target, "requests": measured.requests, "rounds": len(measured_rounds),
            "concurrency": measured.concurrency, "errors": measured.errors, "qps": round(measured.qps, 1),
            "qps_rounds": [round(load.qps, 1) for load in measured_rounds],
            "p50_ms": round(p50, 3), "p99_ms": round(measured.percentile_ms(0.99), 3),
            "max_ms": round(measured.max_ms, 3),
            "qps_vs_echo": round(median_ratio(measured_rounds, result.echo_round_loads), 2),
            "p50_vs_echo": round(p50 / baseline_p50, 2) if baseline_p50 else None,
            # inside the Decide (or echo) handler only, entry to response built, read in process after the run;
            # four places, as the echo's handler takes well under a microsecond
            "server_p50_ms": round(nearest_rank(server_ms, 0.50), 4),
            "server_p99_ms": round(nearest_rank(server_ms, 0.99), 4),
        }

    # the table leaves out what the title says (requests, concurrency) and max_ms, so it fits a terminal
    table_columns = ("scenario", "target", "errors", "qps", "p50_ms", "p99_ms", "qps_vs_echo", "p50_vs_echo",
                     "server_p50_ms", "server_p99_ms")
    measured_runs = [(run.scenario.name, run.load) for run in result.runs] + [(ECHO_SCENARIO, result.echo)]
    for name, measured in measured_runs:
        if measured.errors == measured.requests:
            fail(f"every {name} call failed: {measured.first_error}")
        if measured.errors:
            stderr_console.print(f"{measured.errors} {name} call(s) failed, e.g. {measured.first_error}", highlight=False)
    for run in result.runs:
        if run.leases_held_after:
            stderr_console.print(f"{run.scenario.name}: {run.leases_held_after} lease(s) still held after the run",
                                 highlight=False)
    for note in result.skipped:
        stderr_console.print(note, highlight=False)
    rows = [
        *(row(run.scenario.name, "routing.v1.Router/Decide + ReportOutcome" if run.scenario.releases_lease
              else "routing.v1.Router/Decide", run.load, run.round_loads, run.server_ms)
          for run in result.runs),
        row(ECHO_SCENARIO, "echo (gRPC floor)", result.echo, result.echo_round_loads, result.echo_server_ms),
    ]
    emit(rows, fmt, columns=None if fmt == "json" else table_columns,
         title=f"Decide vs echo, {rounds} round(s) of {requests_} calls each, {concurrency} client threads, "
               "qps_vs_echo the median of the rounds' ratios, one process "
               f"(router chose {result.chosen_model}: {result.reason_code}); lease row: Decide + ReportOutcome "
               "per call, server columns the Decide handler alone")


@command.command("sink")
@click.option("--preload", default=10_000_000, show_default=True, type=click.IntRange(min=0),
              help="rows of today stored in cost_lines before the second phase")
@click.option("--lines", default=100_000, show_default=True, type=click.IntRange(min=1000),
              help="cost lines sent through the sink in each phase")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(min=1), help="lines per batch record")
@FORMAT_OPTION
@click.pass_obj
def sink(settings: Settings, preload: int, lines: int, batch: int, fmt: str) -> None:
    """The ClickHouse sink's rows/s on an empty cost_lines table and again with --preload rows of the same day
    already stored, in one run (does the dedupe slow down as the table grows?)."""
    from prismops.cli.demo import demo_settings
    from prismops.testing.sink_bench import SinkBenchOptions, run_sink_bench

    try:
        result = run_sink_bench(settings, SinkBenchOptions(preload=preload, lines=lines, batch=batch),
                                lambda line: stderr_console.print(line, highlight=False),
                                scratch_settings=demo_settings)
    except Exception as exc:
        fail(f"benchmark failed: {exc}")
    if fmt == "json":
        emit_json(result)
        return
    timed = result["timed_rows_per_phase"]
    emit([{"phase": "empty cost_lines", "rows": timed, "rows_per_s": result["empty_rows_per_s"], "vs_empty": 1.0,
           "first_batch_s": result["empty_first_batch_seconds"]},
          {"phase": f"{preload:,} rows of today already stored", "rows": timed,
           "rows_per_s": result["preloaded_rows_per_s"], "vs_empty": result["preloaded_vs_empty"],
           "first_batch_s": result["preloaded_first_batch_seconds"]}],
         fmt, title=f"ClickHouse sink, batches of {batch} lines (preload took {result['preload_seconds']} s; "
                    f"logs in {result['logs']})")


@command.command("state")
@click.option("--tenants", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="tenants, each with a daily USD budget")
@click.option("--models", default=10, show_default=True, type=click.IntRange(min=1, max=10),
              help="models each tenant calls: tenants x models (tenant, model) keys")
@click.option("--after", default=30_000, show_default=True, type=click.IntRange(min=100),
              help="events of the recovery phase (the worker is killed half-way)")
@click.option("--rate", default=3_000, show_default=True, type=click.IntRange(min=1),
              help="events per second of the recovery phase")
@FORMAT_OPTION
@click.pass_obj
def state(settings: Settings, tenants: int, models: int, after: int, rate: int, fmt: str) -> None:
    """The worker with a large state: peak RSS with tenants x models keys and tenant budgets, and how long a
    worker killed with -9 takes to catch up after its restart (lag 0 on usage and cost lines, every row stored)."""
    from prismops.cli.demo import demo_settings
    from prismops.testing.state_bench import StateBenchOptions, run_state_bench

    try:
        result = run_state_bench(settings, StateBenchOptions(tenants=tenants, models=models, after=after, rate=rate),
                                 lambda line: stderr_console.print(line, highlight=False),
                                 scratch_settings=demo_settings)
    except Exception as exc:
        fail(f"benchmark failed: {exc}")
    if fmt == "json":
        emit_json(result)
        return
    emit([{k: v for k, v in result.items() if k != "logs"}], fmt,
         title=f"worker state: {result['keys']:,} keys, {result['tenants_with_budgets']:,} tenant budgets (logs in {result['logs']})")


@command.command("ingest")
@click.option("--events", default=20_000, show_default=True, type=click.IntRange(min=100), help="events sent over HTTP")
@click.option("--batch", default=100, show_default=True, type=click.IntRange(min=1), help="events per request")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(min=1), help="client connections")
@FORMAT_OPTION
@click.pass_obj
def ingest(settings: Settings, events: int, batch: int, concurrency: int, fmt: str) -> None:
    """HTTP ingest (POST /v1/usage, JSON, up to Kafka's acks) against the same events produced straight to Kafka."""
    from rich.progress import Progress

    from prismops.cli.output import emit_json, emit_table
    from prismops.testing.ingest_bench import run_ingest_bench

    with Progress(console=stderr_console, transient=True) as progress:
        task = progress.add_task("HTTP ingest", total=events)
        try:
            result = run_ingest_bench(settings, events=events, batch=batch, concurrency=concurrency,
                                      on_progress=lambda n: progress.advance(task, n))
        except Exception as exc:
            fail(f"benchmark failed: {exc}")
    row = result.as_dict()
    if fmt == "json":
        emit_json(row)
    else:
        emit_table([{"figure": k, "value": v} for k, v in row.items()],
                   title=f"HTTP ingest, {events} events in requests of {batch}, {concurrency} connections, "
                         "against the same events produced straight to Kafka")


@command.command("detect")
@click.option("--series", "series_count", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--updates", default=100_000, show_default=True, type=click.IntRange(min=1000))
@FORMAT_OPTION
def detect(series_count: int, updates: int, fmt: str) -> None:
    """Series updates per second through the anomaly detectors (one DetectorBank, keys round-robin, one core),
    and the size and speed of their state round trip."""
    from prismops.detectors.online import DetectorBank
    from prismops.detectors.synthetic import generate_series

    per_series = max(1, updates // series_count)
    shapes = [generate_series(seed=7, category=("spike", "level_shift", "drift", "none")[i % 4], index=i // 4,
                              points=max(per_series, 10_080), interval_s=60) for i in range(min(series_count, 8))]
    feed = [(f"tenant_model:t{k}/m", shapes[k % len(shapes)].timestamps[i], shapes[k % len(shapes)].values[i])
            for i in range(per_series) for k in range(series_count)]
    bank = DetectorBank()
    started = time.perf_counter()
    for key, window_start, value in feed:
        bank.update("cost", key, window_start, value)
    update_s = time.perf_counter() - started
    started = time.perf_counter()
    state = bank.to_bytes()
    DetectorBank.from_bytes(state)
    state_s = time.perf_counter() - started
    emit([
        {"measure": f"detector updates ({series_count} series x {per_series} windows)", "count": len(feed),
         "seconds": round(update_s, 3), "per_s": round(len(feed) / update_s)},
        {"measure": f"state to_bytes + from_bytes ({len(state) // series_count} bytes per series)", "count": series_count,
         "seconds": round(state_s, 3), "per_s": round(series_count / state_s) if state_s else None},
    ], fmt, title="anomaly detector throughput, one core")


@command.command("showback")
@click.option("--rows", default=10_000_000, show_default=True, type=click.IntRange(min=1000),
              help="cost lines to generate inside ClickHouse")
@click.option("--days", default=30, show_default=True, type=click.IntRange(min=1, max=31))
@click.option("--repeat", default=5, show_default=True, type=click.IntRange(min=1), help="timed runs per report")
@FORMAT_OPTION
@click.pass_obj
def showback(settings: Settings, rows: int, days: int, repeat: int, fmt: str) -> None:
    """`report showback` over ROWS cost lines: generated inside ClickHouse (INSERT … SELECT from numbers()) in a
    scratch database, settled, then timed (best and median of REPEAT runs) from the rollups and, for comparison,
    from the raw table alone; also the whole `prismops report showback` command. The scratch database is dropped."""
    import os
    import secrets
    import statistics
    import subprocess
    import sys

    from prismops.sinks import reports
    from prismops.testing.bench_data import insert_bench_cost_lines
    from prismops.sinks.clickhouse import clickhouse_client, quote_identifier, table_ref
    from prismops.sinks.migrations import apply_migrations
    from prismops.sinks.rollups import DaySources, cost_query, day_sources, settle_days

    scratch = settings.with_overrides(
        clickhouse={"database": f"{settings.clickhouse.database}_bench_{secrets.token_hex(4)}"})
    database = scratch.clickhouse.database
    start = dt.date(2025, 6, 1)
    until = start + dt.timedelta(days=days)
    client = clickhouse_client(scratch, database="")
    measures = []

    def timed(name: str, action, runs: int = repeat) -> object:  # type: ignore[no-untyped-def]
        seconds, result = [], None
        for _ in range(runs):
            began = time.perf_counter()
            result = action()
            seconds.append(time.perf_counter() - began)
        measures.append({"measure": name, "rows": rows, "runs": runs, "best_s": round(min(seconds), 3),
                         "median_s": round(statistics.median(seconds), 3)})
        return result

    try:
        apply_migrations(scratch)
        stderr_console.print(f"generating {rows:,} cost lines in {database} …", highlight=False)
        timed("generate (INSERT … SELECT numbers())", lambda: insert_bench_cost_lines(
            client, database, rows, start=start, days=days,
            on_chunk=lambda done: stderr_console.print(f"  {done:,} rows", highlight=False)), runs=1)
        timed("settle every day (rollups from FINAL)",
              lambda: settle_days(client, database, since=start, until=until), runs=1)
        by_team = timed("report showback --by team (rollups)",
                        lambda: reports.showback(client, database, ["team"], since=start, until=until))
        timed("report showback --by customer (rollups)",
              lambda: reports.showback(client, database, ["customer"], since=start, until=until))
        timed("report unit-economics --by model (rollups)",
              lambda: reports.unit_economics(client, database, ["model"], since=start, until=until))
        raw_only = DaySources({}, day_sources(client, database, start, until).days)
        timed("showback --by team from cost_lines FINAL only", lambda: cost_query(
            client, database, ["team"], since=start, until=until, sources=raw_only), runs=min(repeat, 3))
        ((raw_total,),) = client.execute(f"SELECT sum(cost_usd) FROM {table_ref(database, 'cost_lines')} FINAL")
        if by_team.total["cost_usd"] != raw_total:
            fail(f"showback total {by_team.total['cost_usd']} differs from cost_lines FINAL {raw_total}")
        command_line = [sys.executable, "-m", "prismops", "report", "showback", "--by", "team",
                        "--from", str(start), "--to", str(until), "--format", "json"]
        environment = {**os.environ, "PRISMOPS_CLICKHOUSE__DATABASE": database}
        timed("`prismops report showback` command, end to end", lambda: subprocess.run(
            command_line, env=environment, check=True, capture_output=True), runs=min(repeat, 3))
    except Exception as exc:
        fail(f"benchmark failed: {exc}")
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {quote_identifier(database)}")
        client.disconnect()
    emit(measures, fmt, title=f"showback over {rows:,} cost lines, {days} days (total {by_team.total['cost_usd']} "
                              f"= cost_lines FINAL); scratch database dropped")
