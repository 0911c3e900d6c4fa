"""NVIDIA DCGM exporter metrics -> usage.gpu.v1 events, one per (GPU or MIG slice, pod) and window.

Two ways in, one result (`GpuSeries`, a window's aggregate for one series):
  * the exporter's own `/metrics` page (Prometheus text exposition format), scraped every few seconds: each
    scrape is parsed by `parse_exposition` and added to a `WindowAccumulator`, which averages utilization,
    keeps peak and mean framebuffer use and counts in how many scrapes the series was present;
  * a Prometheus server that already scrapes the exporters: `avg_over_time`, `max_over_time` and
    `count_over_time` over the window, evaluated at the window's end (`prometheus_queries`), parsed by
    `series_from_prometheus`. A collector that was down catches up from Prometheus' history.

Metrics read: DCGM_FI_DEV_GPU_UTIL (percent, 0-100), DCGM_FI_PROF_GR_ENGINE_ACTIVE (ratio 0-1; preferred,
because it is also reported per MIG slice, where GPU_UTIL is not), DCGM_FI_DEV_FB_USED (MiB; per slice on
MIG), DCGM_FI_PROF_PIPE_TENSOR_ACTIVE and DCGM_FI_PROF_DRAM_ACTIVE (ratios, kept as labels). Labels read:
gpu, UUID, modelName, Hostname (or a `node`/`kubernetes_node` label added by the scrape config), pod,
namespace, container, GPU_I_PROFILE and GPU_I_ID (MIG).

Attribution: a series with a pod label is that pod's: requested GPU-seconds = window x GPU fraction x the
share of the window the series was present; used = requested x mean utilization. A GPU with no pod is idle and
produces no event (the worker's node inventory prices idle GPUs). The tenant is the namespace (the k8s collector
reads tenants and teams from pod labels instead).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from prismops.collectors.common import CollectorInputError, catalog_model, gpu_event, gpu_seconds, overlap_seconds, parse_decimal
from prismops.finops.gpu_pricing import GpuCatalog

UTIL = "DCGM_FI_DEV_GPU_UTIL"
GR_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
FB_USED = "DCGM_FI_DEV_FB_USED"
TENSOR_ACTIVE = "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"
DRAM_ACTIVE = "DCGM_FI_PROF_DRAM_ACTIVE"
METRICS = (UTIL, GR_ACTIVE, FB_USED, TENSOR_ACTIVE, DRAM_ACTIVE)
RATIO_METRICS = (GR_ACTIVE, TENSOR_ACTIVE, DRAM_ACTIVE)
NODE_LABELS = ("kubernetes_node", "node", "Hostname")
MIB = 2**20


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: Decimal


_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+(?P<ts>-?\d+))?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _labels(text: str, line_no: int) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text.strip()):
        match = _LABEL.match(text, position)
        if not match:
            raise CollectorInputError(f"line {line_no}", "label_syntax", f"cannot read labels at {text[position:position + 40]!r}")
        labels[match.group(1)] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], match.group(2))
        position = match.end()
    return labels


def parse_exposition(text: str, metrics: Iterable[str] = METRICS) -> list[Sample]:
    """The samples of `metrics` in a Prometheus text exposition page; other metrics are skipped unread."""
    wanted = set(metrics)
    samples = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(None, 1)[0]
        if name not in wanted:
            continue
        match = _LINE.match(line)
        if not match:
            raise CollectorInputError(f"line {line_no}", "exposition_syntax", f"not a sample line: {line[:80]!r}")
        raw = match.group("value")
        if raw in ("NaN", "+Inf", "-Inf"):
            continue  # the exporter had no value for the field this scrape
        samples.append(Sample(name, _labels(match.group("labels") or "", line_no), parse_decimal(f"{name} (line {line_no})", raw)))
    return samples


@dataclass(frozen=True)
class SeriesKey:
    node: str
    gpu: int
    mig_instance: str | None
    namespace: str | None
    pod: str | None
    container: str | None


def series_key(labels: Mapping[str, str], where: str) -> SeriesKey:
    node = next((labels[n] for n in NODE_LABELS if labels.get(n)), None)
    if node is None:
        raise CollectorInputError(f"{where}.Hostname", "required", "a DCGM series needs a Hostname (or node) label")
    raw_gpu = labels.get("gpu")
    if raw_gpu is None or not raw_gpu.isdigit():
        raise CollectorInputError(f"{where}.gpu", "gpu_index", f"the gpu label must be a GPU index, got {raw_gpu!r}")
    return SeriesKey(node, int(raw_gpu), labels.get("GPU_I_ID") or None, labels.get("namespace") or None,
                     labels.get("pod") or None, labels.get("container") or None)


@dataclass
class GpuSeries:
    """One series' aggregate over a window: utilization as a ratio, framebuffer use in MiB, presence 0..1."""

    key: SeriesKey
    labels: dict[str, str]
    utilization: Decimal | None = None
    utilization_metric: str | None = None
    fb_used_peak_mib: Decimal = Decimal(0)
    fb_used_mean_mib: Decimal = Decimal(0)
    presence: Decimal = Decimal(1)
    ratios: dict[str, Decimal] = field(default_factory=dict)

    @property
    def mig_profile(self) -> str | None:
        return self.labels.get("GPU_I_PROFILE") or None


