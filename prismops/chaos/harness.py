"""The machinery scenarios share: a stack of the harness's own, one isolated run per scenario, traffic with
known expectations, and the measurements a verdict needs.

`ChaosStack` starts Kafka and ClickHouse through `prismops.infra.stack.LocalStack` (the code behind
`prismops stack up`) under a fresh home with free ports, so killing its servers never touches the stack a
developer or a test session is using. It shares only the jar cache. `ScenarioRun` gives each scenario its
own topic namespace (which also prefixes the worker's app id and every consumer group), ClickHouse database
and component ports, and runs the real `prismops worker|sink|gateway` commands as child processes.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clickhouse_driver import Client
from confluent_kafka import Producer

from prismops.chaos.verdict import Expectation, Observation
from prismops.finops.llm_usage import LlmPricingContext, PricedUsage, process_llm_usage
from prismops.infra.components import Components
from prismops.infra.config import StackPaths
from prismops.infra.processes import port_open
from prismops.infra.stack import LocalServer, LocalStack, StackError
from prismops.settings import Settings
from prismops.sinks.clickhouse import clickhouse_client
from prismops.sinks.migrations import apply_migrations
from prismops.streams.codecs import batch_codec_for, codec_for
from prismops.streams.producer import AVRO_SINGLE_OBJECT, CONTENT_TYPE_HEADER, safe_producer_config
from prismops.streams.replay import group_lag, group_positions, read_topic
from prismops.streams.simulation import TrafficGenerator
from prismops.streams.topics import BUDGET_STATE, COST_LINES, DEAD_LETTERS, LLM_USAGE, ensure_topics

Progress = Callable[[str], None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chaos_stack_settings(base: Settings, home: Path) -> Settings:
    """The base settings moved to their own home and free loopback ports; the jar cache stays shared."""
    base_paths = StackPaths.from_settings(base.stack)
    cache = base.stack.cache_dir or (base_paths.home / "cache")
    return base.with_overrides(
        stack={
            "home": str(home), "cache_dir": str(Path(cache).expanduser().resolve()),
            "kafka_port": free_port(), "kafka_controller_port": free_port(), "kafka_heap": "512m",
            "clickhouse_tcp_port": free_port(), "clickhouse_http_port": free_port(),
            "clickhouse_interserver_port": free_port(), "prometheus_port": free_port(),
        },
        kafka={"bootstrap_servers": "", "topic_namespace": ""},
        clickhouse={"host": "", "port": 0},
    )


class ChaosStack:
    """Kafka + ClickHouse of the harness's own; `kill`, `pause`, `resume` and `restart` act on them."""

    def __init__(self, base: Settings, home: Path, progress: Progress, *, keep: bool = False):
        self.home = home
        self.settings = chaos_stack_settings(base, home)
        self.stack = LocalStack(self.settings)
        self.kafka, self.clickhouse = self.stack.servers[0], self.stack.servers[1]
        self.progress = progress
        self.keep = keep

    def __enter__(self) -> "ChaosStack":
        self.home.mkdir(parents=True, exist_ok=True)
        self.stack.up(self.progress)
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self.kafka, self.clickhouse):
            self._resume_quietly(server)
        self.stack.down()
        if not self.keep:
            shutil.rmtree(self.home, ignore_errors=True)

    def _pid(self, server: LocalServer) -> int:
        pid = server.our_pid()
        if pid is None:
            raise StackError(f"{server.title} of the chaos stack is not running")
        return pid

    def kill(self, server: LocalServer) -> None:
        """SIGKILL, and wait until the process is gone and its port closed."""
        pid = self._pid(server)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (server.our_pid() is not None or port_open(server.port)) and time.monotonic() < deadline:
            time.sleep(0.1)

    def pause(self, server: LocalServer) -> None:
        os.kill(self._pid(server), signal.SIGSTOP)

    def resume(self, server: LocalServer) -> None:
        os.kill(self._pid(server), signal.SIGCONT)

    def _resume_quietly(self, server: LocalServer) -> None:
        pid = server.our_pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def restart(self, server: LocalServer) -> None:
        process = server.start(self.progress)
        server.wait_ready(self.progress, process)


