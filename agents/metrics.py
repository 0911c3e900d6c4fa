"""Prometheus metrics of the worker: what was priced, how well it was tagged, what was rejected.

Tag coverage per dimension is `prismops_tag_coverage_ratio` (explicit + inferred over all lines seen by
this worker), backed by the `prismops_cost_line_dimensions_total` counter for PromQL over many workers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

COST_LINES = PromCounter("prismops_cost_lines_total", "cost lines produced", ["source", "priced"])
UNPRICED = PromCounter("prismops_unpriced_cost_lines_total", "cost lines with no price found", ["provider", "model"])
DIMENSION_SOURCES = PromCounter(
    "prismops_cost_line_dimensions_total", "resolved dimensions by where the value came from", ["dimension", "tag_source"]
)
TAG_COVERAGE = Gauge("prismops_tag_coverage_ratio", "share of cost lines whose dimension is explicit or inferred",
                     ["dimension"])
CONTENT_FIELDS_DROPPED = PromCounter(
    "prismops_content_fields_dropped_total", "prompt/completion fields removed from incoming events", ["field"]
)
DEAD_LETTERED = PromCounter("prismops_dead_letters_total", "messages sent to the DLQ", ["stage", "rule"])


class TagCoverage:
    """Running coverage per dimension in this process."""

    def __init__(self) -> None:
        self.known: Counter[str] = Counter()
        self.total: Counter[str] = Counter()

    def record(self, tag_source: Mapping[str, str]) -> None:
        for dimension, source in tag_source.items():
            DIMENSION_SOURCES.labels(dimension, source).inc()
            self.total[dimension] += 1
            if source != "default":
                self.known[dimension] += 1
            TAG_COVERAGE.labels(dimension).set(self.known[dimension] / self.total[dimension])


tag_coverage = TagCoverage()


def record_cost_line(line: Mapping[str, object]) -> None:
    COST_LINES.labels(line["source"], "true" if line["priced"] else "false").inc()
    if not line["priced"]:
        UNPRICED.labels(line["provider"], line["model"]).inc()
    tag_coverage.record(line["tag_source"])  # type: ignore[arg-type]
