"""Faust agents for GPU usage: thin shells around `prismops.finops.gpu_windows` and `prismops.finops.gpu_allocation`.

attribute_gpu_usage:      usage.gpu.v1 (keyed cluster/node) → validate → pool window state | DLQ;
                          windows the watermark passed → cost.allocations.v1 + cost.lines.v1
close_quiet_gpu_windows:  timer: windows closed by processing time → the same outputs

Pool state (open windows, watermark, last applied offset) lives in the Faust table `gpu_pool_windows`, keyed
by pool, as plain JSON, with a changelog co-partitioned with usage.gpu.v1: a restarted worker recovers its open
windows. Faust flushes the changelog before it commits source offsets.

Why a closing window's output is published and awaited BEFORE the pool state is stored, instead of being
attached to the source offset with `event.send`: the state write goes to the changelog right away, attached
sends only at the next commit. Had the worker died in between, the recovered state would say "closed", the
replayed event would be skipped as already applied, and the window's allocations would be lost. Published
first, a crash before the state is stored makes the window close again on replay with the same deterministic
ids, which the sink dedupes. Dead letters stay attached to their event (`ctx.dead_letter`).

The agent and the timer both read-modify-write pool state across awaits, so they take one asyncio lock.

A closed window of a node that belongs to an inference pool (`gpu.inference_pools`) also sends one of its
allocation records (they all carry the node's pool cost) to prismops.inference-node-windows.v1, keyed by the
inference pool, where agents/inference_agents.py meets it with the tokens of the pool's models.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import faust

from prismops.finops.gpu_allocation import IDLE_POLICIES, attribute_window, load_inference_pools
from prismops.finops.gpu_pricing import load_gpu_catalog
from prismops.finops.gpu_windows import ClosedWindow, PoolWindows, validate_gpu_usage
from prismops.agents.context import WorkerContext, utcnow
from prismops.streams.codecs import codec_for
from prismops.errors import FieldRuleError
from prismops.streams.partitioning import KeyPartitioner
from prismops.streams.topics import COST_LINES, GPU_ALLOCATIONS, GPU_USAGE, INFERENCE_NODE_WINDOWS

log = logging.getLogger(__name__)

STAGE = "worker.attribute_gpu_usage"
POOL_TABLE = "gpu_pool_windows"


def quiet_check_interval_s(grace_s: int) -> float:
    """How often the timer looks for quiet windows: a quarter of the grace period, between 1 s and 30 s."""
    return max(1.0, min(30.0, grace_s / 4))


def register(ctx: WorkerContext) -> None:
    settings, gpu = ctx.settings, ctx.settings.gpu
    if gpu.idle_policy not in IDLE_POLICIES:
        raise ValueError(f"gpu.idle_policy must be one of {', '.join(IDLE_POLICIES)}, got {gpu.idle_policy!r}")
    if gpu.window_s <= 0 or gpu.grace_s < 0:
        raise ValueError(f"gpu.window_s must be > 0 and gpu.grace_s >= 0, got {gpu.window_s} and {gpu.grace_s}")
    catalog = load_gpu_catalog(gpu.price_table)
    inference_pools = load_inference_pools(gpu.inference_pools)
    inference_topic = ctx.topic(INFERENCE_NODE_WINDOWS)
    inference_partition = KeyPartitioner(INFERENCE_NODE_WINDOWS.partitions or settings.kafka.default_partitions)
    usage_topic, allocations_topic, cost_topic = ctx.topic(GPU_USAGE), ctx.topic(GPU_ALLOCATIONS), ctx.topic(COST_LINES)
    usage_topic_name = GPU_USAGE.name(settings)
    usage_codec, allocation_codec, cost_codec = (
        codec_for(GPU_USAGE.schema), codec_for(GPU_ALLOCATIONS.schema), codec_for(COST_LINES.schema),
    )
    pools = ctx.table(POOL_TABLE, help="open GPU attribution windows and watermark per pool (JSON)")
    state_lock = asyncio.Lock()

    def pool_windows(state: dict) -> PoolWindows:
        return PoolWindows(state, window_s=gpu.window_s, grace_s=gpu.grace_s)

    async def publish(closed: Sequence[ClosedWindow]) -> None:
        """Send every allocation and cost line of the closed windows now, and wait until Kafka has them."""
        pending = []
        for window in closed:
            attribution = attribute_window(window, catalog, gpu.idle_policy, gpu.window_s)
            for allocation, line in zip(attribution.allocations, attribution.cost_lines):
                allocation_value, line_key, line_value = (
                    allocation_codec.encode(allocation), line["tenant"].encode(), cost_codec.encode(line))
                ctx.check_size(allocations_topic, window.pool.encode(), allocation_value)
                ctx.check_size(cost_topic, line_key, line_value)
                pending.append(await allocations_topic.send(key=window.pool.encode(), value=allocation_value, force=True))
                pending.append(await cost_topic.send(key=line_key, value=line_value, force=True))
            pool = next((p for p in inference_pools if p.has_node(window.cluster, window.node)), None)
            if pool is not None and attribution.allocations:
                pending.append(await inference_topic.send(
                    key=pool.name.encode(), value=allocation_codec.encode(attribution.allocations[0]),
                    partition=inference_partition(pool.name), force=True))
            log.info(
                "closed GPU window %s %s (%s, %d events): pool cost %s %s, %d shares",
                window.pool, window.window_start.isoformat(), window.closed_by, window.events,
                attribution.pool_cost.cost_usd, attribution.pool_cost.price_version, len(attribution.shares),
            )
        for delivery in pending:
            await delivery

    @ctx.app.agent(usage_topic)
    async def attribute_gpu_usage(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, STAGE):
                await attribute_one(event)

    async def attribute_one(event: faust.types.EventT) -> None:
        message = event.message
        usage = validate_gpu_usage(
            usage_codec.decode(event.value), key=message.key, now=utcnow(), catalog=catalog, window_s=gpu.window_s,
        )
        async with state_lock:
            stored = pools.get(usage.pool)
            before = json.dumps(stored) if stored else None
            windows = pool_windows(stored) if stored else PoolWindows.new(
                usage.cluster, usage.node, message.partition, window_s=gpu.window_s, grace_s=gpu.grace_s,
            )
            if windows.is_replay(message.offset):
                return  # counted before a restart; its output was published before that state was stored
            windows.add(usage, offset=message.offset, arrived_at=utcnow())  # raises changing nothing
            windows.state["partition"] = message.partition
            size = len(json.dumps(windows.state)) + len(usage.pool)
            if size > ctx.settings.kafka.max_message_bytes:
                if before is not None:  # the wrapper changed the table's dict in place: put it back
                    pools.data[usage.pool] = json.loads(before)
                raise FieldRuleError(None, "state_max_bytes",
                                     f"pool {usage.pool}'s open windows would take {size} bytes with this event, over "
                                     f"the {ctx.settings.kafka.max_message_bytes}-byte record limit")
            await publish(windows.close_due_by_watermark())
            pools[usage.pool] = windows.state

    @ctx.app.timer(interval=quiet_check_interval_s(gpu.grace_s))
    async def close_quiet_gpu_windows() -> None:
        async with ctx.timer_guard("worker.close_quiet_gpu_windows"):
            await close_quiet()

    async def close_quiet() -> None:
        app = ctx.app
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == usage_topic_name}
        async with state_lock:
            for pool, stored in list(pools.data.items()):
                if not stored or stored.get("partition") not in assigned:
                    continue
                windows = pool_windows(stored)
                closed = windows.close_quiet(utcnow())
                if not closed:
                    continue
                await publish(closed)
                # Outside stream iteration Faust cannot pick the changelog partition itself: it is the pool's.
                pools.data[pool] = windows.state
                pools.send_changelog(stored["partition"], pool, windows.state)
