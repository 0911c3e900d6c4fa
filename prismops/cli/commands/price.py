"""`prismops price`: what one LLM call costs under the catalog, and why; `--batch` re-prices a usage export."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, BinaryIO

import click
from rich.markup import escape

from prismops.cli.output import FORMAT_OPTION, emit, emit_json, emit_table, fail, stderr_console
from prismops.settings import Settings

TOKEN_OPTIONS = {"input_tokens": "--input-tokens", "output_tokens": "--output-tokens",
                 "cached_input_tokens": "--cached-input-tokens", "cache_write_tokens": "--cache-write-tokens",
                 "reasoning_tokens": "--reasoning-tokens"}


def _moment(value: str | None, option: str = "--at") -> dt.datetime:
    from prismops.finops.batch_pricing import parse_moment

    if value is None:
        return dt.datetime.now(dt.timezone.utc)
    try:
        return parse_moment(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 date or time", param_hint=option) from None


def _service_tier(value: str | None) -> str:
    from prismops.finops.pricing import service_tier_name

    try:
        return service_tier_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--service-tier") from None


def _skipped_note(catalog: Any, path: Path | None) -> None:
    if catalog.skipped:
        stderr_console.print(f"note: {len(catalog.skipped)} entries of {path} were not loaded (no per-token prices, "
                             "documentation, other spellings); --show-skipped lists them with the reason",
                             highlight=False, markup=False, soft_wrap=True)


@click.command("price")
@click.option("--model", default=None, help="the model name as the call reported it (required unless --batch)")
@click.option("--provider", default=None, help="inferred from the catalog when the model name is unique; a name "
              "such as google covers several namespaces (gemini, vertex_ai)")
@click.option("--input-tokens", type=click.IntRange(min=0), default=None, help="the whole prompt, cache included")
@click.option("--output-tokens", type=click.IntRange(min=0), default=None, help="reasoning tokens included")
@click.option("--cached-input-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--cache-write-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--reasoning-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--tenant", default=None, help="apply this tenant's negotiated prices")
@click.option("--service-tier", "service_tier", default=None,
              help="standard (default), batch, flex or priority: priced where the catalog has the tier")
@click.option("--at", "at_text", default=None,
              help="price at this time (ISO-8601, UTC when no zone); picks the effective entry and off-peak prices; "
              "default now (--batch: for lines without event_time)")
@click.option("--catalog", "catalog_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="our YAML or LiteLLM's model_prices_and_context_window.json; default: settings, then bundled")
@click.option("--batch", "batch_file", type=click.File("rb"), default=None,
              help="JSON lines of calls (FILE or - for stdin) → JSON lines of priced calls on stdout (always JSON, "
              "whatever --format), an error record per bad line; exit 1 when any line was an error")
@click.option("--show-skipped", is_flag=True, help="list the catalog entries that were not loaded, and why")
@FORMAT_OPTION
@click.pass_obj
def command(settings: Settings, model: str | None, provider: str | None, input_tokens: int | None,
            output_tokens: int | None, cached_input_tokens: int, cache_write_tokens: int, reasoning_tokens: int,
            tenant: str | None, service_tier: str | None, at_text: str | None, catalog_path: Path | None,
            batch_file: BinaryIO | None, show_skipped: bool, fmt: str) -> None:
    """Price one call: cost per token kind, total, and the catalog entry, service tier, threshold tier and
    time-of-day prices used. With --batch, price every line of a usage export."""
    from prismops.finops.pricing import CatalogError, load_catalog

    path = catalog_path or settings.pricing.catalog
    tier = _service_tier(service_tier)
    at = _moment(at_text)
    if not show_skipped and batch_file is None:
        missing = [name for name, value in (("--model", model), ("--input-tokens", input_tokens),
                                            ("--output-tokens", output_tokens)) if value is None]
        if missing:
            raise click.UsageError(f"missing {', '.join(missing)} (or give --batch FILE)")
    try:
        catalog = load_catalog(path, settings.pricing.tenant_overrides)
    except CatalogError as exc:
        fail(escape(f"cannot load the price catalog: {exc}"))
    if show_skipped:
        rows = [{"entry": s.entry, "reason": s.reason} for s in catalog.skipped]
        emit(rows, fmt, title=f"{len(rows)} entries of {path or 'the bundled catalog'} not loaded",
             columns=["entry", "reason"])
        return
    _skipped_note(catalog, path)
    if batch_file is not None:
        price_batch(batch_file, catalog, at, settings.pricing.max_tokens_per_call)
        return
    price_one(catalog, settings, model=model, provider=provider, tenant=tenant, tier=tier, at=at,  # type: ignore[arg-type]
              counts={"input_tokens": input_tokens, "output_tokens": output_tokens,
                      "cached_input_tokens": cached_input_tokens, "cache_write_tokens": cache_write_tokens,
                      "reasoning_tokens": reasoning_tokens}, fmt=fmt)


def price_one(catalog: Any, settings: Settings, *, model: str, provider: str | None, tenant: str | None, tier: str,
              at: dt.datetime, counts: dict[str, int], fmt: str) -> None:
    from prismops.errors import FieldRuleError
    from prismops.finops.batch_pricing import exact_text, unpriced_reason
    from prismops.finops.pricing import price_tokens
    from prismops.finops.validation import check_token_counts

    try:
        check_token_counts(counts, settings.pricing.max_tokens_per_call)
    except FieldRuleError as exc:
        fail(escape(f"{TOKEN_OPTIONS.get(exc.field or '', exc.field)} {exc.message} [{exc.rule}]"))
    quote = catalog.quote(provider, model, at, tenant, tier)
    if quote is None:
        reason = unpriced_reason(catalog, provider, model, at)
        message = reason.message.replace("name the provider", "pass --provider")
        fail(escape(f"{message} [{reason.rule}]"))
    cost = price_tokens(quote, **counts)
    per_million = cost.prices.per_million()
    tokens = {"input": counts["input_tokens"] - counts["cached_input_tokens"] - counts["cache_write_tokens"],
              "cache_read": counts["cached_input_tokens"], "cache_write": counts["cache_write_tokens"],
              "output": counts["output_tokens"] - counts["reasoning_tokens"], "reasoning": counts["reasoning_tokens"]}
    rows = [{"component": name, "tokens": tokens[name], "usd_per_mtok": exact_text(per_million[name]),
             "cost_usd": exact_text(cost.components[name])} for name in tokens]
    summary = {"provider": quote.provider, "model": quote.model, "at": at, "tenant": tenant,
               "service_tier": quote.service_tier, "service_tier_requested": quote.service_tier_requested,
               "above_input_tokens": cost.above_input_tokens, "off_peak": quote.off_peak,
               "price_version": quote.price_version, "effective_from": quote.effective_from,
               "override": quote.override, "cost_usd": cost.cost_usd}
    if fmt == "json":
        emit_json({**summary, "components": rows})
        return
    threshold = f", above {cost.above_input_tokens} input tokens" if cost.above_input_tokens is not None else ""
    emit_table(rows, title=f"{quote.provider}/{quote.model} at {at:%Y-%m-%d %H:%M}Z ({quote.service_tier}"
                           f"{threshold}{', off-peak' if quote.off_peak else ''})")
    if quote.service_tier_requested:
        stderr_console.print(f"note: {quote.provider}/{quote.model} has no {quote.service_tier_requested} prices in "
                             "the catalog; priced at standard", highlight=False, markup=False, soft_wrap=True)
    emit_table([{"field": name, "value": value} for name, value in summary.items()],
               title="total (rounded once, half-even, to 12 decimal places)")


def price_batch(source: BinaryIO, catalog: Any, default_at: dt.datetime, max_tokens: int) -> None:
    """JSON lines in, JSON lines out (one per non-blank input line); a summary on stderr; exit 1 when any line
    was an error."""
    from prismops.finops.batch_pricing import price_line

    write, dumps = sys.stdout.write, json.dumps
    lines = priced = errors = 0
    first_error = None
    buffer: list[str] = []
    for number, raw in enumerate(source, start=1):
        record = price_line(number, raw, catalog, default_at, max_tokens)
        if record is None:
            continue
        lines += 1
        if "error" in record:
            errors += 1
            if first_error is None:
                e = record["error"]
                first_error = f"line {number}: {e['field'] + ': ' if e['field'] else ''}{e['message']} [{e['rule']}]"
        else:
            priced += 1
        buffer.append(dumps(record, separators=(",", ":")))
        if len(buffer) >= 2048:
            write("\n".join(buffer) + "\n")
            buffer.clear()
    if buffer:
        write("\n".join(buffer) + "\n")
    sys.stdout.flush()
    summary = f"priced {priced} of {lines} lines ({catalog.version})"
    if errors:
        fail(escape(f"{summary}; {errors} lines are errors (error records on stdout); first: {first_error}"))
    stderr_console.print(summary, highlight=False, markup=False, soft_wrap=True)
