"""GPU cost attribution on the real stack: SDK → usage.gpu.v1 → Faust worker (windows, allocation) →
cost.allocations.v1 + cost.lines.v1 → sink → ClickHouse, checked against pool costs computed here from the
price YAML, independently of prismops.finops.gpu_pricing and prismops.finops.gpu_allocation.

Windows are 60 s with 3 s of grace, and every event is hours in the past: the first window of each pool is
closed by the watermark (the second window's usage), the second one and the single-window pool by
processing time (nothing arrives for them any more).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from importlib import resources

import pytest
import yaml
from clickhouse_driver import Client
from confluent_kafka.admin import AdminClient

from prismops.infra.components import Components
from prismops.settings import Settings
from prismops.sinks.migrations import apply_migrations
from prismops.streams.codecs import codec_for
from prismops.streams.topics import GPU_ALLOCATIONS, GPU_USAGE
from prismops.streams.producer import UsageProducer
from prismops.testing import isolated, read_topic_to_end, wait_drained, wait_for

WINDOW_S, GRACE_S = 60, 3
UTC = dt.timezone.utc
_now = dt.datetime.now(UTC).replace(second=0, microsecond=0)
W1 = _now - dt.timedelta(hours=3)  # minute-aligned: a window boundary
W2 = W1 + dt.timedelta(seconds=WINDOW_S)
W3 = W2 + dt.timedelta(seconds=WINDOW_S)


@pytest.fixture(scope="module")
def gpu_pipeline(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Components]]:
    """Worker and sink as child processes with small GPU windows and the idle bucket policy."""
    with isolated(stack_settings) as isolated_settings:
        settings = isolated_settings.with_overrides(gpu={"window_s": WINDOW_S, "grace_s": GRACE_S, "idle_policy": "bucket"})
        apply_migrations(settings)
        try:
            with Components(settings, tmp_path_factory.mktemp("gpu-component-logs")) as components:
                components.start("worker", "sink")
                yield settings, components
        finally:
            delete_worker_internal_topics(settings)


def delete_worker_internal_topics(settings: Settings) -> None:
    """Faust's changelog and assignor topics are named after the app id, outside the registry."""
    admin = AdminClient(settings.kafka_client_config())
    prefix = f"{settings.worker_app_id}-"
    doomed = [name for name in admin.list_topics(timeout=10).topics if name.startswith(prefix)]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=10).values():
            future.result()


def gpu_event(cluster: str, node: str, gpu_model: str, capacity_type: str, gpu_index: int, start: dt.datetime,
              length_s: int, tenant: str, team: str | None, job: str, requested: str, used: str,
              fraction: str = "1", mig_profile: str | None = None) -> dict:
    return {
        "event_id": str(uuid.uuid4()), "window_start": start, "window_end": start + dt.timedelta(seconds=length_s),
        "cluster": cluster, "node": node, "gpu_model": gpu_model, "gpu_index": gpu_index,
        "gpu_fraction": Decimal(fraction), "mig_profile": mig_profile, "capacity_type": capacity_type,
        "tenant": tenant, "team": team, "namespace": "ml", "job": job,
        "requested_gpu_seconds": Decimal(requested), "used_gpu_seconds": Decimal(used), "source": "dcgm",
    }


def aws(*args, **kwargs) -> dict:
    return gpu_event("it-aws", "p5-a", "H100-SXM-80GB", "on_demand", *args, **kwargs)


def onprem(*args, **kwargs) -> dict:
    return gpu_event("it-onprem", "dgx-01", "H100-SXM-80GB", "on_prem", *args, **kwargs)


def lab(*args, **kwargs) -> dict:
    return gpu_event("it-lab", "ws-1", "RTX-9090", "on_demand", *args, **kwargs)


