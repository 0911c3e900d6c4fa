"""The sink contract: what a batch is, what `write` promises, and in which order a batch is checkpointed."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SinkRecord:
    """One decoded record and where it came from. A Kafka record holding a batch gives one SinkRecord per item,
    all with its offset; `batch_id` ('<origin>@<position>' from the batch header) names the batch across
    replays, also when the worker sent it again at another offset."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: Mapping[str, Any]
    batch_id: str | None = None


@dataclass(frozen=True)
class WriteResult:
    rows_written: int
    duplicates_skipped: int


class Sink(abc.ABC):
    """Writes batches of decoded records to an external store, exactly once per record id.

    The runner (`prismops.sinks.runner.SinkRunner`) checkpoints every batch in this order, and a sink relies on it:

    1. poll a batch of Kafka records (auto-commit is off, so nothing is acknowledged yet);
    2. decode each value; a record that fails goes to the dead-letter topic with the reason and its original
       bytes, and the DLQ producer is flushed, so every reject is durable before anything is acknowledged;
    3. `write(batch)` with the decoded records; it returns only after the store confirmed the insert,
       and raises if it did not (then nothing is committed and the same batch is delivered again);
    4. commit the batch's next offsets per partition synchronously.

    A crash between 3 and 4 replays the batch, so `write` must be idempotent: records whose id is already
    stored, or that repeat inside the batch, are skipped, never written twice. The runner calls
    `expect_replays()` whenever such a replay can follow (start, assignment, failed batch). Sinks store; they do not
    price, tag or otherwise change what the records say.
    """

    name: str = "sink"

    def open(self) -> None:
        """Check the store is ready (e.g. its table exists) before the first batch; raise if it is not."""

    def expect_replays(self) -> None:
        """The next batch may repeat records an earlier writer stored without committing (after a start, a
        partition assignment or a failed batch); a sink that keeps a cheaper steady-state check than a lookup of
        every id checks the next batch in full."""

    @abc.abstractmethod
    def write(self, batch: Sequence[SinkRecord]) -> WriteResult:
        """Store the batch idempotently; return only once the store confirmed it."""

    def close(self) -> None:
        """Release connections."""
