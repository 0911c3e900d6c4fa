"""`prismops ingest focus FILE`: check a FOCUS 1.0–1.3 cost-and-usage export and produce its rows to billing.cloud.v1.

FILE is a `.csv`, a `.csv.gz`, a `.zip` of CSV files or a Parquet file (told from its first bytes). It is read twice,
streaming: first every row is checked (bad rows and totals are known before anything is sent), then the good rows
are produced with an idempotent acks=all producer and flushed; a record Kafka did not confirm fails the command.

Billing periods and restatements (design: docs/billing.md). Every (BillingAccountId, BillingPeriodStart) in the
file is looked up in the ClickHouse ledger `billing_exports`:
  new        the period was never ingested: this file's export is put in force;
  unchanged  this very file (same SHA-256) is in force: its rows are sent again with the same ids, and nothing
             downstream changes (a re-run after a crash completes what was missing);
  replaced   another export of the period is in force: refused (exit 1, nothing sent) unless --replace-period is
             given; then this export is put in force, the period's older cost lines are deleted from ClickHouse,
             and the replaced export's totals are printed beside the new ones.
The ledger lives in ClickHouse, so ingesting (not --dry-run) needs ClickHouse as well as Kafka.

Totals: rows and BilledCost, EffectiveCost, ListCost and ContractedCost, in all, by ServiceName, by BillingCurrency,
by ChargeCategory and by billing period: exact sums of the file's values, so each equals the column sum to the last
digit (the overall total adds currencies together, as a column sum does). Date-times without Z or an offset are read
as UTC and counted in a warning.

Exit codes (scripts can tell "ingested cleanly" from "ingested, but some rows were rejected"):
  0  every row was valid and produced (or, with --dry-run, would be)
  1  nothing was produced: the file cannot be read, is not CSV/Parquet, a mandatory column is missing, Kafka or
     ClickHouse is not reachable, a period would be replaced without --replace-period, or Kafka did not confirm
     every record (error on stderr)
  2  usage error (click)
  3  some rows broke a rule: they are listed (line, column, rule); the good rows were produced unless
     --strict or --dry-run was given, in which case nothing was produced
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from prismops.cli.output import FORMAT_OPTION, emit_json, emit_table, fail, stderr_console
from prismops.settings import Settings

EXIT_BAD_ROWS = 3
MONEY = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")
MUTATION_WAIT_S = 120.0


@click.group(name="ingest")
def command() -> None:
    """Ingest billing data (FOCUS cost-and-usage files) into the cost pipeline."""


@command.command("focus")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--focus-version", type=click.Choice(["1.0", "1.1", "1.2", "1.3"]), default=None,
              help="the file's FOCUS version (default: told from the columns)")
@click.option("--replace-period", is_flag=True,
              help="the file restates billing periods already ingested from another export: replace their lines")
@click.option("--dry-run", is_flag=True, help="check the file and print the totals; produce nothing")
@click.option("--strict", is_flag=True, help="produce nothing if any row is bad (default: produce the good rows)")
@FORMAT_OPTION
@click.pass_obj
def focus(settings: Settings, file: Path, focus_version: str | None, replace_period: bool, dry_run: bool,
          strict: bool, fmt: str) -> None:
    """Check a FOCUS cost-and-usage export FILE (.csv, .csv.gz, .zip of CSVs, Parquet) and produce its rows to
    billing.cloud.v1.

    Prints the row count and the BilledCost, EffectiveCost, ListCost and ContractedCost totals in all, by
    ServiceName, by BillingCurrency, by ChargeCategory and by billing period, and every bad row (line, column,
    rule). A billing period already ingested from another export is replaced only with --replace-period. Exit 0:
    all rows good; 1: nothing produced (file, column, Kafka or ClickHouse error, or a period to replace without
    --replace-period); 3: some rows were bad (the good ones were produced unless --strict or --dry-run).
    """
    from prismops.finops.focus_billing import FocusFileError, FocusTotals, RowError, iter_focus_rows, open_focus_file
    from prismops.streams.topics import CLOUD_BILLING

    try:
        focus_file = open_focus_file(file, focus_version)
    except FocusFileError as exc:
        fail(escape(str(exc)))
    errors: list[RowError] = []
    totals = FocusTotals()
    rows = naive_timestamps = 0
    with _progress() as bar:
        task = bar.add_task("checking", total=focus_file.size_bytes)
        try:
            for row in iter_focus_rows(focus_file, lambda n: bar.update(task, completed=n)):
                rows += 1
                naive_timestamps += row.naive_timestamps
                if row.record is None:
                    errors.extend(row.errors)
                else:
                    totals.add(row.record)
        except FocusFileError as exc:
            fail(escape(str(exc)))
    bad_lines = sorted({(e.member or "", e.line) for e in errors})
    good_rows = rows - len(bad_lines)
    topic = CLOUD_BILLING.name(settings)
    produce = not dry_run and not (strict and errors) and good_rows > 0

    periods = _periods(totals)
    produced = 0
    if produce:
        _ensure_topic(settings)
        periods = _settle_periods(settings, focus_file, periods, replace_period)
        seqs = {p["key"]: p["export_seq"] for p in periods}
        produced = _produce(settings, focus_file, topic, seqs)

    summary = {
        "file": str(file), "format": focus_file.format, "focus_version": focus_file.focus_version,
        "content_hash": focus_file.content_hash, "rows": rows, "good_rows": good_rows, "bad_rows": len(bad_lines),
        "produced": produced, "topic": None if dry_run else topic, "dry_run": dry_run, "strict": strict,
        "naive_timestamps": naive_timestamps,
    }
    document_periods = [{k: v for k, v in p.items() if k != "key"} for p in periods]
    _report(summary, totals.as_dict(), document_periods, errors, fmt)
    if naive_timestamps:
        stderr_console.print(
            f"[yellow]warning:[/] {naive_timestamps} date-time value(s) had no UTC offset and were read as UTC "
            "(FOCUS date-times are UTC)", highlight=False,
        )
    if errors:
        what = "nothing was produced" if not produce else f"the {produced} good rows were produced"
        stderr_console.print(
            f"[yellow]warning:[/] {len(bad_lines)} of {rows} rows broke a rule; {what}", highlight=False,
        )
        raise SystemExit(EXIT_BAD_ROWS)


def _periods(totals: Any) -> list[dict[str, Any]]:
    """One entry per billing period of the file, with its totals per currency; `key` names it for the ledger."""
    periods: list[dict[str, Any]] = []
    for (account, start, end), currencies in sorted(totals.by_period.items(), key=lambda item: item[0][:2]):
        periods.append({
            "key": (account, start),
            "BillingAccountId": account, "BillingPeriodStart": start, "BillingPeriodEnd": end,
            "action": None, "export_seq": None,
            "totals": [{"BillingCurrency": c, **t.as_dict()} for c, t in sorted(currencies.items())],
            "replaced": None,
        })
    return periods


def _ensure_topic(settings: Settings) -> None:
    from prismops.streams.topics import CLOUD_BILLING, ensure_topics

    try:
        ensure_topics(settings, (CLOUD_BILLING,))
    except Exception as exc:
        fail(escape(f"Kafka at {settings.kafka_bootstrap} is not reachable ({exc}); start it with `prismops stack up`"))


def _settle_periods(settings: Settings, focus_file: Any, periods: list[dict[str, Any]],
                    replace_period: bool) -> list[dict[str, Any]]:
    """Look each period up in the billing_exports ledger and decide: new, unchanged or replaced. Refuse (exit 1,
    nothing written) a replacement without --replace-period; otherwise put the new exports in force and delete
    the replaced periods' older cost lines."""
    from decimal import Decimal

    from prismops.sinks.billing_exports import (
        PeriodExport, PeriodTotals, exports_in_force, next_sequence, period_key, record_exports, replace_period as replace,
        wait_for_mutations,
    )
    from prismops.cli.errors import describe_clickhouse_error
    from prismops.sinks.clickhouse import SinkNotReady, clickhouse_client, require_table

    database = settings.clickhouse.database
    try:
        client = clickhouse_client(settings)
        require_table(client, database, "billing_exports")
        in_force = exports_in_force(client, database, {p["BillingAccountId"] for p in periods})
    except SinkNotReady as exc:
        fail(escape(f"{exc} (the billing export ledger is a ClickHouse table)"))
    except Exception as exc:
        fail(escape(f"{describe_clickhouse_error(settings, exc)} (the billing export ledger lives there)"))
    sequence = next_sequence(in_force)
    conflicts = []
    for period in periods:
        current = in_force.get(period_key(*period["key"]))
        if current is None:
            period.update(action="new", export_seq=sequence)
        elif current.export_id == focus_file.content_hash:
            period.update(action="unchanged", export_seq=current.sequence)
        else:
            period.update(action="replaced", export_seq=sequence, replaced=current.as_dict())
            conflicts.append(period)
    if conflicts and not replace_period:
        listed = "; ".join(
            f"{p['BillingAccountId']} {p['BillingPeriodStart']:%Y-%m-%d} (in force: {p['replaced']['source_file']}, "
            f"sha256 {p['replaced']['export_id'][:12]}…)" for p in conflicts)
        fail(escape(f"{len(conflicts)} billing period(s) already hold another export: {listed}. Nothing was sent. "
                    "If this file restates them, pass --replace-period to replace their lines"))
    now = dt.datetime.now(dt.timezone.utc)
    exports = [
        PeriodExport(p["BillingAccountId"], p["BillingPeriodStart"], p["BillingPeriodEnd"], focus_file.content_hash,
                     p["export_seq"], now, str(focus_file.path), focus_file.focus_version,
                     tuple(PeriodTotals(t["BillingCurrency"], t["rows"], *(Decimal(t[m]) for m in MONEY))
                           for t in p["totals"]))
        for p in periods if p["action"] in ("new", "replaced")
    ]
    try:
        record_exports(client, database, exports)
        for period in conflicts:
            period["replaced"]["deleted_lines"] = replace(client, database, period["BillingAccountId"],
                                                          period["BillingPeriodStart"], period["export_seq"])
        if conflicts and not wait_for_mutations(client, database, MUTATION_WAIT_S):
            stderr_console.print(
                f"[yellow]warning:[/] ClickHouse has not finished deleting the replaced lines after {MUTATION_WAIT_S:.0f}s; "
                "it goes on in the background (system.mutations)", highlight=False,
            )
    except Exception as exc:
        fail(escape(f"{describe_clickhouse_error(settings, exc)}: the billing export ledger update failed and nothing "
                    "was sent; run the command again"))
    finally:
        client.disconnect()
    return periods


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        transient=True, console=stderr_console,
    )