@dataclass
class Traffic:
    """Events to send, already priced by the worker's own code: what must come out is known before sending."""

    events: list[dict[str, Any]]
    lines: dict[str, dict[str, Any]]  # event_id -> the cost line it must become
    expected: Expectation

    @classmethod
    def simulated(cls, settings: Settings, count: int, seed: int) -> "Traffic":
        generator = TrafficGenerator(seed=seed)
        pricing = LlmPricingContext.from_settings(settings)
        codec = codec_for(LLM_USAGE.schema)
        events, lines, expected = [], {}, Expectation()
        now = dt.datetime.now(dt.timezone.utc)
        for index in range(count):
            event = generator.event(index) | {"event_time": now - dt.timedelta(milliseconds=count - index)}
            outcome = process_llm_usage(codec.encode(event), pricing, now)
            if not isinstance(outcome, PricedUsage):
                raise ValueError(f"the simulator made an invalid event: {outcome}")
            events.append(event)
            lines[event["event_id"]] = outcome.cost_line
            expected.add(outcome.cost_line)
        return cls(events, lines, expected)


@dataclass
class SendReport:
    sent: int = 0
    delivered: int = 0
    failed_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0


class PacedProducer(threading.Thread):
    """Sends (key, value) records of one topic at a steady rate in the background, as services would, and
    counts what the broker confirmed; a record that fails delivery is reported by its id."""

    def __init__(self, settings: Settings, topic: str, records: Sequence[tuple[str, bytes, bytes, str | tuple[str, ...]]],
                 duration_s: float):
        super().__init__(daemon=True, name="chaos-producer")
        self.settings, self.topic, self.records = settings, topic, records
        self.duration_s = duration_s
        self.report = SendReport()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            self._send_all()
        except BaseException as exc:  # reported by join_checked, never swallowed
            self.error = exc

    def _send_all(self) -> None:
        producer = Producer(safe_producer_config(self.settings, **{"message.timeout.ms": 300_000}))
        started = time.monotonic()
        per_record = self.duration_s / max(1, len(self.records))

        def delivered(ids: tuple[str, ...]) -> Callable[[Any, Any], None]:
            def callback(err: Any, _msg: Any) -> None:
                with self._lock:
                    if err is None:
                        self.report.delivered += len(ids)
                    else:
                        self.report.failed_ids.extend(ids)
            return callback

        for index, (key, value, content_type, record_id) in enumerate(self.records):
            ids = record_id if isinstance(record_id, tuple) else (record_id,)
            due = started + index * per_record
            while time.monotonic() < due:
                producer.poll(min(0.05, max(0.0, due - time.monotonic())))
            while True:
                try:
                    producer.produce(self.topic, key=key.encode() if key else None, value=value,
                                     headers=[(CONTENT_TYPE_HEADER, content_type)], on_delivery=delivered(ids))
                    break
                except BufferError:
                    producer.poll(0.1)
            self.report.sent += len(ids)
        producer.flush(330)
        self.report.seconds = time.monotonic() - started

    def join_checked(self, timeout_s: float) -> SendReport:
        self.join(timeout_s)
        if self.is_alive():
            raise TimeoutError(f"the producer did not finish within {timeout_s:.0f}s")
        if self.error is not None:
            raise self.error
        return self.report


JSON = b"application/json"


BATCH_EVENTS = 50
"""Events per batch record the chaos producers send, as the SDK groups them (small, so a kill lands mid-stream)."""


def avro_records(traffic: Traffic, batch: int = BATCH_EVENTS) -> list[tuple[str, bytes, bytes, tuple[str, ...]]]:
    """The traffic as the SDK sends it: batch records of `batch` events (1: single records keyed by tenant)."""
    if batch == 1:
        codec = codec_for(LLM_USAGE.schema)
        return [(e["tenant"], codec.encode(e), AVRO_SINGLE_OBJECT, (e["event_id"],)) for e in traffic.events]
    usage = batch_codec_for(LLM_USAGE.schema)
    groups = [traffic.events[i:i + batch] for i in range(0, len(traffic.events), batch)]
    return [("", usage.frame([usage.items.encode_body(e) for e in group]), AVRO_SINGLE_OBJECT,
             tuple(e["event_id"] for e in group)) for group in groups]


