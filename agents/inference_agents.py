"""Faust agents for self-hosted inference pools: thin shells around `prismops.finops.inference_windows`.

route_inference_lines:     cost.lines.v1 → the LLM lines of models an inference pool serves, as one batch per pool,
                           keyed by pool → prismops.inference-lines.v1 (the repartition: lines are keyed by tenant)
count_inference_tokens:    prismops.inference-lines.v1 → tokens per tenant in the pool's window state
take_inference_node_costs: prismops.inference-node-windows.v1 (gpu_agents sends one allocation of every closed
                           node window of a pool's nodes, keyed by pool) → node costs in the same state
split_inference_pools:     timer: windows due → `inference_tenant` allocations (tokens, $ per million tokens)
                           → cost.allocations.v1, which the sink stores in gpu_allocations

Both repartitioned topics are keyed by the inference pool name and have the same partition count, so a pool's
lines and node windows arrive on the same partition; its state (`inference_pool_windows`, plain JSON per pool)
has a changelog co-partitioned with them and is restored after a restart. Replays are counted once: lines by
their batch identity per window, node windows by node. As in gpu_agents, a closing window's allocations are
published and awaited before the state that says "closed" is stored: a crash in between splits the window
again with the same deterministic allocation ids, which the sink dedupes.

Registered only when `gpu.inference_pools` names a file: no pools, no extra hop on cost.lines.v1.
"""

from __future__ import annotations

import asyncio
import json
import logging

import faust
from prometheus_client import Counter as PromCounter

from prismops.agents.context import WorkerContext, utcnow
from prismops.finops.gpu_allocation import InferencePool, load_inference_pools
from prismops.finops.inference_windows import InferenceWindows
from prismops.errors import FieldRuleError
from prismops.streams.codecs import CodecError, batch_codec_for, codec_for
from prismops.streams.partitioning import KeyPartitioner
from prismops.streams.topics import COST_LINES, GPU_ALLOCATIONS, INFERENCE_LINES, INFERENCE_NODE_WINDOWS

log = logging.getLogger(__name__)

STATE_TABLE = "inference_pool_windows"
CLOSE_CHECK_S = 5.0
LATE_INPUT = PromCounter("prismops_inference_late_total",
                         "inference-pool input whose window had been split already", ["input"])
SPLIT_WINDOWS = PromCounter("prismops_inference_windows_total", "inference-pool windows split by tokens", ["pool"])


def pools_serving(pools: tuple[InferencePool, ...], provider: str, model: str) -> InferencePool | None:
    """The pool that serves a self-hosted model (the first one, if a file names it twice)."""
    return next((pool for pool in pools if pool.serves(provider, model)), None)


