"""`prismops price`: what one LLM call costs under the catalog, and why."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import click

from prismops.cli.output import FORMAT_OPTION, emit_json, emit_table, fail
from prismops.settings import Settings


def exact_text(value: Decimal) -> str:
    """The exact value without trailing zeros or exponent (components are shown unrounded)."""
    return format(value.normalize(), "f") if value else "0"


def _moment(value: str | None) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.timezone.utc)
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 date or time", param_hint="--at") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


@click.command("price")
@click.option("--model", required=True)
@click.option("--provider", default=None, help="inferred from the catalog when the model name is unique")
@click.option("--input-tokens", type=click.IntRange(min=0), required=True, help="the whole prompt, cache included")
@click.option("--output-tokens", type=click.IntRange(min=0), required=True, help="reasoning tokens included")
@click.option("--cached-input-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--cache-write-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--reasoning-tokens", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--tenant", default=None, help="apply this tenant's negotiated prices")
@click.option("--at", "at_text", default=None, help="price at this time (ISO-8601); default now")
@click.option("--catalog", "catalog_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="our YAML or LiteLLM's model_prices_and_context_window.json; default: settings, then bundled")
@FORMAT_OPTION
@click.pass_obj
def command(settings: Settings, model: str, provider: str | None, input_tokens: int, output_tokens: int,
            cached_input_tokens: int, cache_write_tokens: int, reasoning_tokens: int, tenant: str | None,
            at_text: str | None, catalog_path: Path | None, fmt: str) -> None:
    """Price one call: cost per token kind, total, and the catalog entry used."""
    from prismops.finops.pricing import CatalogError, load_catalog, price_tokens

    if cached_input_tokens + cache_write_tokens > input_tokens:
        fail("--cached-input-tokens + --cache-write-tokens must not exceed --input-tokens (it counts the whole prompt)")
    if reasoning_tokens > output_tokens:
        fail("--reasoning-tokens must not exceed --output-tokens (it counts reasoning too)")
    at = _moment(at_text)
    try:
        catalog = load_catalog(catalog_path or settings.pricing.catalog, settings.pricing.tenant_overrides)
    except (CatalogError, OSError, ValueError) as exc:
        fail(f"cannot load the price catalog: {exc}")
    quote = catalog.quote(provider, model, at, tenant)
    if quote is None:
        known = catalog.resolve(provider, model)
        why = "has no price in effect at that time" if known else "is not in the catalog"
        fail(f"{provider + '/' if provider else ''}{model} {why} ({catalog.version}); it would be flagged unpriced")
    cost = price_tokens(quote, input_tokens=input_tokens, output_tokens=output_tokens,
                        cached_input_tokens=cached_input_tokens, cache_write_tokens=cache_write_tokens,
                        reasoning_tokens=reasoning_tokens)
    per_million = quote.prices.per_million()
    tokens = {"input": input_tokens - cached_input_tokens - cache_write_tokens, "cache_read": cached_input_tokens,
              "cache_write": cache_write_tokens, "output": output_tokens - reasoning_tokens, "reasoning": reasoning_tokens}
    rows = [{"component": name, "tokens": tokens[name], "usd_per_mtok": exact_text(per_million[name]),
             "cost_usd": exact_text(cost.components[name])} for name in tokens]
    summary = {"provider": quote.provider, "model": quote.model, "at": at, "tenant": tenant,
               "price_version": quote.price_version, "effective_from": quote.effective_from,
               "override": quote.override, "cost_usd": cost.cost_usd}
    if fmt == "json":
        emit_json({**summary, "components": rows})
        return
    emit_table(rows, title=f"{quote.provider}/{quote.model} at {at:%Y-%m-%d %H:%M}Z")
    emit_table([summary], title="total (rounded once, half-even, to 12 decimal places)")