def _ratio(name: str, value: Decimal, where: str) -> Decimal:
    if name == UTIL:
        if not 0 <= value <= 100:
            raise CollectorInputError(f"{where}.{UTIL}", "percent_0_100", f"GPU utilization must be 0-100 %, got {value}")
        return value / 100
    if not 0 <= value <= 1:
        raise CollectorInputError(f"{where}.{name}", "ratio_0_1", f"must be a ratio from 0 to 1, got {value}")
    return value


class WindowAccumulator:
    """Scrapes of one window, aggregated per series like Prometheus' *_over_time functions would."""

    def __init__(self) -> None:
        self.scrapes = 0
        self._labels: dict[SeriesKey, dict[str, str]] = {}
        self._sums: dict[tuple[SeriesKey, str], Decimal] = {}
        self._counts: dict[tuple[SeriesKey, str], int] = {}
        self._peaks: dict[SeriesKey, Decimal] = {}

    def add(self, samples: Iterable[Sample]) -> None:
        self.scrapes += 1
        for index, sample in enumerate(samples):
            key = series_key(sample.labels, f"sample {index}")
            self._labels.setdefault(key, dict(sample.labels))
            value = sample.value
            if sample.name != FB_USED:
                value = _ratio(sample.name, value, f"sample {index}")
            elif value < 0:
                raise CollectorInputError(f"sample {index}.{FB_USED}", "non_negative", f"must be >= 0 MiB, got {value}")
            else:
                self._peaks[key] = max(self._peaks.get(key, Decimal(0)), value)
            self._sums[(key, sample.name)] = self._sums.get((key, sample.name), Decimal(0)) + value
            self._counts[(key, sample.name)] = self._counts.get((key, sample.name), 0) + 1

    def series(self) -> list[GpuSeries]:
        result = []
        for key, labels in self._labels.items():
            means = {name: self._sums[(key, name)] / self._counts[(key, name)]
                     for name in METRICS if (key, name) in self._counts}
            present = max((self._counts.get((key, name), 0) for name in METRICS), default=0)
            result.append(_series(key, labels, means, self._peaks.get(key, Decimal(0)),
                                  Decimal(present) / Decimal(max(self.scrapes, 1))))
        return result


def _series(key: SeriesKey, labels: dict[str, str], means: Mapping[str, Decimal], peak: Decimal,
            presence: Decimal) -> GpuSeries:
    series = GpuSeries(key, labels, presence=min(Decimal(1), presence), fb_used_peak_mib=peak,
                       fb_used_mean_mib=means.get(FB_USED, Decimal(0)))
    for name in (GR_ACTIVE, UTIL):  # the profiling ratio first: it is the one MIG slices report
        if name in means:
            series.utilization, series.utilization_metric = means[name], name
            break
    series.ratios = {name: means[name] for name in RATIO_METRICS if name in means}
    return series


def prometheus_queries(window_s: int) -> dict[str, str]:
    """PromQL evaluated at a window's end, each giving one aggregate per series over the window."""
    span = f"[{window_s}s]"
    queries = {f"avg:{name}": f"avg_over_time({name}{span})" for name in METRICS}
    queries[f"max:{FB_USED}"] = f"max_over_time({FB_USED}{span})"
    queries["count"] = f"count_over_time({UTIL}{span}) or count_over_time({GR_ACTIVE}{span})"
    return queries