def first_batch() -> list[dict]:
    """Everything for the first window, in the order each pool's events arrive."""
    second = dt.timedelta(seconds=1)
    return [
        # it-aws/p5-a, window 1: GPU 0 whole (two halves), GPU 1 time-sliced half, GPU 2 in MIG slices.
        aws(0, W1, 30, "acme", "search", "train", "30", "25"),
        aws(0, W1 + 30 * second, 30, "acme", "search", "train", "30", "28"),
        aws(1, W1, 60, "globex", "research", "notebook", "0", "12.5", fraction="0.5"),
        aws(2, W1, 60, "initech", "vision", "detect", "8.571428", "3", fraction="0.142857", mig_profile="1g.10gb"),
        aws(2, W1, 60, "acme", "search", "infer", "25.714285", "20", fraction="0.428571", mig_profile="3g.40gb"),
        # stream time reaches 2 s into window 2 (inside the grace period) ...
        aws(0, W2, 2, "hooli", None, "burst", "2", "1"),
        # ... so this usage for window 1 is late but still counted: window 1 is marked late
        aws(1, W1 + 40 * second, 20, "globex", "research", "notebook", "0", "10", fraction="0.5"),
        # it-onprem/dgx-01 (amortized on-prem H100): GPU 5 whole, then GPU 6 straddling windows 1 and 2
        onprem(5, W1, 60, "umbrella", "nlp", "serve", "60", "59"),
        onprem(6, W1 + 45 * second, 30, "umbrella", "nlp", "batch", "30", "21"),
        # it-lab/ws-1: a GPU model with no price: the pool is unpriced, flagged, never priced at zero silently
        lab(0, W1, 60, "hooli", "games", "render", "60", "30"),
    ]


def second_batch() -> list[dict]:
    return [
        # it-aws/p5-a, window 2: GPU 0 oversubscribed by time-slicing (120 GPU-seconds claimed on 60)
        aws(0, W2, 60, "acme", "search", "train", "60", "60"),
        aws(0, W2, 60, "hooli", None, "burst", "60", "40"),
        # it-onprem/dgx-01, window 2: GPU 5 reports no usage at all
        onprem(5, W2, 60, "umbrella", "nlp", "serve", "0", "0"),
    ]


# --- the independent expectation --------------------------------------------------------------------------


def yaml_rate(gpu_model: str, capacity_type: str, at: dt.datetime) -> Fraction | None:
    """$/GPU-hour from the bundled YAML: the latest entry in effect; on-prem amortized by its written formula."""
    document = yaml.safe_load(resources.files("prismops.finops").joinpath("gpu_prices.yaml").read_text())
    table_from = dt.datetime.fromisoformat(document["effective_from"].replace("Z", "+00:00"))
    best = None
    for entry in document["prices"]:
        if entry["gpu_model"] != gpu_model or entry["capacity_type"] != capacity_type:
            continue
        since = dt.datetime.fromisoformat(entry.get("effective_from", document["effective_from"]).replace("Z", "+00:00"))
        if max(since, table_from) <= at and (best is None or since > best[0]):
            best = (since, entry)
    if best is None:
        return None
    entry = best[1]
    if capacity_type == "on_prem":
        return (Fraction(entry["purchase_usd"]) / Fraction(entry["amortization_hours"])
                + Fraction(entry["power_and_hosting_usd_per_hour"]))
    return Fraction(entry["usd_per_gpu_hour"])


def half_even_12(value: Fraction) -> Decimal:
    return Decimal(round(value * 10**12)).scaleb(-12)


def expected_windows(events: list[dict]) -> dict[tuple[str, int], dict]:
    """(pool, window start epoch) -> GPUs, charged GPU-seconds per (tenant, job), pool cost."""
    windows: dict[tuple[str, int], dict] = {}
    for event in events:
        start, end = event["window_start"], event["window_end"]
        length = Fraction(int((end - start).total_seconds()))
        window_start = W1
        while window_start < end:
            window_end = window_start + dt.timedelta(seconds=WINDOW_S)
            overlap = Fraction(int((min(end, window_end) - max(start, window_start)).total_seconds()))
            if overlap > 0:
                pool = f"{event['cluster']}/{event['node']}"
                window = windows.setdefault((pool, int(window_start.timestamp())), {
                    "gpus": {}, "requested": {}, "used": {}, "start": window_start,
                })
                window["gpus"][event["gpu_index"]] = (event["gpu_model"], event["capacity_type"])
                workload = (event["tenant"], event["job"])
                window["requested"][workload] = window["requested"].get(workload, 0) + Fraction(event["requested_gpu_seconds"]) * overlap / length
                window["used"][workload] = window["used"].get(workload, 0) + Fraction(event["used_gpu_seconds"]) * overlap / length
            window_start = window_end
    for window in windows.values():
        rates = [yaml_rate(model, capacity, window["start"]) for model, capacity in window["gpus"].values()]
        window["priced"] = None not in rates
        window["pool_cost"] = half_even_12(sum(r * WINDOW_S / 3600 for r in rates)) if window["priced"] else Decimal(0)
        window["charged"] = {w: max(window["requested"][w], window["used"][w]) for w in window["requested"]}
        window["capacity"] = len(window["gpus"]) * WINDOW_S
    return windows


