"""An inference pool's open windows: the node pool-windows' costs and the tokens its models served, per tenant.

The worker joins two streams keyed by inference pool (agents/inference_agents.py): the allocation records of
closed GPU node windows of the pool's nodes, and the LLM cost lines of the models the pool serves. Both land in
one plain-JSON state per pool (a Faust table value, so its changelog restores it), built here without I/O:

- `add_node_window(allocation, arrived_at=)`: a node's pool-window cost for one window (the same record again
  is a no-op).
- `add_lines(lines, batch_id, arrived_at=)`: tokens per tenant of the lines' windows; a batch id seen before in a
  window is not counted again (a replay after a crash, or a partition read again).
- `close_due(now)`: windows whose nodes have all reported and whose end is `grace_s` behind the clock; a window
  whose nodes never all report closes `node_wait_s` after the later of that and its first input's arrival. The
  wait counts from the arrival because a node's window comes only once the GPU agent closed it: for a window
  long past (a backfill, a replay), an event-time wait would split it before its nodes could report. What closes is split by
  `gpu_allocation.inference_allocations` (exact, largest remainder) and remembered for a day, so a line or
  node window that comes after is counted as late instead of opening the window again.

Windows are the GPU windows (`gpu.window_s`, aligned to the epoch), so a node window and the lines of the
same hour meet in the same state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prismops.finops.gpu_allocation import InferencePool, inference_allocations
from prismops.finops.gpu_windows import MICROS, from_micros, to_micros, window_bounds

CLOSED_KEPT_S = 86_400
"""How long a closed window is remembered, so late input is counted as late."""
NODE_FIELDS = ("cluster", "node", "pool", "kind", "pool_cost_usd", "gpu_model", "capacity_type", "price_version",
               "late")


@dataclass(frozen=True)
class ClosedInferenceWindow:
    pool: InferencePool
    window_start: dt.datetime
    window_end: dt.datetime
    allocations: list[dict[str, Any]]
    nodes_reported: int


@dataclass
class InferenceWindows:
    """One pool's state (`state` is what the table stores)."""

    pool: InferencePool
    state: dict[str, Any]
    window_s: int
    grace_s: int
    node_wait_s: int
    late_lines: int = field(default=0)
    late_node_windows: int = field(default=0)

    @classmethod
    def new(cls, pool: InferencePool, partition: int, *, window_s: int, grace_s: int,
            node_wait_s: int) -> "InferenceWindows":
        return cls(pool, {"partition": partition, "windows": {}, "closed": {}}, window_s, grace_s, node_wait_s)

    def _window(self, start_us: int, arrived_at: dt.datetime) -> dict[str, Any] | None:
        """The open window starting at `start_us` (opened now if new); None if it closed already."""
        key = str(start_us)
        if key in self.state["closed"]:
            return None
        return self.state["windows"].setdefault(key, {
            "start_us": start_us, "end_us": start_us + self.window_s * MICROS, "opened_us": to_micros(arrived_at),
            "nodes": {}, "tokens": {}, "batches": [],
        })

    def add_node_window(self, allocation: Mapping[str, Any], *, arrived_at: dt.datetime) -> bool:
        """A node pool-window's allocation record (any one of its window: they share the pool cost); False if
        the node is not in this pool or its window closed already."""
        if not self.pool.has_node(allocation["cluster"], allocation["node"]):
            return False
        start_us = to_micros(allocation["window_start"])
        window = self._window(start_us, arrived_at)
        if window is None:
            self.late_node_windows += 1
            return False
        node = {name: allocation[name] for name in NODE_FIELDS}
        node["pool_cost_usd"] = str(node["pool_cost_usd"])
        window["nodes"].setdefault(f"{allocation['cluster']}/{allocation['node']}", node)
        return True

    def add_lines(self, lines: Iterable[Mapping[str, Any]], batch_id: str, *, arrived_at: dt.datetime) -> int:
        """Count the tokens of the lines the pool serves; returns how many lines counted (0 for a batch id a
        window has seen)."""
        by_window: dict[int, list[Mapping[str, Any]]] = {}
        for line in lines:
            if line.get("source") != "llm" or not self.pool.serves(line["provider"], line["model"]):
                continue
            start_us, _ = window_bounds(to_micros(line["event_time"]), self.window_s)
            by_window.setdefault(start_us, []).append(line)
        counted = 0
        for start_us, group in sorted(by_window.items()):
            window = self._window(start_us, arrived_at)
            if window is None:
                self.late_lines += len(group)
                continue
            if batch_id in window["batches"]:
                continue
            window["batches"].append(batch_id)
            tokens = window["tokens"]
            for line in group:
                tokens[line["tenant"]] = tokens.get(line["tenant"], 0) + int(line["input_tokens"]) + int(
                    line["output_tokens"])
            counted += len(group)
        return counted

    def close_due(self, now: dt.datetime) -> list[ClosedInferenceWindow]:
        """Split and forget every window that is due; windows without any node cost close with no records."""
        now_us = to_micros(now)
        closed = []
        for key, window in sorted(self.state["windows"].items(), key=lambda item: item[1]["start_us"]):
            settled_us = window["end_us"] + self.grace_s * MICROS
            settled = now_us >= settled_us
            waited = now_us >= max(settled_us, window.get("opened_us", 0)) + self.node_wait_s * MICROS
            complete = len(window["nodes"]) >= len(self.pool.nodes)
            if not (settled and (complete or waited)):
                continue
            start, end = from_micros(window["start_us"]), from_micros(window["end_us"])
            nodes = [{**node, "window_start": start} for node in window["nodes"].values()]
            records = inference_allocations(self.pool, start, end, nodes, window["tokens"]) if nodes else []
            closed.append(ClosedInferenceWindow(self.pool, start, end, records, len(nodes)))
            del self.state["windows"][key]
            self.state["closed"][key] = window["end_us"]
        for key, end_us in list(self.state["closed"].items()):
            if now_us - end_us > CLOSED_KEPT_S * MICROS:
                del self.state["closed"][key]
        return closed
