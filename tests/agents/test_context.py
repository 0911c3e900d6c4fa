"""The worker's guards, without a broker: one bad event is dead-lettered, never fatal; oversized output is refused."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from prismops.agents.context import OutputTooLarge, WorkerContext, check_size
from prismops.errors import FieldRuleError
from prismops.settings import Settings
from prismops.streams.codecs import codec_for
from prismops.streams.faust_app import create_app


@dataclass
class Message:
    topic: str = "usage.llm.v1"
    partition: int = 1
    offset: int = 42
    key: bytes = b"acme"
    value: bytes = b'{"event_id": "e1", "customer": "bob@example.com"}'
    headers: list = field(default_factory=list)


@dataclass
class Event:
    """Records what `event.send` (the default output path) is given."""
    message: Message = field(default_factory=Message)
    sent: list = field(default_factory=list)

    async def send(self, topic, *, key=None, value=None, headers=None, partition=None):
        self.sent.append((topic.get_topic_name(), key, value))


@dataclass
class RecordedOutputs:
    """Stands in for the output producer of `worker.output_path` = librdkafka."""
    sent: list = field(default_factory=list)

    async def send(self, topic, *, key, value, headers=None, partition=None):
        self.sent.append((topic, key, value))


@pytest.fixture(params=["faust", "librdkafka"])
def context(request, tmp_path) -> WorkerContext:
    settings = Settings().with_overrides(stack={"home": str(tmp_path)}, kafka={"max_message_bytes": 1000},
                                         worker={"output_path": request.param})
    app = create_app(settings)
    if request.param == "librdkafka":
        assert app.outputs is not None
        app.outputs = RecordedOutputs()
    else:
        assert app.outputs is None
    return WorkerContext(settings, app)


def sent(context: WorkerContext, event: "Event") -> list:
    return context.outputs.sent if context.outputs is not None else event.sent


def dead_letters(context: WorkerContext, event: "Event") -> list[dict]:
    return [codec_for("dead_letter").decode(value) for topic, _, value in sent(context, event)
            if topic.endswith("dlq.v1")]


def test_an_unexpected_error_dead_letters_the_event_and_the_stream_goes_on(context):
    event = Event()

    async def handle() -> str:
        async with context.guard(event, "worker.test"):
            raise KeyError("tenant")
        return "next event"

    assert asyncio.run(handle()) == "next event"
    (letter,) = dead_letters(context, event)
    assert (letter["error_rule"], letter["stage"], letter["source_offset"]) == ("processing_error", "worker.test", 42)
    assert letter["error_message"].startswith("KeyError")
    assert b"bob@example.com" not in letter["original_value"], "redacted like every dead letter"


def test_a_rule_error_keeps_its_field_and_rule(context):
    event = Event()

    async def handle() -> None:
        async with context.guard(event, "worker.test"):
            raise FieldRuleError("tenant", "printable", "must hold printable characters only")

    asyncio.run(handle())
    (letter,) = dead_letters(context, event)
    assert (letter["error_field"], letter["error_rule"]) == ("tenant", "printable")


def test_output_over_the_limit_is_refused_before_sending_and_its_event_dead_lettered(context):
    event = Event()
    topic = context.app.topic("cost.lines.v1")

    async def handle() -> None:
        async with context.guard(event, "worker.test"):
            await context.send(event, topic, key=b"acme", value=b"x" * 2000)

    asyncio.run(handle())
    assert [t for t, _, _ in sent(context, event)] == [context.settings.namespaced("prismops.dlq.v1")]
    assert dead_letters(context, event)[0]["error_rule"] == "output_max_bytes"


def test_check_size_counts_key_value_and_headers():
    check_size("t", b"k" * 10, b"v" * 80, [("h", b"x" * 9)], 100)
    with pytest.raises(OutputTooLarge) as raised:
        check_size("t", b"k" * 10, b"v" * 80, [("h", b"x" * 10)], 100)
    assert raised.value.rule == "output_max_bytes" and "101 bytes" in raised.value.message


def test_a_timer_error_is_logged_not_raised(context, caplog):
    async def tick() -> str:
        async with context.timer_guard("worker.tick"):
            raise RuntimeError("boom")
        return "next tick"

    assert asyncio.run(tick()) == "next tick"
    assert "worker.tick failed" in caplog.text


def test_anomaly_state_is_stored_compressed_and_older_uncompressed_values_still_read():
    import base64

    from prismops.agents.anomaly_agents import state_bytes, state_text

    record = b"PRISMOPS-STATE 4 SeriesState\n" + bytes(range(256)) * 40
    text = state_text(record)
    assert text.startswith("z:") and len(text) < len(base64.b64encode(record)) / 4
    assert state_bytes(text) == record
    assert state_bytes(base64.b64encode(record).decode("ascii")) == record