# --- the test ------------------------------------------------------------------------------------------------------


def allocation_messages(settings: Settings) -> list[dict]:
    """Every record on cost.allocations.v1, from the start to its end now (by assignment: a fresh consumer group
    that polled until 5 idle seconds could return before it had joined)."""
    return [value for _key, value in read_topic_to_end(settings, GPU_ALLOCATIONS)]


def clickhouse(settings: Settings) -> Client:
    return Client(settings.clickhouse_host, port=settings.clickhouse_port, database=settings.clickhouse.database)


def test_allocations_sum_exactly_to_each_pool_window_cost_and_gpu_cost_lines_carry_the_same_total(gpu_pipeline):
    settings, components = gpu_pipeline
    first, second = first_batch(), second_batch()
    with UsageProducer(settings) as producer:
        for event in first:
            producer.record_gpu_usage(event)
        producer.flush()
        for event in second:
            producer.record_gpu_usage(event)
    expected = expected_windows(first + second)
    assert len(expected) == 5  # aws w1 w2, onprem w1 w2, lab w1

    def rows_expected(window: dict) -> int:
        idle = window["capacity"] > sum(window["charged"].values())
        return len(window["charged"]) + (1 if idle else 0)

    total_rows = sum(rows_expected(w) for w in expected.values())
    client = clickhouse(settings)
    wait_for(lambda: client.execute("SELECT count() FROM gpu_allocations")[0][0] >= total_rows
             and client.execute("SELECT count() FROM cost_lines WHERE source = 'gpu'")[0][0] >= total_rows,
             180, components, f"{total_rows} allocations and GPU cost lines")
    time.sleep(GRACE_S + 2)  # a duplicate or a re-emitted window would arrive now

    (rows, ids), = client.execute("SELECT count(), uniqExact(allocation_id) FROM gpu_allocations")
    assert rows == ids == total_rows, "each share exactly once"
    published = allocation_messages(settings)
    assert len(published) == total_rows, "each window was emitted once on the topic too (the sink's dedupe hid nothing)"
    stored = {
        (pool, start): (Decimal(total), Decimal(pool_cost), count, late, versions)
        for pool, start, total, pool_cost, count, late, versions in client.execute(
            "SELECT pool, toUnixTimestamp(window_start), sum(cost_usd), any(pool_cost_usd), count(), max(late),"
            " groupUniqArray(price_version) FROM gpu_allocations GROUP BY pool, window_start"
        )
    }
    assert set(stored) == set(expected)
    for key, window in expected.items():
        total, pool_cost, count, late, versions = stored[key]
        assert pool_cost == window["pool_cost"], key
        assert total == window["pool_cost"], f"{key}: shares sum exactly to the pool cost"
        assert count == rows_expected(window), key
        assert (versions == ["unpriced"]) == (not window["priced"]), key
    w1, w2 = int(W1.timestamp()), int(W2.timestamp())
    assert stored[("it-aws/p5-a", w1)][3] == 1, "late usage within grace was counted and flagged"
    assert stored[("it-aws/p5-a", w2)][3] == 0
    assert expected[("it-aws/p5-a", w1)]["pool_cost"] == Decimal("0.344")  # 3 GPUs x $6.88/h x 1 minute, by hand
    assert not expected[("it-lab/ws-1", w1)]["priced"]

    charged = {
        (pool, start, tenant, job): Decimal(seconds)
        for pool, start, tenant, job, seconds in client.execute(
            "SELECT pool, toUnixTimestamp(window_start), tenant, ifNull(job, ''), charged_gpu_seconds"
            " FROM gpu_allocations WHERE kind = 'workload'"
        )
    }
    for (pool, start), window in expected.items():
        for (tenant, job), seconds in window["charged"].items():
            assert charged[(pool, start, tenant, job)] == half_even_12(seconds), (pool, start, tenant, job)
    # the straddling on-prem event: 15 of its 30 s in each window, charged max(15, 10.5) = 15 in each
    assert charged[("it-onprem/dgx-01", w1, "umbrella", "batch")] == charged[("it-onprem/dgx-01", w2, "umbrella", "batch")] == 15

    idle = client.execute(
        "SELECT tenant, team, charged_gpu_seconds, cost_usd FROM gpu_allocations WHERE kind = 'idle'"
        " AND pool = 'it-aws/p5-a' AND toUnixTimestamp(window_start) = %(w1)s", {"w1": w1},
    )
    window = expected[("it-aws/p5-a", w1)]
    idle_seconds = window["capacity"] - sum(window["charged"].values())
    ((tenant, team, seconds, cost),) = idle
    assert (tenant, team) == ("unallocated", "unallocated") and Decimal(seconds) == half_even_12(idle_seconds)
    assert abs(Fraction(cost) - Fraction(window["pool_cost"]) * idle_seconds / window["capacity"]) < Fraction(1, 10**12)
    assert client.execute(
        "SELECT count() FROM gpu_allocations WHERE kind = 'idle' AND pool = 'it-aws/p5-a'"
        " AND toUnixTimestamp(window_start) = %(w2)s", {"w2": w2})[0][0] == 0, "oversubscribed: scaled, no idle"

    lines = {
        (resource, start): (Decimal(total), count, unpriced, units)
        for resource, start, total, count, unpriced, units in client.execute(
            "SELECT resource, toUnixTimestamp(event_time), sum(cost_usd), count(), countIf(priced = 0),"
            " groupUniqArray(usage_unit) FROM cost_lines WHERE source = 'gpu' GROUP BY resource, event_time"
        )
    }
    assert set(lines) == set(expected)
    for key, window in expected.items():
        total, count, unpriced, units = lines[key]
        assert total == window["pool_cost"] and count == rows_expected(window) and units == ["gpu_second"], key
        assert unpriced == (0 if window["priced"] else count), key
    (gpu_lines, distinct_lines, idle_lines), = client.execute(
        "SELECT count(), uniqExact(line_id), countIf(tenant = 'unallocated') FROM cost_lines WHERE source = 'gpu'"
    )
    assert gpu_lines == distinct_lines == total_rows
    assert idle_lines == sum(1 for w in expected.values() if w["capacity"] > sum(w["charged"].values()))
    client.disconnect()


