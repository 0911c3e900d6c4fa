"""`prismops bench state`: the worker with a large state (issue 13's P5 and P7).

One run on the local stack, scratch namespace and database, the real worker and sink processes:
1. Load: `tenants` tenants, each with a daily USD budget (a budgets file of `tenants` entries), calling
   `models` priced models, so tenants x models distinct (tenant, model) keys reach the budget ledger, the
   anomaly watch and the live table. Every event is a row and the worker has read every cost line (group lag 0).
   The worker's peak RSS (VmHWM) is the P5 figure.
2. Recovery: `after` more events paced at `rate`/s; half-way the worker is killed with SIGKILL and started again at
   once. The P7 figure is the time from the restart until the worker's group has no lag on the usage and
   cost-line topics again and every event is a row in ClickHouse (budgets current).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prismops.infra.components import Components
from prismops.settings import Settings
from prismops.sinks.clickhouse import clickhouse_client
from prismops.sinks.migrations import apply_migrations
from prismops.streams.producer import UsageProducer
from prismops.streams.replay import group_lag
from prismops.streams.simulation import TrafficGenerator, simulate
from prismops.streams.topics import COST_LINES, LLM_USAGE, ensure_topics
from prismops.testing import free_port
from prismops.testing.bench_scratch import bench_stack, remove_scratch
from prismops.testing.pipeline_bench import peak_rss_kib

Progress = Callable[[str], None]
MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("openai", "o3-mini"), ("anthropic", "claude-sonnet-4"),
          ("google", "gemini-2.0-flash"), ("google", "gemini-2.5-pro"), ("deepseek", "deepseek-chat"),
          ("local", "llama-3.1-8b"), ("local", "mistral-7b"), ("anthropic", "claude-3-5-haiku"))
TENANT_PREFIX = "state-tenant-"


@dataclass
class StateBenchOptions:
    tenants: int = 10_000
    models: int = 10
    after: int = 30_000
    rate: float = 3_000.0
    timeout_s: float = 900.0


def budgets_document(tenants: int) -> dict[str, Any]:
    """One daily USD budget per tenant, high enough that none blocks (the run measures state, not refusals)."""
    return {"budgets": [{"id": f"state-daily-{n}", "scope": "tenant", "scope_id": f"{TENANT_PREFIX}{n}",
                         "period": "daily", "unit": "usd", "limit": "1000000"} for n in range(tenants)]}


def keyed_events(tenants: int, models: int, count: int, seed: int) -> Iterator[dict[str, Any]]:
    """Simulated calls whose first tenants x models cover every (tenant, model) pair once."""
    generator = TrafficGenerator(seed=seed)
    chosen = MODELS[:models]
    for index in range(count):
        provider, model = chosen[(index // tenants) % len(chosen)]
        yield generator.event() | {"tenant": f"{TENANT_PREFIX}{index % tenants}", "provider": provider,
                                   "model": model, "event_time": dt.datetime.now(dt.timezone.utc)}


def stored_rows(settings: Settings) -> int:
    client = clickhouse_client(settings)
    try:
        ((count,),) = client.execute("SELECT count() FROM cost_lines FINAL")
        return int(count)
    finally:
        client.disconnect()


def caught_up(settings: Settings, rows: int) -> bool:
    group = settings.worker_app_id
    return (group_lag(settings, group, LLM_USAGE.name(settings)) == 0
            and group_lag(settings, group, COST_LINES.name(settings)) == 0 and stored_rows(settings) >= rows)


def wait_caught_up(settings: Settings, components: Components, rows: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        components.check_alive()
        if caught_up(settings, rows):
            return time.monotonic()
        time.sleep(0.25)
    raise TimeoutError(f"the worker did not catch up within {timeout_s:.0f}s ({stored_rows(settings)}/{rows} rows)")


def run_state_bench(base: Settings, options: StateBenchOptions, progress: Progress, *,
                    scratch_settings: Callable[[Settings], Settings]) -> dict[str, Any]:
    with bench_stack(base, progress):
        return _measure_state(base, options, progress, scratch_settings=scratch_settings)


def _measure_state(base: Settings, options: StateBenchOptions, progress: Progress, *,
                   scratch_settings: Callable[[Settings], Settings]) -> dict[str, Any]:
    logs = Path(base.stack.home).resolve() / "logs" / f"bench-state-{dt.datetime.now():%Y%m%d-%H%M%S}"
    logs.mkdir(parents=True, exist_ok=True)
    budgets = logs / "budgets.yaml"
    budgets.write_text(yaml.safe_dump(budgets_document(options.tenants), sort_keys=False))
    settings = scratch_settings(base).with_overrides(
        clickhouse={"database": f"prismops_bench_state_{uuid.uuid4().hex[:8]}"},
        worker={"web_port": free_port()}, sink={"metrics_port": free_port()},
        budgets={"definitions": str(budgets), "default_tenant_daily_usd": "0", "default_tenant_daily_tokens": 0})
    keys = options.tenants * options.models
    try:
        ensure_topics(settings)
        apply_migrations(settings)
        with Components(settings, logs) as components:
            components.start("worker", "sink")
            producer = UsageProducer(settings)
            progress(f"load: {keys:,} (tenant, model) keys, {options.tenants:,} tenant budgets…")
            started = time.monotonic()
            simulate(producer, keyed_events(options.tenants, options.models, keys, seed=1),
                     progress=lambda n: progress(f"  produced {n:,}/{keys:,}") if n % 20_000 == 0 else None)
            loaded = wait_caught_up(settings, components, keys, options.timeout_s)
            rss_loaded = peak_rss_kib(components.processes["worker"].pid)
            progress(f"  caught up {loaded - started:.1f} s after the first event; worker peak RSS "
                     f"{(rss_loaded or 0) / 1024:,.0f} MiB")
            progress(f"recovery: {options.after:,} more events at {options.rate:,.0f}/s, kill -9 the worker half-way…")
            sender = threading.Thread(target=simulate, args=(producer, keyed_events(
                options.tenants, options.models, options.after, seed=2), options.rate), daemon=True)
            sender.start()
            time.sleep(options.after / options.rate / 2)
            components.kill("worker")
            components.restart("worker")
            restarted = time.monotonic()
            sender.join(options.timeout_s)
            recovered = wait_caught_up(settings, components, keys + options.after, options.timeout_s)
            sending_ended = options.after / options.rate / 2
            rss_after = peak_rss_kib(components.processes["worker"].pid)
            producer.close()
        return {
            "keys": keys, "tenants_with_budgets": options.tenants, "load_seconds": round(loaded - started, 1),
            "worker_peak_rss_mib": round((rss_loaded or 0) / 1024, 1),
            "restarted_worker_peak_rss_mib": round((rss_after or 0) / 1024, 1),
            "caught_up_after_restart_s": round(recovered - restarted, 1),
            "sending_after_restart_s": round(sending_ended, 1), "worker_output_path": settings.worker.output_path,
            "logs": str(logs),
        }
    finally:
        remove_scratch(settings, progress)