def _produce(settings: Settings, focus_file: Any, topic: str, export_seqs: dict[Any, int]) -> int:
    """Produce the file's good rows, keyed by BillingAccountId; return how many Kafka confirmed, or fail."""
    from confluent_kafka import KafkaError, Message, Producer

    from prismops.finops.focus_billing import FocusFileError, iter_focus_rows
    from prismops.streams.codecs import CodecError, codec_for
    from prismops.streams.producer import AVRO_SINGLE_OBJECT, CONTENT_TYPE_HEADER, DeliveryFailed, DeliveryFailure, safe_producer_config
    from prismops.streams.topics import CLOUD_BILLING

    codec = codec_for(CLOUD_BILLING.schema)
    producer = Producer(safe_producer_config(settings))
    failures: list[DeliveryFailure] = []
    delivered = 0
    lock = threading.Lock()

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        nonlocal delivered
        with lock:
            if err is None:
                delivered += 1
            else:
                failures.append(DeliveryFailure(topic, (msg.key() or b"").decode(), None, err.str()))

    headers = [(CONTENT_TYPE_HEADER, AVRO_SINGLE_OBJECT)]
    with _progress() as bar:
        task = bar.add_task("producing", total=focus_file.size_bytes)
        try:
            for row in iter_focus_rows(focus_file, lambda n: bar.update(task, completed=n), export_seqs=export_seqs):
                if row.record is None:
                    continue
                try:
                    value = codec.encode(row.record)
                except CodecError as exc:  # the checks above should make this impossible; never drop quietly
                    fail(escape(f"line {row.line}: cannot encode the row: {exc}"))
                while True:
                    try:
                        producer.produce(topic, key=row.record["BillingAccountId"].encode(), value=value,
                                         headers=headers, on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.1)
                producer.poll(0)
        except FocusFileError as exc:
            producer.flush(60)
            fail(escape(f"{exc} ({delivered} rows had been produced)"))
        remaining = producer.flush(120)
    if remaining:
        failures.append(DeliveryFailure(topic, None, None, f"{remaining} record(s) still queued after 120s"))
    if failures:
        fail(escape(str(DeliveryFailed(failures))))
    return delivered