def test_too_late_and_invalid_gpu_usage_go_to_the_dlq_with_the_original_bytes(gpu_pipeline):
    settings, components = gpu_pipeline
    client = clickhouse(settings)
    wait_for(lambda: client.execute(
        "SELECT count() FROM gpu_allocations WHERE pool = 'it-aws/p5-a' AND toUnixTimestamp(window_start) = %(w)s",
        {"w": int(W1.timestamp())})[0][0], 180, components, "window 1 of it-aws/p5-a emitted")
    too_late = aws(4, W1, 60, "acme", "search", "train", "60", "60")
    too_much = aws(5, W3, 60, "acme", "search", "train", "60", "60.5")
    codec = codec_for("gpu_usage_event")
    with UsageProducer(settings) as producer:
        producer.record_gpu_usage(too_late)
        producer.record_gpu_usage(too_much)
    letters = wait_for(lambda: [r for r in [client.execute(
        "SELECT error_rule, error_field, hex(original_value) FROM dead_letters WHERE stage = 'worker.attribute_gpu_usage'"
    )] if len(r) >= 2], 120, components, "two GPU dead letters")[0]
    by_rule = {rule: (field, value) for rule, field, value in letters}
    assert set(by_rule) == {"too_late", "within_gpu_share"}
    assert by_rule["too_late"][0] == "window_start"
    assert by_rule["within_gpu_share"][0] == "used_gpu_seconds"
    decoded = {codec.decode(bytes.fromhex(value))["event_id"]: rule for rule, (_, value) in by_rule.items()}
    assert decoded == {too_late["event_id"]: "too_late", too_much["event_id"]: "within_gpu_share"}
    assert client.execute(
        "SELECT count() FROM gpu_allocations WHERE pool = 'it-aws/p5-a' AND job = 'train' AND charged_gpu_seconds = 60"
        " AND toUnixTimestamp(window_start) = %(w)s", {"w": int(W1.timestamp())})[0][0] == 1, "window 1 unchanged"
    client.disconnect()