def _vector(query: str, document: Any) -> list[tuple[dict[str, str], Decimal]]:
    if not isinstance(document, Mapping) or document.get("status") != "success":
        error = document.get("error") if isinstance(document, Mapping) else None
        raise CollectorInputError(f"{query}.status", "success", f"Prometheus answered {error or 'no success status'}")
    data = document.get("data") or {}
    if data.get("resultType") != "vector":
        raise CollectorInputError(f"{query}.data.resultType", "vector", f"expected an instant vector, got {data.get('resultType')!r}")
    rows = []
    for index, item in enumerate(data.get("result") or []):
        try:
            labels, value = dict(item["metric"]), item["value"][1]
        except (KeyError, IndexError, TypeError):
            raise CollectorInputError(f"{query}.data.result[{index}]", "metric_and_value", "needs metric and value") from None
        if value in ("NaN", "+Inf", "-Inf"):
            continue
        rows.append((labels, parse_decimal(f"{query}.data.result[{index}].value", value)))
    return rows


def series_from_prometheus(answers: Mapping[str, Any], expected_samples: int | None = None) -> list[GpuSeries]:
    """Series from the answers (JSON documents of /api/v1/query) to `prometheus_queries`, keyed like it.

    Presence is the series' sample count over the highest count of any series in the window (or over
    `expected_samples`, the window divided by the scrape interval, when known)."""
    labels_of: dict[SeriesKey, dict[str, str]] = {}
    values: dict[tuple[SeriesKey, str], Decimal] = {}
    for query, document in answers.items():
        for index, (labels, value) in enumerate(_vector(query, document)):
            key = series_key(labels, f"{query}.data.result[{index}].metric")
            labels_of.setdefault(key, labels)
            values[(key, query)] = value
    counts = {key: values.get((key, "count"), Decimal(0)) for key in labels_of}
    most = Decimal(expected_samples) if expected_samples else max(counts.values(), default=Decimal(0))
    result = []
    for key, labels in labels_of.items():
        means = {}
        for name in METRICS:
            if (key, f"avg:{name}") in values:
                raw = values[(key, f"avg:{name}")]
                means[name] = raw if name == FB_USED else _ratio(name, raw, f"avg:{name}")
        presence = counts[key] / most if most else Decimal(1)
        result.append(_series(key, labels, means, values.get((key, f"max:{FB_USED}"), Decimal(0)), presence))
    return result


def _fraction(catalog: GpuCatalog, model: str, profile: str | None) -> Fraction:
    return Fraction(1) if profile is None else catalog.mig_fraction(model, profile)


def dcgm_events(
    series: Iterable[GpuSeries], window_start: dt.datetime, window_end: dt.datetime, *, cluster: str,
    catalog: GpuCatalog, capacity_type: str = "on_demand", model_overrides: Mapping[str, str] | None = None,
    tenant_of: Callable[[GpuSeries], str | None] | None = None, source: str = "dcgm",
) -> list[dict[str, Any]]:
    """usage.gpu.v1 events for the series that belong to a pod; idle GPUs (no pod label) produce none."""
    seconds = overlap_seconds(window_start, window_end, window_start, window_end)
    events = []
    for item in sorted(series, key=lambda s: (s.key.node, s.key.gpu, s.key.mig_instance or "", s.key.pod or "")):
        if not item.key.pod:
            continue
        model = catalog_model(item.labels.get("modelName"), model_overrides)
        fraction = _fraction(catalog, model, item.mig_profile)
        requested = gpu_seconds(seconds, fraction, item.presence)
        used = gpu_seconds(seconds, fraction, item.presence * (item.utilization or Decimal(0)))
        tenant = (tenant_of(item) if tenant_of else None) or item.key.namespace or "unknown"
        labels = {
            "pod": item.key.pod, "container": item.key.container or "", "gpu_uuid": item.labels.get("UUID", ""),
            "model_name": item.labels.get("modelName", ""), "mig_instance": item.key.mig_instance or "",
            "utilization_metric": item.utilization_metric or "none",
            "fb_used_peak_mib": format(item.fb_used_peak_mib.normalize(), "f"),
            "fb_used_mean_mib": format(item.fb_used_mean_mib.quantize(Decimal("0.001")).normalize(), "f"),
            **{name.removeprefix("DCGM_FI_PROF_").lower(): format(value.quantize(Decimal("0.0001")), "f")
               for name, value in item.ratios.items()},
        }
        events.append(gpu_event(
            source=source, window_start=window_start, window_end=window_end, cluster=cluster, node=item.key.node,
            gpu_model=model, gpu_index=item.key.gpu, fraction=fraction, mig_profile=item.mig_profile,
            capacity_type=capacity_type, tenant=tenant, team=None, namespace=item.key.namespace,
            job=item.key.pod, requested=requested, used=used,
            memory_bytes=math.floor(item.fb_used_peak_mib * MIB), labels=labels,
            id_parts=(item.key.mig_instance, item.key.namespace, item.key.pod, item.key.container),
        ))
    return events
