"""Resolve the cost dimensions of an event and record where each came from.

Every dimension is `explicit` (the event carried it), `inferred` (derived, e.g. team from the service
registry) or `default` (nothing known). Cost with no known owner goes to `unallocated`, never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

UNALLOCATED = "unallocated"


@dataclass(frozen=True)
class ServiceOwner:
    team: str
    product: str


@dataclass(frozen=True)
class ServiceRegistry:
    services: Mapping[str, ServiceOwner]

    def owner(self, service: str) -> ServiceOwner | None:
        return self.services.get(normalize(service))


def normalize(value: str) -> str:
    return " ".join(value.split()).lower()


def load_service_registry(path: Path | None = None) -> ServiceRegistry:
    text = path.read_text() if path else resources.files("agents").joinpath("service_registry.yaml").read_text()
    document = yaml.safe_load(text) or {}
    return ServiceRegistry({
        normalize(name): ServiceOwner(team=owner["team"], product=owner["product"])
        for name, owner in (document.get("services") or {}).items()
    })


def resolve_dimensions(event: Mapping[str, Any], registry: ServiceRegistry) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (dimensions, tag_source) for an LLM usage event."""
    dims: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name in ("tenant", "service", "feature", "provider", "model"):
        dims[name] = normalize(event[name])
        source[name] = "explicit"
    dims["environment"] = event["environment"]
    source["environment"] = "explicit"
    labels = event.get("labels") or {}
    owner = registry.owner(dims["service"])
    for name in ("team", "product"):
        if labels.get(name, "").strip():
            dims[name], source[name] = normalize(labels[name]), "explicit"
        elif owner is not None:
            dims[name], source[name] = getattr(owner, name), "inferred"
        else:
            dims[name], source[name] = UNALLOCATED, "default"
    customer = (event.get("customer") or "").strip()
    dims["customer"] = customer or None
    source["customer"] = "explicit" if customer else "default"
    return dims, source