# --- a worker restart keeps open windows (Faust table changelog) -----------------------------------------------

RESTART_GRACE_S = 30  # long enough that no window closes by processing time while the worker restarts


@pytest.fixture(scope="module")
def gpu_restart_pipeline(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Components]]:
    with isolated(stack_settings) as isolated_settings:
        settings = isolated_settings.with_overrides(gpu={"window_s": WINDOW_S, "grace_s": RESTART_GRACE_S, "idle_policy": "proportional"})
        apply_migrations(settings)
        try:
            with Components(settings, tmp_path_factory.mktemp("gpu-restart-logs")) as components:
                components.start("worker", "sink")
                yield settings, components
        finally:
            delete_worker_internal_topics(settings)


def committed_gpu_offsets(settings: Settings) -> int:
    """How many usage.gpu.v1 messages the worker's consumer group has committed (Faust's group id is the app id)."""
    from confluent_kafka import Consumer, TopicPartition


    topic = GPU_USAGE.name(settings)
    consumer = Consumer(settings.kafka_client_config() | {"group.id": settings.worker_app_id, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.default_partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


def test_a_worker_restart_keeps_the_open_window_and_its_usage(gpu_restart_pipeline):
    settings, components = gpu_restart_pipeline
    before = [aws(0, W1, 60, "acme", "search", "train", "60", "45"),
              aws(1, W1, 60, "initech", "vision", "detect", "30", "30", fraction="0.5")]
    with UsageProducer(settings) as producer:
        for event in before:
            producer.record_gpu_usage(event)
    wait_for(lambda: committed_gpu_offsets(settings) >= len(before), 120, components, "the worker to commit window-1 usage")
    components.stop()  # the open window exists only in the worker's table (and its changelog) now
    client = clickhouse(settings)
    assert client.execute("SELECT count() FROM gpu_allocations")[0][0] == 0, "nothing may close before the restart"

    after = [
        aws(2, W1, 60, "globex", "research", "notebook", "0", "20"),  # still window 1: stream time is at its end
        aws(0, W2, 60, "acme", "search", "train", "60", "60"),  # ends 60 s past window 1: the watermark closes it
    ]
    with UsageProducer(settings) as producer:
        for event in after:
            producer.record_gpu_usage(event)
    components.start("worker", "sink")
    w1 = int(W1.timestamp())
    wait_for(lambda: client.execute(
        "SELECT count() FROM gpu_allocations WHERE toUnixTimestamp(window_start) = %(w)s", {"w": w1})[0][0] >= 3,
        180, components, "window 1 closed after the restart")
    wait_drained(settings, components, {settings.worker_app_id: (GPU_USAGE,), settings.sink_group_id: (GPU_ALLOCATIONS,)})
    window = expected_windows(before + after)[("it-aws/p5-a", w1)]
    rows = client.execute(
        "SELECT tenant, charged_gpu_seconds, cost_usd, pool_cost_usd FROM gpu_allocations"
        " WHERE toUnixTimestamp(window_start) = %(w)s", {"w": w1},
    )
    assert {tenant for tenant, *_ in rows} == {"acme", "initech", "globex"}, "usage from before the restart survived"
    assert {tenant: Decimal(seconds) for tenant, seconds, *_ in rows} == \
        {tenant: half_even_12(seconds) for (tenant, _), seconds in window["charged"].items()}, "counted once, not twice"
    assert sum(Decimal(cost) for _, _, cost, _ in rows) == window["pool_cost"] == Decimal(rows[0][3])
    assert window["pool_cost"] == Decimal("0.344")  # GPUs 0, 1, 2 for a minute at $6.88/h
    client.disconnect()
