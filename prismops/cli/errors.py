"""One sentence for every failure a command can meet, on stderr, without a traceback (`--debug` shows one).

An unreachable Kafka or ClickHouse is the common case on a laptop: the sentence names the address that was
tried and how to start the local stack. A missing table is the other one: it says which migration to run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from prismops.settings import KAFKA_CLIENT_LOGGER, Settings

START_THE_STACK = "start the local stack with `prismops stack up` (or point PRISMOPS_* settings at your servers)"
# ClickHouse server error codes that mean the schema is not there (UNKNOWN_TABLE, UNKNOWN_DATABASE)
SCHEMA_MISSING_CODES = frozenset({60, 81})
# librdkafka error names that mean no broker answered
KAFKA_UNREACHABLE = frozenset({"_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_MSG_TIMED_OUT", "_RESOLVE"})


def clickhouse_address(settings: Settings) -> str:
    return f"{settings.clickhouse_host}:{settings.clickhouse_port}"


def describe_clickhouse_error(settings: Settings, error: BaseException) -> str:
    """Unreachable server, missing schema, or the server's own message (without its stack trace)."""
    from clickhouse_driver import errors as ch_errors

    where = clickhouse_address(settings)
    if isinstance(error, (ch_errors.NetworkError, ch_errors.SocketTimeoutError, OSError)):
        return f"cannot reach ClickHouse at {where} ({_first_line(error)}); {START_THE_STACK}"
    message = str(error).split("Stack trace:")[0].strip().replace("\n", " ")
    if getattr(error, "code", None) in SCHEMA_MISSING_CODES:
        return (f"ClickHouse {where}: {message} (database {settings.clickhouse.database!r} has no PrismOps "
                "tables yet: run `prismops db migrate`)")
    return f"ClickHouse {where}: {message}"


def describe_kafka_error(settings: Settings, error: BaseException) -> str:
    from confluent_kafka import KafkaError

    kafka_error = error.args[0] if error.args and isinstance(error.args[0], KafkaError) else None
    if kafka_error is not None and kafka_error.name() in KAFKA_UNREACHABLE:
        return f"cannot reach Kafka at {settings.kafka_bootstrap} ({kafka_error.str()}); {START_THE_STACK}"
    return f"Kafka {settings.kafka_bootstrap}: {kafka_error.str() if kafka_error else error}"


def describe_error(settings: Settings | None, error: BaseException) -> str:
    """The sentence for an exception that reached the top of a command."""
    from clickhouse_driver import errors as ch_errors
    from confluent_kafka import KafkaException

    if settings is not None:
        if isinstance(error, ch_errors.Error):
            return describe_clickhouse_error(settings, error)
        if isinstance(error, KafkaException):
            return describe_kafka_error(settings, error)
    return f"{type(error).__name__}: {error} (run with --debug for the traceback)"


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def show_kafka_client_logs() -> None:
    """A long-running component keeps librdkafka's connection messages in its log (the CLI hides them)."""
    logging.getLogger(KAFKA_CLIENT_LOGGER).setLevel(logging.NOTSET)


@contextlib.contextmanager
def clickhouse_session(settings: Settings) -> Iterator[Any]:
    """A ClickHouse client for one command: bad input (ValueError) and any server or network error become one
    line on stderr with a non-zero exit; the connection is closed either way."""
    from clickhouse_driver.errors import Error as ClickHouseError
    from rich.markup import escape

    from prismops.cli.output import fail
    from prismops.sinks.clickhouse import clickhouse_client

    client = clickhouse_client(settings)
    try:
        yield client
    except ValueError as error:
        fail(escape(str(error)))
    except (ClickHouseError, OSError) as error:
        fail(escape(describe_clickhouse_error(settings, error)))
    finally:
        client.disconnect()