def register(ctx: WorkerContext) -> None:
    settings, gpu = ctx.settings, ctx.settings.gpu
    pools = {pool.name: pool for pool in load_inference_pools(gpu.inference_pools)}
    if not pools:
        return
    ordered = tuple(pools.values())
    cost_topic, lines_topic = ctx.topic(COST_LINES), ctx.topic(INFERENCE_LINES)
    nodes_topic, allocations_topic = ctx.topic(INFERENCE_NODE_WINDOWS), ctx.topic(GPU_ALLOCATIONS)
    lines_topic_name = INFERENCE_LINES.name(settings)
    lines_codec, allocation_codec = batch_codec_for(COST_LINES.schema), codec_for(GPU_ALLOCATIONS.schema)
    pool_partition = KeyPartitioner(INFERENCE_LINES.partitions or settings.kafka.default_partitions)
    table = ctx.table(STATE_TABLE, help="inference pool windows: node costs and tokens (JSON)")
    state_lock = asyncio.Lock()

    def windows_of(pool: InferencePool, partition: int) -> InferenceWindows:
        """The pool's state to change: a copy, so a change refused by `store` leaves the table as it was."""
        stored = table.get(pool.name)
        if stored:
            return InferenceWindows(pool, json.loads(json.dumps(stored)), gpu.window_s, gpu.grace_s,
                                    gpu.inference_node_wait_s)
        return InferenceWindows.new(pool, partition, window_s=gpu.window_s, grace_s=gpu.grace_s,
                                    node_wait_s=gpu.inference_node_wait_s)

    def store(windows: InferenceWindows, *, in_stream: bool) -> None:
        size = len(json.dumps(windows.state)) + len(windows.pool.name)
        if size > settings.kafka.max_message_bytes:
            raise FieldRuleError(None, "state_max_bytes",
                                 f"inference pool {windows.pool.name}'s open windows would take {size} bytes, over "
                                 f"the {settings.kafka.max_message_bytes}-byte record limit")
        if in_stream:
            table[windows.pool.name] = windows.state
        else:  # outside stream iteration Faust cannot pick the changelog partition itself: it is the pool's
            table.data[windows.pool.name] = windows.state
            table.send_changelog(windows.state["partition"], windows.pool.name, windows.state)

    @ctx.app.agent(cost_topic)
    async def route_inference_lines(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, "worker.route_inference_lines"):
                try:
                    decoded = ctx.decode_batch(event, COST_LINES.schema)
                except CodecError:
                    continue  # the budget agent dead-letters an unreadable record; one letter is enough
                by_pool: dict[str, list[dict]] = {}
                for item in decoded.items:
                    line = item.value
                    if line is None or line.get("source") != "llm":
                        continue
                    pool = pools_serving(ordered, line["provider"], line["model"])
                    if pool is not None:
                        by_pool.setdefault(pool.name, []).append(line)
                message = event.message
                origin = f"{decoded.origin or message.topic}>{message.partition}"
                position = decoded.position if decoded.origin is not None else message.offset
                for name, group in sorted(by_pool.items()):
                    value = lines_codec.encode(group, origin=origin, position=position or 0)
                    await ctx.send(event, lines_topic, key=name.encode(), value=value, partition=pool_partition(name))

    @ctx.app.agent(lines_topic)
    async def count_inference_tokens(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, "worker.count_inference_tokens"):
                pool = pools.get((event.message.key or b"").decode("utf-8", "replace"))
                if pool is None:
                    continue  # a pool removed from the file since the line was routed
                decoded = ctx.decode_batch(event, COST_LINES.schema)
                lines = [item.value for item in decoded.items if item.value is not None]
                async with state_lock:
                    windows = windows_of(pool, event.message.partition)
                    windows.add_lines(lines, f"{decoded.origin}@{decoded.position}", arrived_at=utcnow())
                    if windows.late_lines:
                        LATE_INPUT.labels("lines").inc(windows.late_lines)
                        log.warning("inference pool %s: %d line(s) came after their window was split",
                                    pool.name, windows.late_lines)
                    store(windows, in_stream=True)

    @ctx.app.agent(nodes_topic)
    async def take_inference_node_costs(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, "worker.take_inference_node_costs"):
                pool = pools.get((event.message.key or b"").decode("utf-8", "replace"))
                if pool is None:
                    continue
                allocation = allocation_codec.decode(event.value)
                async with state_lock:
                    windows = windows_of(pool, event.message.partition)
                    windows.add_node_window(allocation, arrived_at=utcnow())
                    if windows.late_node_windows:
                        LATE_INPUT.labels("node_windows").inc(windows.late_node_windows)
                        log.warning("inference pool %s: node window %s/%s %s came after the split", pool.name,
                                    allocation["cluster"], allocation["node"], allocation["window_start"].isoformat())
                    store(windows, in_stream=True)

    @ctx.app.timer(interval=CLOSE_CHECK_S)
    async def split_inference_pools() -> None:
        async with ctx.timer_guard("worker.split_inference_pools"):
            app = ctx.app
            if app.rebalancing or not app.tables.recovery.completed.is_set():
                return
            assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == lines_topic_name}
            async with state_lock:
                for name, stored in list(table.data.items()):
                    pool = pools.get(name)
                    if pool is None or not stored or stored.get("partition") not in assigned:
                        continue
                    windows = InferenceWindows(pool, json.loads(json.dumps(stored)), gpu.window_s, gpu.grace_s,
                                               gpu.inference_node_wait_s)
                    closed = windows.close_due(utcnow())
                    if not closed:
                        continue
                    pending = []
                    for window in closed:
                        for record in window.allocations:
                            value = allocation_codec.encode(record)
                            ctx.check_size(allocations_topic, name.encode(), value)
                            pending.append(await allocations_topic.send(key=name.encode(), value=value, force=True))
                        SPLIT_WINDOWS.labels(name).inc()
                        log.info("inference pool %s window %s: %d node(s), %d share(s)", name,
                                 window.window_start.isoformat(), window.nodes_reported, len(window.allocations))
                    for delivery in pending:
                        await delivery
                    store(windows, in_stream=False)

