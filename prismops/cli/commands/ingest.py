"""`prismops ingest focus FILE`: check a FOCUS 1.2/1.3 cost-and-usage CSV file and produce its rows to billing.cloud.v1.

The file is read twice, streaming: first every row is checked (bad rows and totals are known before anything is
sent), then the good rows are produced with an idempotent acks=all producer and flushed; a record Kafka did not
confirm fails the command. Event ids come from the file's content hash and line number, so ingesting the same
file again produces the same ids and adds no rows downstream.

Exit codes (scripts can tell "ingested cleanly" from "ingested, but some rows were rejected"):
  0  every row was valid and produced (or, with --dry-run, would be)
  1  nothing was produced: the file cannot be read, is not CSV, a mandatory column is missing, Kafka is not
     reachable, or Kafka did not confirm every record (error on stderr)
  2  usage error (click)
  3  some rows broke a rule: they are listed (line, column, rule); the good rows were produced unless
     --strict or --dry-run was given, in which case nothing was produced
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from prismops.cli.output import FORMAT_OPTION, emit_json, emit_table, fail, stderr_console
from prismops.settings import Settings

EXIT_BAD_ROWS = 3


@click.group(name="ingest")
def command() -> None:
    """Ingest billing data (FOCUS cost-and-usage files) into the cost pipeline."""


@command.command("focus")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--focus-version", type=click.Choice(["1.2", "1.3"]), default=None,
              help="the file's FOCUS version (default: told from the columns)")
@click.option("--dry-run", is_flag=True, help="check the file and print the totals; produce nothing")
@click.option("--strict", is_flag=True, help="produce nothing if any row is bad (default: produce the good rows)")
@FORMAT_OPTION
@click.pass_obj
def focus(settings: Settings, file: Path, focus_version: str | None, dry_run: bool, strict: bool, fmt: str) -> None:
    """Check a FOCUS cost-and-usage CSV FILE and produce its rows to billing.cloud.v1.

    Prints the totals of BilledCost and EffectiveCost by ServiceName and by ChargeCategory, and every bad row
    (line, column, rule). Exit 0: all rows good; 1: nothing produced (file, column or Kafka error); 3: some rows
    were bad (the good ones were produced unless --strict or --dry-run).
    """
    from prismops.finops.focus_billing import FocusFileError, FocusTotals, RowError, iter_focus_rows, open_focus_file
    from prismops.streams.topics import CLOUD_BILLING

    try:
        focus_file = open_focus_file(file, focus_version)
    except FocusFileError as exc:
        fail(escape(str(exc)))
    errors: list[RowError] = []
    totals = FocusTotals()
    rows = 0
    with _progress() as bar:
        task = bar.add_task("checking", total=focus_file.size_bytes)
        try:
            for row in iter_focus_rows(focus_file, lambda n: bar.update(task, completed=n)):
                rows += 1
                if row.record is None:
                    errors.extend(row.errors)
                else:
                    totals.add(row.record)
        except FocusFileError as exc:
            fail(escape(str(exc)))
    bad_lines = sorted({e.line for e in errors})
    good_rows = rows - len(bad_lines)
    topic = CLOUD_BILLING.name(settings)
    produce = not dry_run and not (strict and errors)
    produced = _produce(settings, focus_file, topic) if produce and good_rows else 0

    summary = {
        "file": str(file), "focus_version": focus_file.focus_version, "content_hash": focus_file.content_hash,
        "rows": rows, "good_rows": good_rows, "bad_rows": len(bad_lines), "produced": produced,
        "topic": None if dry_run else topic, "dry_run": dry_run, "strict": strict,
    }
    _report(summary, totals.as_dict(), errors, fmt)
    if errors:
        what = "nothing was produced" if not produce else f"the {produced} good rows were produced"
        stderr_console.print(
            f"[yellow]warning:[/] {len(bad_lines)} of {rows} rows broke a rule; {what}", highlight=False,
        )
        raise SystemExit(EXIT_BAD_ROWS)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        transient=True, console=stderr_console,
    )


def _produce(settings: Settings, focus_file: Any, topic: str) -> int:
    """Produce the file's good rows, keyed by BillingAccountId; return how many Kafka confirmed, or fail."""
    from confluent_kafka import KafkaError, Message, Producer

    from prismops.finops.focus_billing import FocusFileError, iter_focus_rows
    from prismops.streams.codecs import CodecError, codec_for
    from prismops.streams.producer import AVRO_SINGLE_OBJECT, CONTENT_TYPE_HEADER, DeliveryFailed, DeliveryFailure, safe_producer_config
    from prismops.streams.topics import CLOUD_BILLING, ensure_topics

    try:
        ensure_topics(settings, (CLOUD_BILLING,))
    except Exception as exc:
        fail(escape(f"Kafka at {settings.kafka_bootstrap} is not reachable ({exc}); start it with `prismops stack up`"))
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
            for row in iter_focus_rows(focus_file, lambda n: bar.update(task, completed=n)):
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


def _report(summary: dict[str, Any], totals: dict[str, Any], errors: list[Any], fmt: str) -> None:
    if fmt == "json":
        emit_json({**summary, "totals": totals, "errors": [e.as_dict() for e in errors]})
        return
    emit_table(_escaped([summary]), title="FOCUS ingest", columns=[
        "file", "focus_version", "rows", "good_rows", "bad_rows", "produced", "topic",
    ])
    total_row = {"rows": totals["total"]["rows"], "BilledCost": totals["total"]["BilledCost"],
                 "EffectiveCost": totals["total"]["EffectiveCost"]}
    emit_table(_escaped(totals["by_service_name"] + [{"ServiceName": "(total)", **total_row}]),
               title="totals by ServiceName", columns=["ServiceName", "rows", "BilledCost", "EffectiveCost"])
    emit_table(_escaped(totals["by_charge_category"] + [{"ChargeCategory": "(total)", **total_row}]),
               title="totals by ChargeCategory", columns=["ChargeCategory", "rows", "BilledCost", "EffectiveCost"])
    if errors:
        emit_table(_escaped([e.as_dict() for e in errors]), title="bad rows", columns=["line", "column", "rule", "message"])


def _escaped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text from the file (names, bad values in messages) is shown as-is, never read as rich markup."""
    return [{k: escape(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]
