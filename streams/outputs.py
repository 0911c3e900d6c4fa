"""The worker's output records through one confluent-kafka producer, acknowledged before their source offsets
commit.

Faust's `event.send` costs tens of microseconds of Python per record on the worker's one thread (attaching the
record to its offset, publishing it at commit, aiokafka's sender and socket writes): with 10,000 tenants nearly
every event is a budget state row, and a restarted worker spent its single core on that while the machine's
second core sat idle. librdkafka batches, compresses and sends on its own threads, so here the worker's thread only
enqueues a record.

The promise stays what `event.send` gave: `delivered()` returns once every record produced before the call is
acknowledged (acks=all, idempotent, so a retry neither loses nor duplicates), and the worker's consumer awaits it
before it commits offsets (`streams.faust_app.ContiguousCommitConsumer`). A record refused for good makes every
later `delivered()` raise OutputDeliveryFailed: nothing more is committed, the worker stops, and its restart
reads again from the last commit. The agents' outputs are deterministic, so the sink and the budget ledger count
what is produced twice once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

log = logging.getLogger(__name__)
ACK_POLL_S = 0.002
"""How often a waiting commit serves librdkafka's delivery reports (and a full queue is tried again)."""


class OutputDeliveryFailed(RuntimeError):
    """Records the broker did not acknowledge: the offsets they came from must not be committed."""


class OutputProducer:
    """Produces the worker's records and tracks their acknowledgements per commit epoch: `produce` counts a
    record in the current epoch, `delivered` closes the epoch and waits until no record of it or an earlier one
    is outstanding.

    Everything runs on the worker's event-loop thread, librdkafka's delivery reports included (served by
    `poll(0)` while `delivered` waits), so the counts need no lock and no report takes the GIL from the busy loop
    thread; a polling thread of our own measured the same (`prismops bench state` 21.6 s against 20.4 s). The
    librdkafka client is made on first use, so a worker that has not produced yet holds no connection."""

    def __init__(self, config: Mapping[str, Any], delivery_timeout_s: float,
                 new_client: Callable[[dict[str, Any]], Any] = Producer):
        self._config = dict(config)
        self._new_client = new_client
        self.delivery_timeout_s = delivery_timeout_s
        self._producer: Any = None
        self._epoch = 0
        self._pending: dict[int, int] = {}
        self._failures: list[str] = []

    def _client(self) -> Any:
        if self._producer is None:
            self._producer = self._new_client(self._config)
        return self._producer

    def produce(self, topic: str, *, key: bytes | None, value: bytes | None,
                headers: Sequence[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
        """Enqueue one record (a keyed one without a partition goes to murmur2(key), as Java clients and Faust
        place it); while librdkafka's local queue is full this blocks, letting it send (table changelogs, whose
        writes cannot wait asynchronously)."""
        while not self._enqueue(topic, key, value, headers, partition):
            self._client().poll(ACK_POLL_S)

    async def send(self, topic: str, *, key: bytes | None, value: bytes | None,
                   headers: Sequence[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
        """`produce` for the agents: while the local queue is full the agent waits and the event loop goes on
        (heartbeats, the commit that drains the queue)."""
        while not self._enqueue(topic, key, value, headers, partition):
            self._client().poll(0)
            await asyncio.sleep(ACK_POLL_S)

    def _enqueue(self, topic: str, key: bytes | None, value: bytes | None,
                 headers: Sequence[tuple[str, bytes]] | None, partition: int | None) -> bool:
        """Hand the record to librdkafka, counted in the current epoch; False when its queue is full."""
        producer = self._client()
        epoch = self._epoch
        self._pending[epoch] = self._pending.get(epoch, 0) + 1
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        try:
            producer.produce(topic, value=value, key=key, headers=list(headers) if headers else None,
                             on_delivery=functools.partial(self._on_delivery, epoch), **extra)
            return True
        except BaseException as exc:
            self._settle(epoch)
            if isinstance(exc, BufferError):
                return False
            raise

    def _on_delivery(self, epoch: int, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}[{message.partition()}]: {error.str()}")
            log.error("an output record was not delivered: %s", self._failures[-1])
        self._settle(epoch)

    def _settle(self, epoch: int) -> None:
        left = self._pending[epoch] - 1
        if left:
            self._pending[epoch] = left
        else:
            del self._pending[epoch]

    def outstanding(self) -> int:
        """Records produced whose acknowledgement (or refusal) has not been served yet."""
        return sum(self._pending.values())

    async def delivered(self) -> None:
        """Return once every record produced before this call is acknowledged; raise OutputDeliveryFailed when
        one was refused, now or before, or when they are not acknowledged within `delivery_timeout_s`."""
        mark = self._epoch
        self._epoch += 1
        deadline = time.monotonic() + self.delivery_timeout_s
        while True:
            if self._producer is not None:
                self._producer.poll(0)
            if self._failures:
                raise OutputDeliveryFailed(f"{len(self._failures)} output record(s) not delivered: "
                                           + "; ".join(self._failures[:3]))
            waiting = sum(n for epoch, n in self._pending.items() if epoch <= mark)
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise OutputDeliveryFailed(
                    f"{waiting} output record(s) not acknowledged within {self.delivery_timeout_s:.0f} s")
            await asyncio.sleep(ACK_POLL_S)

    def close(self, timeout_s: float = 30.0) -> None:
        """Send what is queued and serve its acknowledgements."""
        if self._producer is not None:
            self._producer.flush(timeout_s)
