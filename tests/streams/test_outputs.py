"""streams/outputs.py without a broker: which records a commit waits for, and what stops it.

The producer's client is a scripted stand-in here (its delivery callbacks run when the test says); the same
producer against the real broker is tests/integration/test_outputs_on_stack.py.
"""

from __future__ import annotations

import asyncio

import pytest

from prismops.streams.outputs import OutputDeliveryFailed, OutputProducer


class ScriptedClient:
    """Keeps each produced record's delivery callback until the test acknowledges or refuses it."""

    def __init__(self, config):
        self.config = config
        self.waiting: list = []
        self.polls = 0

    def produce(self, topic, *, value, key, headers, on_delivery, **extra):
        self.waiting.append((topic, value, on_delivery, extra))

    def poll(self, timeout):
        self.polls += 1
        return 0

    def flush(self, timeout):
        return 0

    def acknowledge(self, count: int, error=None) -> None:
        for topic, _value, on_delivery, extra in self.waiting[:count]:
            on_delivery(error, ScriptedMessage(topic, extra.get("partition", 0)))
        del self.waiting[:count]


class ScriptedMessage:
    def __init__(self, topic, partition):
        self._topic, self._partition = topic, partition

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition


class RefusedError:
    def str(self):
        return "Broker: Message size too large"


def new_outputs(timeout_s: float = 5.0) -> tuple[OutputProducer, list[ScriptedClient]]:
    clients: list[ScriptedClient] = []

    def new_client(config):
        clients.append(ScriptedClient(config))
        return clients[-1]

    return OutputProducer({"linger.ms": 5}, delivery_timeout_s=timeout_s, new_client=new_client), clients


def test_nothing_produced_means_nothing_to_wait_for_and_no_client_is_made():
    outputs, clients = new_outputs()
    asyncio.run(outputs.delivered())
    assert clients == []


def test_a_commit_waits_for_the_records_produced_before_it_not_for_later_ones():
    outputs, clients = new_outputs()

    async def scenario() -> list[str]:
        seen = []
        outputs.produce("cost.lines.v1", key=None, value=b"a", partition=2)
        outputs.produce("budget.state.v1", key=b"tenant/acme", value=b"b")
        commit = asyncio.ensure_future(outputs.delivered())
        await asyncio.sleep(0.05)
        seen.append(f"done={commit.done()}")
        outputs.produce("budget.state.v1", key=b"tenant/acme", value=b"c")  # after the commit began
        clients[0].acknowledge(1)
        await asyncio.sleep(0.05)
        seen.append(f"done={commit.done()}")
        clients[0].acknowledge(1)  # the second record before the commit: the third is still outstanding
        await asyncio.wait_for(commit, 2)
        seen.append(f"outstanding={outputs.outstanding()}")
        return seen

    assert asyncio.run(scenario()) == ["done=False", "done=False", "outstanding=1"]
    assert clients[0].waiting[0][1] == b"c"
    assert clients[0].waiting[0][3] == {}, "a keyed record without a partition is placed by the partitioner"


def test_a_refused_record_fails_this_commit_and_every_later_one():
    outputs, clients = new_outputs()
    outputs.produce("cost.lines.v1", key=None, value=b"a", partition=3)
    clients[0].acknowledge(1, error=RefusedError())
    with pytest.raises(OutputDeliveryFailed, match=r"cost.lines.v1\[3\]: Broker: Message size too large"):
        asyncio.run(outputs.delivered())
    with pytest.raises(OutputDeliveryFailed):
        asyncio.run(outputs.delivered())


def test_records_not_acknowledged_in_time_fail_the_commit():
    outputs, _clients = new_outputs(timeout_s=0.2)
    outputs.produce("cost.lines.v1", key=None, value=b"a")
    with pytest.raises(OutputDeliveryFailed, match="1 output record"):
        asyncio.run(outputs.delivered())


def test_a_full_local_queue_is_drained_then_the_record_enqueued():
    outputs, clients = new_outputs()
    outputs.produce("t", key=None, value=b"first")
    client = clients[0]
    calls = {"n": 0}
    original = client.produce

    def full_once(topic, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise BufferError("Local: Queue full")
        original(topic, **kwargs)

    client.produce = full_once
    outputs.produce("t", key=None, value=b"second")
    assert [value for _, value, _, _ in client.waiting] == [b"first", b"second"]
    assert outputs.outstanding() == 2


def test_an_agent_waits_for_a_full_local_queue_without_blocking_the_event_loop():
    outputs, clients = new_outputs()
    outputs.produce("t", key=None, value=b"first")
    client = clients[0]
    original, full = client.produce, {"left": 10}

    def full_for_a_while(topic, **kwargs):
        if full["left"]:
            full["left"] -= 1
            raise BufferError("Local: Queue full")
        original(topic, **kwargs)

    client.produce = full_for_a_while

    async def scenario() -> int:
        ticks = 0
        sending = asyncio.ensure_future(outputs.send("t", key=b"k", value=b"second"))
        while not sending.done():
            ticks += 1
            await asyncio.sleep(0.001)
        await sending
        return ticks

    assert asyncio.run(scenario()) >= 3, "the loop ran other work while the agent waited"
    assert [value for _, value, _, _ in client.waiting] == [b"first", b"second"]
    assert outputs.outstanding() == 2
