"""PrismOps costs as a FOCUS 1.2 cost-and-usage CSV, so other FinOps tools can read them.

One row per UTC day and owner/thing (tenant, team, product, service, feature, environment, provider, model,
region, source, pricing unit, charge category) of one calendar month, summed exactly from `cost_lines FINAL`.
ServiceCategory is "AI and Machine Learning" throughout. Column choices, where FOCUS leaves them to the issuer:

- EffectiveCost is PrismOps's cost; BilledCost and ListCost are the bill's own for cloud lines and the same
  cost otherwise; ContractedCost is EffectiveCost (PrismOps prices are the negotiated rates).
- BillingAccountId/Name is the tenant (BillingAccountType "Tenant"), SubAccountId/Name the team (SubAccountType
  "Team"): two columns FOCUS 1.2 added, so a reader tells the file's version from its header; Tags carries every
  dimension as JSON.
- ProviderName/PublisherName is the model provider (the cluster for GPU lines); InvoiceIssuerName is the
  provider for LLM and cloud lines and "PrismOps" for GPU lines (internal chargeback, no outside invoice).
- ServiceName is "LLM Inference" or "GPU Compute" (the cloud bill's own service for cloud lines), SkuId is
  provider/model, ResourceId the GPU node or cloud resource.
- Amounts are written with their exact decimals (at most 12 places), never through a float.

Cloud lines came from a provider's own FOCUS file; they are left out unless asked for (`sources`), so a tool
that ingests both files does not count them twice.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from prismops.sinks.clickhouse import table_ref
from prismops.sinks.reports import month_range

FOCUS_VERSION = "1.2"
SERVICE_CATEGORY = "AI and Machine Learning"
COLUMNS = (
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingAccountId", "BillingAccountName",
    "BillingAccountType", "BillingCurrency", "BillingPeriodStart", "BillingPeriodEnd", "ChargeCategory", "ChargeClass", "ChargeDescription",
    "ChargeFrequency", "ChargePeriodStart", "ChargePeriodEnd", "ConsumedQuantity", "ConsumedUnit",
    "InvoiceIssuerName", "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "RegionId",
    "ResourceId", "ResourceName", "ResourceType", "ServiceCategory", "ServiceName", "ServiceSubcategory", "SkuId",
    "SubAccountId", "SubAccountName", "SubAccountType", "Tags", "x_PrismOpsSource", "x_PrismOpsLines", "x_PrismOpsUnpricedLines",
)
SOURCES = ("llm", "gpu", "cloud")
DEFAULT_SOURCES = ("llm", "gpu")
UNITS = {"token": "Tokens", "gpu_second": "GPU-Seconds"}
SERVICE_NAMES = {"llm": "LLM Inference", "gpu": "GPU Compute"}
SUBCATEGORIES = {"llm": "Generative AI", "gpu": "Machine Learning", "cloud": "Other (AI and Machine Learning)"}
CHARGE_CATEGORIES = {"usage": "Usage", "purchase": "Purchase", "tax": "Tax", "credit": "Credit",
                     "adjustment": "Adjustment"}


@dataclass(frozen=True)
class FocusExport:
    path: Path
    rows: int
    lines: int
    billed_cost_usd: Decimal
    effective_cost_usd: Decimal

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "cost_lines": self.lines,
                "billed_cost_usd": self.billed_cost_usd, "effective_cost_usd": self.effective_cost_usd}


def _timestamp(day: dt.date) -> str:
    return f"{day:%Y-%m-%d}T00:00:00Z"


def _amount(value: Decimal) -> str:
    text = format(Decimal(value).normalize(), "f")
    return "0" if text in ("-0", "") else text


def focus_rows(client: Any, database: str, month: str, *, sources: tuple[str, ...] = DEFAULT_SOURCES) -> list[dict[str, str]]:
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ValueError(f"sources {', '.join(unknown) or '(none)'}: use some of {', '.join(SOURCES)}")
    since, until = month_range(month)
    found = client.execute(
        f"""
        SELECT event_date, source, tenant, team, product, service, feature, environment, provider, model,
               ifNull(region, '') AS region_id, usage_unit, ifNull(charge_category, 'Usage') AS category,
               if(source = 'llm', '', ifNull(resource, '')) AS resource_id,
               sum(ifNull(billed_cost_usd, cost_usd)) AS billed, sum(cost_usd) AS effective,
               sum(ifNull(list_cost_usd, cost_usd)) AS listed, sum(usage_quantity) AS quantity,
               count() AS line_count, countIf(priced = 0) AS unpriced
        FROM {table_ref(database, "cost_lines")} FINAL
        WHERE event_date >= %(since)s AND event_date < %(until)s AND source IN %(sources)s
        GROUP BY event_date, source, tenant, team, product, service, feature, environment, provider, model,
                 region_id, usage_unit, category, resource_id
        ORDER BY event_date, source, tenant, team, product, service, feature, environment, provider, model,
                 region_id, usage_unit, category, resource_id
        """,
        {"since": since, "until": until, "sources": tuple(sources)},
    )
    rows = []
    for (day, source, tenant, team, product, service, feature, environment, provider, model, region, unit,
         category, resource, billed, effective, listed, quantity, lines, unpriced) in found:
        tags = {"tenant": tenant, "team": team, "product": product, "service": service, "feature": feature,
                "environment": environment}
        unit_name = UNITS.get(unit, unit)
        rows.append({
            "BilledCost": _amount(billed), "EffectiveCost": _amount(effective), "ListCost": _amount(listed),
            "ContractedCost": _amount(effective), "BillingAccountId": tenant, "BillingAccountName": tenant,
            "BillingAccountType": "Tenant", "SubAccountType": "Team",
            "BillingCurrency": "USD", "BillingPeriodStart": _timestamp(since), "BillingPeriodEnd": _timestamp(until),
            "ChargeCategory": CHARGE_CATEGORIES.get(category.lower(), category), "ChargeClass": "",
            "ChargeDescription": f"{SERVICE_NAMES.get(source, model)}: {provider}/{model} for {tenant}/{service}/{feature}",
            "ChargeFrequency": "Usage-Based",
            "ChargePeriodStart": _timestamp(day), "ChargePeriodEnd": _timestamp(day + dt.timedelta(days=1)),
            "ConsumedQuantity": _amount(quantity), "ConsumedUnit": unit_name,
            "InvoiceIssuerName": "PrismOps" if source == "gpu" else provider,
            "PricingQuantity": _amount(quantity), "PricingUnit": unit_name,
            "ProviderName": provider, "PublisherName": provider, "RegionId": region,
            "ResourceId": resource, "ResourceName": resource or "", "ResourceType": "GPU Node" if source == "gpu" else "",
            "ServiceCategory": SERVICE_CATEGORY, "ServiceName": SERVICE_NAMES.get(source, model),
            "ServiceSubcategory": SUBCATEGORIES[source], "SkuId": f"{provider}/{model}",
            "SubAccountId": team, "SubAccountName": team,
            "Tags": json.dumps(tags, sort_keys=True, separators=(",", ":")),
            "x_PrismOpsSource": source, "x_PrismOpsLines": str(lines), "x_PrismOpsUnpricedLines": str(unpriced),
        })
    return rows


def export_focus_month(
    client: Any, database: str, month: str, path: str | Path, *, sources: tuple[str, ...] = DEFAULT_SOURCES,
) -> FocusExport:
    """Write `month` ('YYYY-MM') as a FOCUS 1.2 CSV at `path` (replaced whole: written beside it, then renamed)."""
    rows = focus_rows(client, database, month, sources=sources)
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(target)
    return FocusExport(
        path=target, rows=len(rows), lines=sum(int(r["x_PrismOpsLines"]) for r in rows),
        billed_cost_usd=sum((Decimal(r["BilledCost"]) for r in rows), Decimal(0)),
        effective_cost_usd=sum((Decimal(r["EffectiveCost"]) for r in rows), Decimal(0)),
    )