def _report(summary: dict[str, Any], totals: dict[str, Any], periods: list[dict[str, Any]], errors: list[Any],
            fmt: str) -> None:
    if fmt == "json":
        emit_json({**summary, "totals": totals, "periods": periods, "errors": [e.as_dict() for e in errors]})
        return
    emit_table(_escaped([summary]), title="FOCUS ingest", columns=[
        "file", "format", "focus_version", "rows", "good_rows", "bad_rows", "produced", "topic",
    ])
    total_row = {"rows": totals["total"]["rows"], **{m: totals["total"][m] for m in MONEY}}
    columns = ["rows", *MONEY]
    for key, title in (("by_service_name", "ServiceName"), ("by_billing_currency", "BillingCurrency"),
                       ("by_charge_category", "ChargeCategory")):
        emit_table(_escaped(totals[key] + [{title: "(total, all currencies)" if key != "by_billing_currency" else "(total)",
                                            **total_row}]),
                   title=f"totals by {title}", columns=[title, *columns])
    period_rows = []
    for period in periods:
        for t in period["totals"]:
            period_rows.append({
                "BillingAccountId": period["BillingAccountId"], "BillingPeriod": _period_text(period),
                "action": period["action"] or "(dry run)", **t,
            })
        for t in (period["replaced"] or {}).get("totals", []):
            period_rows.append({
                "BillingAccountId": period["BillingAccountId"], "BillingPeriod": _period_text(period),
                "action": f"replaced export {period['replaced']['export_id'][:12]}…", **t,
            })
    if period_rows:
        emit_table(_escaped(period_rows), title="billing periods",
                   columns=["BillingAccountId", "BillingPeriod", "action", "BillingCurrency", *columns])
    if errors:
        emit_table(_escaped([e.as_dict() for e in errors]), title="bad rows",
                   columns=["line", "column", "rule", "message"] + (["member"] if any(e.member for e in errors) else []))