class ScenarioRun:
    """One scenario's corner of the chaos stack: namespace, database, ports, components and measurements."""

    def __init__(self, chaos: ChaosStack, name: str, logs: Path, *, settings: Settings | None = None,
                 namespace: str | None = None):
        self.chaos = chaos
        self.name = name
        slug = name.replace("-", "_")
        self.settings = (settings or chaos.settings).with_overrides(
            kafka={"topic_namespace": f"{namespace or name}."},
            clickhouse={"database": f"chaos_{slug}"},
            worker={"web_port": free_port(), "live_publish_interval_s": 0.5},
            sink={"metrics_port": free_port(), "batch_max_wait_s": 0.5},
            gateway={"port": free_port(), "metrics_port": free_port()},
            budgets={"default_tenant_daily_tokens": 10**12},
        )
        self.logs = logs / name
        self.components = Components(self.settings, self.logs)
        self.extra_components: list[Components] = []

    def prepare(self) -> "ScenarioRun":
        ensure_topics(self.settings)
        client = clickhouse_client(self.settings, database="")
        try:
            client.execute(f"DROP DATABASE IF EXISTS {self.settings.clickhouse.database}")
        finally:
            client.disconnect()
        apply_migrations(self.settings)
        return self

    def second_worker(self) -> Components:
        """Another worker process of the same app (same group), with its own web port and member id."""
        other = Components(self.settings.with_overrides(worker={"web_port": free_port()}), self.logs / "worker-2")
        self.extra_components.append(other)
        return other

    def stop(self) -> None:
        for components in (*self.extra_components, self.components):
            components.stop()

    def clickhouse(self) -> Client:
        return clickhouse_client(self.settings)

    # --- measurements -------------------------------------------------------------------------------

    def stored_line_ids(self) -> set[str]:
        client = self.clickhouse()
        try:
            return {row[0] for row in client.execute("SELECT DISTINCT line_id FROM cost_lines")}
        finally:
            client.disconnect()

    def dead_letter_count(self) -> int:
        client = self.clickhouse()
        try:
            ((count,),) = client.execute("SELECT count() FROM dead_letters FINAL")
            return int(count)
        finally:
            client.disconnect()

    def budgets_lag(self) -> int:
        return group_lag(self.settings, self.settings.worker_app_id, COST_LINES.name(self.settings))

    def wait_settled(self, expected: Expectation, timeout_s: float, *, expected_dlq: int = 0,
                     on_poll: Callable[[], None] | None = None) -> float:
        """Block until every expected line is stored, the dead letters are in and the budget agent has read
        every cost line; returns when (monotonic). Fails fast if a component exited on its own."""
        deadline = time.monotonic() + timeout_s
        found: set[str] = set()
        while time.monotonic() < deadline:
            if on_poll:
                on_poll()
            self.check_alive()
            found = self.stored_line_ids() & expected.line_ids
            if len(found) >= expected.rows and self.dead_letter_count() >= expected_dlq and self.budgets_lag() == 0:
                return time.monotonic()
            time.sleep(0.5)
        raise TimeoutError(f"{self.name}: {len(found)}/{expected.rows} expected rows, "
                           f"{self.dead_letter_count()}/{expected_dlq} dead letters, budget lag "
                           f"{self.budgets_lag()} after {timeout_s:.0f}s; logs in {self.logs}\n{self.stall_report()}")

    def stall_report(self) -> str:
        """Where the worker's group stands on its input topics, partition by partition, and the components' last log
        lines: what a run that did not settle in CI must print, since its logs go with the machine."""
        lines = []
        for spec in (LLM_USAGE, COST_LINES):
            topic = spec.name(self.settings)
            positions = group_positions(self.settings, self.settings.worker_app_id, topic)
            lines.append(f"{topic}: " + ", ".join(f"[{partition}] committed {committed} of {end}"
                                                  for partition, (committed, end) in sorted(positions.items())))
        return "\n".join([*lines, self.components.log_tails(60)])

    def wait_rows(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if len(self.stored_line_ids()) >= count:
                return
            time.sleep(0.25)
        raise TimeoutError(f"{self.name}: fewer than {count} rows within {timeout_s:.0f}s; logs in {self.logs}")

    def check_alive(self) -> None:
        for components in (self.components, *self.extra_components):
            components.check_alive()

    def observe(self, expected: Expectation, *, needles: Iterable[str] = ()) -> Observation:
        client = self.clickhouse()
        try:
            ((raw,),) = client.execute("SELECT count() FROM cost_lines")
            ((final, cost),) = client.execute("SELECT count(), sum(cost_usd) FROM cost_lines FINAL")
            ids = {row[0] for row in client.execute("SELECT DISTINCT line_id FROM cost_lines")}
            ((dlq,),) = client.execute("SELECT count() FROM dead_letters FINAL")
            pii = list(self._pii_in_clickhouse(client, needles))
        finally:
            client.disconnect()
        pii += list(self._pii_in_dead_letter_topic(needles))
        crash_lines = [f"{name}: {line}" for components in (self.components, *self.extra_components)
                       for name in components.processes for line in components.crashes(name)]
        return Observation(
            rows_raw=int(raw), rows_final=int(final), distinct_ids=len(ids), expected_found=len(ids & expected.line_ids),
            cost_final=cost if final else type(expected.cost)(0), budget_spend=self.budget_spend(), dlq=int(dlq),
            pii_hits=pii, worker_alive=self.components.alive("worker"), crash_lines=crash_lines,
        )

    def budget_spend(self) -> dict[tuple[str, dt.date], Any]:
        """Tenant daily USD spend as the worker's last budget state row per tenant says."""
        codec = codec_for(BUDGET_STATE.schema)
        latest: dict[str, dict[str, Any]] = {}
        for _, _, value in read_topic(self.settings, BUDGET_STATE.name(self.settings)):
            row = codec.decode(value)
            if row["scope"] == "tenant":
                previous = latest.get(row["scope_id"])
                if previous is None or row["updated_at"] >= previous["updated_at"]:
                    latest[row["scope_id"]] = row
        return {(tenant, usage["period_start"].date()): usage["spent"]
                for tenant, row in latest.items() for usage in row["budgets"]
                if usage["unit"] == "usd" and usage["period"] == "daily"}

    def _pii_in_clickhouse(self, client: Client, needles: Iterable[str]) -> Iterator[str]:
        needles = [n.lower() for n in needles]
        if not needles:
            return
        database = self.settings.clickhouse.database
        text_columns: dict[str, list[str]] = {}
        for table, column in client.execute(
                "SELECT table, name FROM system.columns WHERE database = %(db)s AND type LIKE '%%String%%' "
                "AND table IN (SELECT name FROM system.tables WHERE database = %(db)s "
                "AND engine NOT IN ('View', 'MaterializedView'))", {"db": database}):
            text_columns.setdefault(table, []).append(column)
        for table, columns in sorted(text_columns.items()):
            listed = ", ".join(f"`{column}`" for column in columns)
            for row in client.execute(f"SELECT {listed} FROM {database}.`{table}`", settings={"strings_as_bytes": True}):
                text = repr(row).lower()
                for needle in needles:
                    if needle in text:
                        yield f"{needle} in ClickHouse {table}"

    def _pii_in_dead_letter_topic(self, needles: Iterable[str]) -> Iterator[str]:
        needles = [n.lower().encode() for n in needles]
        if not needles:
            return
        for partition, offset, value in read_topic(self.settings, DEAD_LETTERS.name(self.settings)):
            lowered = (value or b"").lower()
            for needle in needles:
                if needle in lowered:
                    yield f"{needle.decode()} in {DEAD_LETTERS.name(self.settings)}[{partition}]@{offset}"


def new_run_id() -> str:
    return uuid.uuid4().hex[:6]
