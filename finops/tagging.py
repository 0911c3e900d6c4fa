"""Resolve the cost dimensions of an event and record where each value came from.

Values are normalized (trimmed, inner spaces collapsed, lower-cased) and then mapped through the
registry's aliases. Each dimension is `explicit` (the event carried it), `inferred` (derived: team and
product from the service registry, feature from the service's default, provider from the price catalog)
or `default` (nothing known). Cost with no known owner goes to `unallocated`, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

UNALLOCATED = "unallocated"
UNSPECIFIED = "unspecified"
DIMENSIONS = ("tenant", "team", "product", "service", "feature", "customer", "environment", "provider", "model")


@dataclass(frozen=True)
class ServiceOwner:
    team: str
    product: str
    default_feature: str | None = None


@dataclass(frozen=True)
class ServiceRegistry:
    services: Mapping[str, ServiceOwner]
    aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def canonical(self, dimension: str, value: str) -> str:
        value = normalize(value)
        return self.aliases.get(dimension, {}).get(value, value)

    def owner(self, service: str) -> ServiceOwner | None:
        return self.services.get(self.canonical("service", service))


def normalize(value: str) -> str:
    return " ".join(value.split()).lower()


def load_service_registry(path: Path | None = None) -> ServiceRegistry:
    text = path.read_text() if path else resources.files("prismops.finops").joinpath("service_registry.yaml").read_text()
    document = yaml.safe_load(text) or {}
    services = {}
    for name, owner in (document.get("services") or {}).items():
        if not owner or not owner.get("team") or not owner.get("product"):
            raise ValueError(f"service registry: {name} needs a team and a product")
        default_feature = owner.get("default_feature")
        services[normalize(name)] = ServiceOwner(
            normalize(owner["team"]), normalize(owner["product"]), normalize(default_feature) if default_feature else None
        )
    aliases = {
        dimension: {normalize(alias): normalize(target) for alias, target in (mapping or {}).items()}
        for dimension, mapping in (document.get("aliases") or {}).items()
    }
    return ServiceRegistry(services, aliases)


def resolve_dimensions(
    event: Mapping[str, Any],
    registry: ServiceRegistry,
    infer_provider: Callable[[str], str | None] = lambda model: None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (dimensions, tag_source) for an LLM usage event."""
    dims: dict[str, Any] = {}
    source: dict[str, str] = {}
    labels = event.get("labels") or {}

    def given(name: str) -> str:
        return registry.canonical(name, str(event.get(name) or labels.get(name) or ""))

    for name in ("tenant", "service"):
        value = given(name)
        dims[name], source[name] = (value, "explicit") if value else (UNALLOCATED, "default")
    dims["model"], source["model"] = given("model"), "explicit"
    provider = given("provider")
    if provider:
        dims["provider"], source["provider"] = provider, "explicit"
    elif (inferred := infer_provider(dims["model"])) is not None:
        dims["provider"], source["provider"] = inferred, "inferred"
    else:
        dims["provider"], source["provider"] = "unknown", "default"
    dims["environment"], source["environment"] = event["environment"], "explicit"

    owner = registry.owner(dims["service"])
    for name in ("team", "product"):
        value = registry.canonical(name, str(labels.get(name) or ""))
        if value:
            dims[name], source[name] = value, "explicit"
        elif owner is not None:
            dims[name], source[name] = getattr(owner, name), "inferred"
        else:
            dims[name], source[name] = UNALLOCATED, "default"
    feature = given("feature")
    if feature:
        dims["feature"], source["feature"] = feature, "explicit"
    elif owner is not None and owner.default_feature:
        dims["feature"], source["feature"] = owner.default_feature, "inferred"
    else:
        dims["feature"], source["feature"] = UNSPECIFIED, "default"
    customer = (event.get("customer") or "").strip()
    dims["customer"], source["customer"] = (customer, "explicit") if customer else (None, "default")
    return dims, source


def tag_key(event: Mapping[str, Any]) -> tuple[Any, ...]:
    """Every value `resolve_dimensions` reads of an event: events with equal keys get equal dimensions."""
    labels = event.get("labels") or {}
    return (event.get("tenant"), event.get("service"), event.get("model"), event.get("provider"), event.get("feature"),
            event.get("environment"), event.get("customer"), tuple(sorted(labels.items())) if labels else ())