def _period_text(period: dict[str, Any]) -> str:
    return f"{period['BillingPeriodStart']:%Y-%m-%d %H:%M} – {period['BillingPeriodEnd']:%Y-%m-%d %H:%M}"


def _escaped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text from the file (names, bad values in messages) is shown as-is, never read as rich markup."""
    return [{k: escape(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]


@command.command("serve")
@click.option("--host", default=None, help="listen address; default: http_ingest.host from settings")
@click.option("--port", type=int, default=None, help="listen port; default: http_ingest.port from settings")
@click.option("--tokens", "tokens_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="YAML list of {tenant, token_sha256 | token}; default: http_ingest.tokens_file")
@click.pass_obj
def serve(settings: Settings, host: str | None, port: int | None, tokens_file: Path | None) -> None:
    """Take LLM usage over HTTP (POST /v1/usage: CloudEvents 1.0 or JSON) until SIGINT/SIGTERM.

    Each event is checked by the worker's rules and every broken field is named in the answer; accepted events
    are written to Kafka (acks=all) before the 202. GET /schema gives the event's JSON Schema.
    """
    import logging
    import signal

    from prismops.gateway_http.access import TokensFileError, load_tenant_tokens
    from prismops.gateway_http.server import USAGE_PATH, HttpIngest, serve_ingest

    config = settings.http_ingest
    path = tokens_file or config.tokens_file
    if path is None:
        fail("no tokens file: give --tokens FILE or set http_ingest.tokens_file (a YAML list of {tenant, token_sha256})")
    try:
        tokens = load_tenant_tokens(path)
    except TokensFileError as exc:
        fail(escape(str(exc)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ingest = HttpIngest(settings, tokens)
    bind_host, bind_port = host or config.host, config.port if port is None else port
    try:
        server = serve_ingest(ingest, bind_host, bind_port)
    except OSError as exc:
        ingest.close()
        fail(escape(f"cannot listen on {bind_host}:{bind_port}: {exc.strerror or exc}"))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    actual_port = server.server_address[1]
    stderr_console.print(f"HTTP ingest on http://{bind_host}:{actual_port}{USAGE_PATH} "
                         f"({len(tokens.by_digest)} tokens) → {ingest.usage_topic}; Ctrl-C stops")
    stop.wait()
    server.shutdown()
    ingest.close()
