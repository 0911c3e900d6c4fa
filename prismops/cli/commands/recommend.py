"""`prismops recommend gpu`: the cheapest GPU type (or MIG slice) for each job profile, a spot + checkpoint
template where the job can checkpoint, and the idle / over-provisioned jobs with their cost.

Input, exactly one of: --profiles FILE, JSON lines of job profiles (tenant, job, gpu_model, capacity_type, gpus,
duration_s, peak_memory_bytes, mean_memory_bytes, util_mean, util_p50, util_p95, interruptions, mig_profile,
checkpoint_cost_s, restart_s); --events FILE, JSON lines of usage.gpu.v1 events (what `prismops collect ...
--output FILE` writes); or --from-clickhouse, the usage.gpu.v1 events the sink stored in ClickHouse `gpu_usage`
(migration 0018), read with FINAL for the UTC days [--since, --until) or the last --days N (default 30, today
included). Events are profiled per (tenant, job) by the same `profiles_from_events`, so a file of events and the
same events read back from ClickHouse give the same recommendations. --save also writes the recommendations to
ClickHouse (table gpu_recommendations, migration 0016). See docs/gpu_collectors.md.

Exit codes: 0 done; 1 unreadable input, a profile that breaks a rule (line, field and rule on stderr), or a
ClickHouse error (--from-clickhouse, --save); 2 usage error.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from prismops.cli.output import FORMAT_OPTION, emit_json, emit_table, fail
from prismops.settings import Settings


@click.group(name="recommend")
def command() -> None:
    """Recommendations from measured usage."""


def _lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    try:
        text = path.read_text()
    except OSError as exc:
        fail(escape(f"cannot read {path}: {exc.strerror or exc}"))
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            fail(escape(f"{path}:{number}: not JSON ({exc.msg}) [json_line]"))
        if not isinstance(value, dict):
            fail(escape(f"{path}:{number}: each line must be a JSON object [json_object]"))
        rows.append((number, value))
    return rows


@command.command("gpu")
@click.option("--profiles", "profiles_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON lines of job profiles")
@click.option("--events", "events_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON lines of usage.gpu.v1 events (collect --output), profiled per tenant and job")
@click.option("--from-clickhouse", "from_clickhouse", is_flag=True,
              help="profile the usage.gpu.v1 windows stored in ClickHouse gpu_usage (the sink writes them)")
@click.option("--since", "--from", "since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="with --from-clickhouse: first UTC day included, YYYY-MM-DD (windows by their start)")
@click.option("--until", "--to", "until", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="with --from-clickhouse: first UTC day NOT included, YYYY-MM-DD (default: tomorrow)")
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="with --from-clickhouse: the last N UTC days, today included (default 30)")
@click.option("--headroom", type=Decimal, default=Decimal("0.2"), show_default=True,
              help="margin over peak memory and p95 compute")
@click.option("--precision", type=click.Choice(["bf16", "fp16"]), default="bf16", show_default=True)
@click.option("--checkpoint-cost-s", type=Decimal, default=None,
              help="checkpoint write time for profiles that do not give one (enables the spot template)")
@click.option("--max-spot-overhead", type=Decimal, default=Decimal("0.15"), show_default=True,
              help="largest tolerable expected overhead of checkpoints and lost work on spot")
@click.option("--gpu-types", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="GPU types YAML (default: the bundled finops/gpu_types.yaml)")
@click.option("--at", "at", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="price the options as of this UTC moment (default: now)")
@click.option("--save", is_flag=True, help="also insert the recommendations into ClickHouse gpu_recommendations")
@FORMAT_OPTION
@click.pass_obj
def gpu(settings: Settings, profiles_file: Path | None, events_file: Path | None, from_clickhouse: bool,
        since: dt.datetime | None, until: dt.datetime | None, days: int | None, headroom: Decimal, precision: str,
        checkpoint_cost_s: Decimal | None, max_spot_overhead: Decimal, gpu_types: Path | None, at: dt.datetime | None,
        save: bool, fmt: str) -> None:
    """Recommend the cheapest fitting GPU type or MIG slice per job, with a spot + checkpoint template."""
    import dataclasses

    from prismops.errors import FieldRuleError
    from prismops.finops.gpu_pricing import load_gpu_catalog
    from prismops.finops.gpu_recommendations import JobProfile, load_gpu_types, profiles_from_events, recommend

    if (profiles_file is not None) + (events_file is not None) + from_clickhouse != 1:
        fail("give exactly one of --profiles, --events, --from-clickhouse")
    if not from_clickhouse and (since or until or days):
        fail("--since, --until and --days go with --from-clickhouse")
    window_days = _days(since, until, days) if from_clickhouse else None
    if headroom < 0 or max_spot_overhead < 0:
        fail("--headroom and --max-spot-overhead must be >= 0")
    moment = (at.replace(tzinfo=dt.timezone.utc) if at else dt.datetime.now(dt.timezone.utc))
    try:
        types = load_gpu_types(gpu_types)
        prices = load_gpu_catalog(settings.gpu.price_table)
    except (OSError, ValueError) as exc:
        fail(escape(f"GPU catalog: {exc}"))
    profiles = []
    try:
        if profiles_file is not None:
            for number, raw in _lines(profiles_file):
                profiles.append(JobProfile.from_dict(raw, where=f"{profiles_file}:{number}"))
        elif events_file is not None:
            profiles = profiles_from_events(raw for _n, raw in _lines(events_file))
        else:
            assert window_days is not None
            profiles = profiles_from_events(_stored_events(settings, *window_days))
    except FieldRuleError as exc:
        fail(escape(str(exc)))
    except (KeyError, ValueError, ArithmeticError) as exc:
        where = events_file if events_file is not None else f"{settings.clickhouse.database}.gpu_usage"
        fail(escape(f"{where}: an event lacks or breaks field {exc} (usage.gpu.v1 as JSON) [event_fields]"))
    if checkpoint_cost_s is not None:
        profiles = [p if p.checkpoint_cost_s is not None else dataclasses.replace(p, checkpoint_cost_s=checkpoint_cost_s)
                    for p in profiles]
    try:
        results = [recommend(p, types, prices, at=moment, headroom=headroom, precision=precision,
                             max_spot_overhead=max_spot_overhead) for p in profiles]
    except ValueError as exc:
        fail(escape(str(exc)))
    if save:
        _save(settings, results, moment, types.version)
    if fmt == "json":
        emit_json([r.as_dict() for r in results])
        return
    rows = []
    for r in results:
        best = r.recommended
        rows.append({
            "tenant": r.tenant, "job": r.job,
            "now": f"{r.profile.gpus}x {r.profile.gpu_model}" + (f" {r.profile.mig_profile}" if r.profile.mig_profile else "")
                   + f" {r.profile.capacity_type}",
            "recommended": "-" if best is None else f"{best.gpus}x {best.gpu_model}" + (f" {best.mig_profile}" if best.mig_profile else ""),
            "cost now $": r.current.as_dict()["job_cost_usd"] if r.current else None,
            "cost then $": best.as_dict()["job_cost_usd"] if best else None,
            "saves $": r.savings_usd,
            "spot": "-" if r.spot is None else f"ckpt every {r.spot.checkpoint_interval_s}s, +{r.spot.expected_overhead * 100:.1f}%, saves ${r.spot.savings_usd:.2f}",
            "flags": ",".join(r.flags), "wasted $": r.wasted_usd or None,
        })
    emit_table(rows, title=f"GPU recommendations ({types.version}, headroom {headroom})")


def _days(since: dt.datetime | None, until: dt.datetime | None, days: int | None) -> tuple[dt.date, dt.date]:
    """The UTC days [first, last) to read: --since/--until (--until exclusive, default tomorrow), or the last
    --days N (default 30) ending today."""
    if days is not None and (since or until):
        fail("give --days or --since/--until, not both")
    tomorrow = dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1)
    last = until.date() if until else tomorrow
    first = since.date() if since else last - dt.timedelta(days=days or 30)
    if last <= first:
        fail(f"--until {last} must be after --since {first} (--until is exclusive)")
    return first, last


def _stored_events(settings: Settings, first: dt.date, last: dt.date) -> list[dict[str, Any]]:
    from prismops.cli.errors import clickhouse_session
    from prismops.sinks.clickhouse import gpu_usage_events

    with clickhouse_session(settings) as client:
        return gpu_usage_events(client, settings.clickhouse.database, since=first, until=last)


def _save(settings: Settings, results: list[Any], moment: dt.datetime, types_version: str) -> None:
    from prismops.cli.errors import clickhouse_session
    from prismops.sinks.gpu_recommendations import recommendation_rows

    rows = recommendation_rows(results, computed_at=moment, types_version=types_version)
    if not rows:
        return
    with clickhouse_session(settings) as client:
        client.execute(f"INSERT INTO {settings.clickhouse.database}.gpu_recommendations ({', '.join(rows[0])}) VALUES", rows)
