"""sinks/runner.py: a consumer that failed for good is replaced, not polled forever (no broker: the consumers are
scripted; the sink against the real broker and ClickHouse is tests/integration/test_clickhouse_sink.py)."""

from __future__ import annotations

import threading

from confluent_kafka import KafkaError

from prismops.settings import Settings
from prismops.sinks.runner import Route, SinkRunner
from prismops.streams.topics import COST_LINES


class ErrorMessage:
    def __init__(self, error: KafkaError):
        self._error = error

    def error(self) -> KafkaError:
        return self._error


class ScriptedConsumer:
    def __init__(self, batches: list[list]):
        self.batches, self.closed = batches, False

    def consume(self, num_messages: int, timeout: float) -> list:
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        self.closed = True

    def assignment(self) -> list:
        return []

    def position(self, partitions: list) -> list:
        return []


class ReplayAwareSink:
    table = "cost_lines"

    def __init__(self):
        self.replays_expected = 0

    def expect_replays(self) -> None:
        self.replays_expected += 1


def runner_with(consumers: list[ScriptedConsumer]) -> tuple[SinkRunner, ReplayAwareSink, list[ScriptedConsumer]]:
    sink = ReplayAwareSink()
    runner = SinkRunner(Settings(), [Route(COST_LINES, sink)])
    made: list[ScriptedConsumer] = []

    def new_consumer() -> ScriptedConsumer:
        made.append(consumers.pop(0))
        return made[-1]

    runner._new_consumer = new_consumer  # type: ignore[method-assign]
    runner._consumer = new_consumer()
    return runner, sink, made


def test_a_fatal_error_copied_to_a_message_replaces_the_consumer_and_expects_replays():
    fenced = KafkaError(KafkaError._FATAL, "Static consumer fenced by other consumer with same group.instance.id")
    assert not fenced.fatal(), "the copy librdkafka puts on a message says _FATAL but not fatal()"
    runner, sink, made = runner_with([ScriptedConsumer([[ErrorMessage(fenced)]]), ScriptedConsumer([])])
    assert runner._step(threading.Event()) == 0
    assert made[0].closed and runner._consumer is made[1]
    assert sink.replays_expected == 1


def test_a_transient_consumer_error_keeps_the_consumer():
    transient = KafkaError(KafkaError._TRANSPORT, "broker down")
    runner, sink, made = runner_with([ScriptedConsumer([[ErrorMessage(transient)]])])
    assert runner._step(threading.Event()) == 0
    assert runner._consumer is made[0] and not made[0].closed and sink.replays_expected == 0
