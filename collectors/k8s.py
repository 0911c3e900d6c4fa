"""Kubernetes pods (the API server's PodList JSON, `kubectl get pods -A -o json`) joined to DCGM usage by pod.

A pod's GPU request is the sum over its containers of `nvidia.com/gpu` (whole GPUs) and `nvidia.com/mig-<profile>`
(MIG slices, e.g. nvidia.com/mig-1g.10gb) in resources.limits or resources.requests (extended resources must
be equal in both). Only pods scheduled on a node and not finished count.

The join: DCGM series carry the pod's namespace and name; each series of a GPU-requesting pod becomes an event
whose tenant and team come from the pod's labels (`prismops.dev/tenant`, `prismops.dev/team`, falling back to
the namespace), whose job is the owning controller (Job, ReplicaSet, ...) or the pod's name. Pods that request
GPUs but have no DCGM series in the window are returned as `unmatched` (exporter missing on the node, or the
pod-resources mapping is off) so a person can look; GPU series whose pod is not in the list are returned too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prismops.collectors.common import CollectorInputError, parse_decimal
from prismops.collectors.dcgm import GpuSeries, dcgm_events
from prismops.finops.gpu_pricing import GpuCatalog

GPU_RESOURCE = "nvidia.com/gpu"
MIG_PREFIX = "nvidia.com/mig-"
TENANT_LABEL = "prismops.dev/tenant"
TEAM_LABEL = "prismops.dev/team"
ACTIVE_PHASES = frozenset({"Pending", "Running", "Unknown"})


@dataclass
class PodGpus:
    namespace: str
    name: str
    node: str | None
    phase: str
    gpus: int = 0
    mig: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    owner: str | None = None

    @property
    def tenant(self) -> str:
        return self.labels.get(TENANT_LABEL) or self.namespace

    @property
    def team(self) -> str | None:
        return self.labels.get(TEAM_LABEL)


def _count(value: Any, where: str) -> int:
    number = parse_decimal(where, value)
    if number < 0 or number != number.to_integral_value():
        raise CollectorInputError(where, "whole_devices", f"GPU and MIG requests are whole devices, got {value!r}")
    return int(number)


def parse_pod_list(document: Any) -> list[PodGpus]:
    """The pods of a PodList that request GPUs or MIG slices."""
    if not isinstance(document, Mapping) or document.get("kind") != "PodList" or not isinstance(document.get("items"), list):
        raise CollectorInputError("kind", "pod_list", "expected a Kubernetes PodList (kind: PodList, items: [...])")
    pods = []
    for index, item in enumerate(document["items"]):
        metadata, spec, status = item.get("metadata") or {}, item.get("spec") or {}, item.get("status") or {}
        where = f"items[{index}]"
        if not metadata.get("name") or not metadata.get("namespace"):
            raise CollectorInputError(f"{where}.metadata.name", "required", "every pod has a name and a namespace")
        pod = PodGpus(metadata["namespace"], metadata["name"], spec.get("nodeName"), status.get("phase") or "Unknown",
                      labels=dict(metadata.get("labels") or {}))
        owners = [o for o in metadata.get("ownerReferences") or [] if o.get("controller")]
        pod.owner = f"{owners[0].get('kind')}/{owners[0].get('name')}" if owners else None
        for c_index, container in enumerate(spec.get("containers") or []):
            resources = container.get("resources") or {}
            amounts = {**(resources.get("requests") or {}), **(resources.get("limits") or {})}
            for name, value in amounts.items():
                field_name = f"{where}.spec.containers[{c_index}].resources.{name}"
                if name == GPU_RESOURCE:
                    pod.gpus += _count(value, field_name)
                elif name.startswith(MIG_PREFIX):
                    profile = name.removeprefix(MIG_PREFIX)
                    pod.mig[profile] = pod.mig.get(profile, 0) + _count(value, field_name)
        if pod.gpus or pod.mig:
            pods.append(pod)
    return pods


@dataclass
class JoinResult:
    events: list[dict[str, Any]]
    unmatched_pods: list[PodGpus]
    unknown_series: list[GpuSeries]


def k8s_events(
    pods: Iterable[PodGpus], series: Iterable[GpuSeries], window_start: dt.datetime, window_end: dt.datetime, *,
    cluster: str, catalog: GpuCatalog, capacity_type: str = "on_demand",
    model_overrides: Mapping[str, str] | None = None,
) -> JoinResult:
    active = {(p.namespace, p.name): p for p in pods if p.node and p.phase in ACTIVE_PHASES}
    matched, unknown, seen = [], [], set()
    for item in series:
        if not item.key.pod:
            continue
        pod = active.get((item.key.namespace, item.key.pod))
        if pod is None:
            unknown.append(item)
            continue
        seen.add((pod.namespace, pod.name))
        matched.append(item)
    events = dcgm_events(matched, window_start, window_end, cluster=cluster, catalog=catalog,
                         capacity_type=capacity_type, model_overrides=model_overrides, source="k8s",
                         tenant_of=lambda s: active[(s.key.namespace, s.key.pod)].tenant)
    for event in events:
        pod = active[(event["namespace"], event["labels"]["pod"])]
        event["team"] = pod.team
        event["job"] = pod.owner or pod.name
        event["labels"]["requested"] = ",".join(
            ([f"gpu={pod.gpus}"] if pod.gpus else []) + [f"mig-{p}={n}" for p, n in sorted(pod.mig.items())])
    unmatched = [p for key, p in sorted(active.items()) if key not in seen]
    return JoinResult(events, unmatched, unknown)
