"""What the long-running ClickHouse-writing commands (`sink`, `alerts`) share: stop on a signal, and
report a missing table or an unreachable server on stderr with a non-zero exit."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

from clickhouse_driver.errors import Error as ClickHouseError
from rich.markup import escape

from prismops.cli.errors import describe_clickhouse_error, show_kafka_client_logs
from prismops.cli.output import fail
from prismops.settings import Settings


@contextlib.contextmanager
def run_until_signalled(settings: Settings) -> Iterator[threading.Event]:
    """Yield an event set by SIGINT/SIGTERM; the previous handlers come back afterwards."""
    from prismops.sinks.clickhouse import SinkNotReady

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    show_kafka_client_logs()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    except SinkNotReady as error:
        fail(escape(str(error)))
    except (ClickHouseError, OSError) as error:
        fail(escape(describe_clickhouse_error(settings, error)))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
