"""The gateway on the real broker: it replays the compacted live table, follows new rows, and publishes decisions."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.gateway_grpc.client import RouterClient  # noqa: E402
from prismops.gateway_grpc.server import serve  # noqa: E402
from prismops.settings import Settings  # noqa: E402
from prismops.streams.codecs import codec_for  # noqa: E402
from prismops.streams.topics import ROUTING_DECISIONS, ROUTING_TABLES  # noqa: E402

CHEAP = ("openai", "gpt-4o-mini")
PRICEY = ("openai", "gpt-4o")
GONE = ("mistral", "small")
SLO_MS = 800.0
FOLLOW_TIMEOUT_S = 20.0


def live_row(provider: str, model: str, p95: float, input_price: str, output_price: str) -> dict:
    return {
        "provider": provider, "model": model, "window_seconds": 300.0, "sample_count": 200, "error_count": 2,
        "error_rate": 0.01, "p50_latency_ms": p95 / 2, "p95_latency_ms": p95, "p99_latency_ms": p95 * 1.3,
        "cost_usd": Decimal("0.42"), "tokens": 500_000, "input_price_per_mtok": Decimal(input_price),
        "output_price_per_mtok": Decimal(output_price), "updated_at": dt.datetime.now(dt.timezone.utc),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def produce(settings: Settings, records: list[tuple[str, bytes | None]]) -> None:
    producer = Producer(settings.kafka_client_config())
    for key, value in records:
        producer.produce(ROUTING_TABLES.name(settings), key=key.encode(), value=value)
    assert producer.flush(10.0) == 0


def row_record(row: dict) -> tuple[str, bytes]:
    return f"{row['provider']}/{row['model']}", codec_for("model_live_stats").encode(row)


def read_decisions(settings: Settings, wanted_ids: set[str], timeout_s: float = 20.0) -> dict[str, tuple[bytes, dict]]:
    topic = ROUTING_DECISIONS.name(settings)
    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"{topic}-reader", "enable.auto.commit": False})
    metadata = consumer.list_topics(topic, timeout=10.0).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
    found: dict[str, tuple[bytes, dict]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while not wanted_ids <= set(found) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            decision = codec_for("routing_decision").decode(message.value())
            found[decision["decision_id"]] = (message.key(), decision)
    finally:
        consumer.close()
    return found


@pytest.fixture()
def gateway(isolated_settings: Settings) -> Iterator[tuple[Settings, str]]:
    """Rows already on the topic before the gateway starts, then the gateway in a thread."""
    settings = isolated_settings.with_overrides(gateway={"host": "127.0.0.1", "port": free_port()})
    produce(settings, [
        row_record(live_row(*PRICEY, p95=600, input_price="2.5", output_price="10")),
        row_record(live_row(*CHEAP, p95=1500, input_price="0.15", output_price="0.6")),
        ("openai/gpt-4o-mini", b"\xc3\x01 not a valid live row"),
        row_record(live_row(*CHEAP, p95=400, input_price="0.15", output_price="0.6")),
        row_record(live_row(*GONE, p95=100, input_price="0.01", output_price="0.01")),
        ("mistral/small", None),
    ])
    stop_event = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve(settings, stop_event, grace_s=1.0)
        except BaseException as exc:  # surfaced by the test below, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="gateway-under-test", daemon=True)
    thread.start()
    yield settings, f"127.0.0.1:{settings.gateway.port}"
    stop_event.set()
    thread.join(30.0)
    assert not thread.is_alive(), "serve() did not return after stop_event was set"
    assert errors == []


def test_gateway_follows_the_live_table_and_publishes_its_decisions(gateway):
    settings, target = gateway
    allowed = [PRICEY, CHEAP, GONE]
    with RouterClient(target) as client:
        assert client.wait_ready(FOLLOW_TIMEOUT_S), "the gateway never reported SERVING"

        first = client.decide("acme", "chat", "digest", allowed, latency_slo_ms=SLO_MS,
                              expected_input_tokens=1000, expected_output_tokens=500, request_id="r-1")
        assert (first.model.provider, first.model.model) == CHEAP
        assert first.reason_code == "cheapest_within_slo"
        assert first.estimated_cost_usd == "0.00045"
        assert [c.verdict for c in first.candidates] == ["costlier: $0.0075 > $0.00045", "chosen", "no live data"]

        produce(settings, [row_record(live_row(*CHEAP, p95=1200, input_price="0.15", output_price="0.6"))])
        answers = [first]
        deadline = time.monotonic() + FOLLOW_TIMEOUT_S
        while (answers[-1].model.provider, answers[-1].model.model) == CHEAP:
            assert time.monotonic() < deadline, "the gateway never saw the slow row for the cheap model"
            time.sleep(0.2)
            answers.append(client.decide("globex", "search", "rerank", allowed, latency_slo_ms=SLO_MS,
                                         expected_input_tokens=1000, expected_output_tokens=500))
        last = answers[-1]
        assert (last.model.provider, last.model.model) == PRICEY
        assert last.reason_code == "cheapest_within_slo"
        assert last.candidates[1].verdict == f"p95 1200 ms > SLO {SLO_MS:.0f} ms"

    published = read_decisions(settings, {a.decision_id for a in answers})
    assert set(published) == {a.decision_id for a in answers}
    key, decision = published[first.decision_id]
    assert key == b"acme"
    assert (decision["chosen_provider"], decision["chosen_model"]) == CHEAP
    assert decision["request_id"] == "r-1"
    assert decision["latency_slo_ms"] == SLO_MS
    assert decision["candidates"][1]["estimated_cost_usd"] == Decimal("0.00045")
    key, decision = published[last.decision_id]
    assert key == b"globex"
    assert (decision["chosen_provider"], decision["chosen_model"]) == PRICEY
    assert decision["reason"] == last.reason


def test_gateway_on_an_empty_live_table_is_serving_at_once_and_prices_from_the_catalog(isolated_settings: Settings):
    settings = isolated_settings.with_overrides(gateway={"host": "127.0.0.1", "port": free_port()})
    stop_event = threading.Event()
    thread = threading.Thread(target=serve, args=(settings, stop_event), kwargs={"grace_s": 0.5}, daemon=True)
    thread.start()
    try:
        with RouterClient(f"127.0.0.1:{settings.gateway.port}") as client:
            assert client.wait_ready(FOLLOW_TIMEOUT_S), "an empty table must count as caught up"
            answer = client.decide("acme", "chat", "digest", [PRICEY, CHEAP], latency_slo_ms=SLO_MS)
        # no live rows: the default route ranks by the price catalog's list prices
        assert (answer.model.provider, answer.model.model) == CHEAP
        assert answer.reason_code == "no_live_data" and answer.route == "default" and not answer.static_fallback
        assert [c.estimated_cost_usd for c in answer.candidates] == ["0.0075", "0.00045"]
    finally:
        stop_event.set()
        thread.join(30.0)
    assert not thread.is_alive()
