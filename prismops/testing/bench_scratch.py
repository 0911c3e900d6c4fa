"""What every stack benchmark does around its run: the local stack up (and down again at the end if the bench
started it), and its scratch topics, Faust topics and database removed whatever happened."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from prismops.infra.stack import LocalStack
from prismops.settings import Settings
from prismops.sinks.clickhouse import clickhouse_client, quote_identifier
from prismops.testing import delete_topics_with_prefix


@contextlib.contextmanager
def bench_stack(base: Settings, progress: Callable[[str], None], *, keep_stack: bool = False) -> Iterator[None]:
    """The stack up for the bench; stopped at the end only if the bench started it (and `keep_stack` is off)."""
    stack = LocalStack(base)
    already_running = all(s.state != "stopped" for s in stack.status())
    progress("bringing the stack up (Kafka, ClickHouse)…")
    stack.up(progress)
    try:
        yield
    finally:
        if not already_running and not keep_stack:
            progress("stopping the stack (it was started by the bench)…")
            stack.down()


def remove_scratch(settings: Settings, progress: Callable[[str], None]) -> None:
    """The scratch namespace's topics, the worker's Faust topics and the scratch database; a failure is reported,
    never raised (clean-up must not hide the run's own outcome)."""
    try:
        delete_topics_with_prefix(settings, (settings.kafka.topic_namespace, f"{settings.worker_app_id}-"))
        client = clickhouse_client(settings, database="")
        client.execute(f"DROP DATABASE IF EXISTS {quote_identifier(settings.clickhouse.database)}")
        client.disconnect()
    except Exception as exc:  # cleanup must not hide the real outcome
        progress(f"could not remove the scratch topics or database: {exc}")
