"""The named fault scenarios of `prismops chaos run`.

Each scenario sends its own traffic into its own namespace of the chaos stack, breaks something while the
pipeline works through it, waits until the pipeline has settled, and compares what is stored with what it
sent (see `prismops.chaos.verdict`). Faults are triggered by pipeline progress (rows stored), not by the
clock, so they land mid-stream on a fast or a slow machine alike.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from prismops.chaos.harness import (
    JSON, ChaosStack, PacedProducer, ScenarioRun, Traffic, avro_records, new_run_id,
)
from prismops.chaos.verdict import Expectation, Observation, ScenarioResult
from prismops.finops.llm_usage import LlmPricingContext, PricedUsage, process_llm_usage
from prismops.gateway_grpc.client import RouterClient, wait_for_router
from prismops.infra.kafka_cluster import KafkaCluster
from prismops.streams.codecs import codec_for
from prismops.streams.producer import AVRO_SINGLE_OBJECT
from prismops.streams.topics import LLM_USAGE

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ChaosOptions:
    events: int = 20_000
    kills: int = 3
    outage_s: float = 20.0  # broker down, ClickHouse frozen
    settle_timeout_s: float = 600.0
    seed: int = 7

    @property
    def send_seconds(self) -> float:
        """Traffic is spread over this long, so faults land while events still arrive."""
        return max(8.0, self.events / 2000)


def _finish(run: ScenarioRun, name: str, traffic_expected: Expectation, events_sent: int, started: float,
            settled: float, fault_end: float | None, *, needles: tuple[str, ...] = (), expected_dlq: int = 0,
            notes: list[str] | None = None, extra: dict[str, Any] | None = None) -> ScenarioResult:
    observed = run.observe(traffic_expected, needles=needles)
    observed.recovery_s = None if fault_end is None else max(0.0, settled - fault_end)
    return ScenarioResult(name, events_sent, traffic_expected, observed, time.monotonic() - started,
                          expected_dlq=expected_dlq, notes=notes or [], extra=extra or {})


def _expected_after_sending(traffic: Traffic, failed_ids: list[str]) -> Expectation:
    expected = traffic.expected
    for event_id in failed_ids:
        line = traffic.lines[event_id]
        expected.forget(line["line_id"], line)
    return expected


def _kill_component(component: str) -> Callable[[ChaosStack, Path, ChaosOptions, Progress], ScenarioResult]:
    name = f"kill-{component}"

    def scenario(chaos: ChaosStack, logs: Path, options: ChaosOptions, progress: Progress) -> ScenarioResult:
        started = time.monotonic()
        run = ScenarioRun(chaos, name, logs).prepare()
        traffic = Traffic.simulated(run.settings, options.events, options.seed)
        try:
            run.components.start("worker", "sink")
            producer = PacedProducer(run.settings, LLM_USAGE.name(run.settings), avro_records(traffic), options.send_seconds)
            producer.start()
            fault_end = None
            for kill in range(1, options.kills + 1):
                run.wait_rows(options.events * kill // (options.kills + 1), options.settle_timeout_s)
                progress(f"{name}: kill -9 {component} ({kill}/{options.kills}) and start it again")
                run.components.kill(component)
                run.components.restart(component)
                fault_end = time.monotonic()
            report = producer.join_checked(options.settle_timeout_s)
            expected = _expected_after_sending(traffic, report.failed_ids)
            settled = run.wait_settled(expected, options.settle_timeout_s)
            return _finish(run, name, expected, report.sent, started, settled, fault_end)
        finally:
            run.stop()

    return scenario


class DecideLoad(threading.Thread):
    """Decide calls in a loop against the gateway, as a service would make them, with their outcomes."""

    def __init__(self, target: str):
        super().__init__(daemon=True, name="chaos-decide")
        self.target = target
        self.stop_event = threading.Event()
        self.outcomes: list[tuple[float, bool]] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            with RouterClient(self.target) as client:
                while not self.stop_event.is_set():
                    try:
                        client.decide("globex", "search", "rerank", [("openai", "gpt-4o-mini")],
                                      latency_slo_ms=1200, timeout=1.0)
                        self.outcomes.append((time.monotonic(), True))
                    except grpc.RpcError:
                        self.outcomes.append((time.monotonic(), False))
                        time.sleep(0.05)
                        break  # a fresh channel, as a client library would reconnect

    def first_ok_after(self, moment: float) -> float | None:
        return next((at for at, ok in self.outcomes if ok and at >= moment), None)


def kill_gateway(chaos: ChaosStack, logs: Path, options: ChaosOptions, progress: Progress) -> ScenarioResult:
    name = "kill-gateway"
    started = time.monotonic()
    run = ScenarioRun(chaos, name, logs).prepare()
    traffic = Traffic.simulated(run.settings, options.events, options.seed)
    target = f"{run.settings.gateway.host}:{run.settings.gateway.port}"
    load = DecideLoad(target)
    try:
        run.components.start("worker", "sink", "gateway")
        wait_for_router(target, run.check_alive)
        load.start()
        producer = PacedProducer(run.settings, LLM_USAGE.name(run.settings), avro_records(traffic), options.send_seconds)
        producer.start()
        outages = []
        for kill in range(1, options.kills + 1):
            run.wait_rows(options.events * kill // (options.kills + 1), options.settle_timeout_s)
            progress(f"{name}: kill -9 gateway ({kill}/{options.kills}) under Decide load and start it again")
            killed_at = time.monotonic()
            run.components.kill("gateway")
            run.components.restart("gateway")
            deadline = time.monotonic() + 60
            while load.first_ok_after(killed_at + 0.001) is None and time.monotonic() < deadline:
                run.check_alive()
                time.sleep(0.1)
            back = load.first_ok_after(killed_at + 0.001)
            outages.append(None if back is None else back - killed_at)
        report = producer.join_checked(options.settle_timeout_s)
        expected = _expected_after_sending(traffic, report.failed_ids)
        settled = run.wait_settled(expected, options.settle_timeout_s)
        result = _finish(run, name, expected, report.sent, started, settled, None)
        load.stop_event.set()
        load.join(10)
        ok = sum(1 for _, good in load.outcomes if good)
        result.observed.recovery_s = max((o for o in outages if o is not None), default=None)
        result.extra = {"decide_ok": ok, "decide_failed": len(load.outcomes) - ok,
                        "gateway_outages_s": [None if o is None else round(o, 2) for o in outages]}
        if any(o is None for o in outages) or not run.components.alive("gateway"):
            result.notes.append("the gateway did not answer Decide again within 60 s of a restart")
            result.observed.crash_lines.append("gateway: no Decide answered after restart")
        return result
    finally:
        load.stop_event.set()
        run.stop()


def broker_down(chaos: ChaosStack, logs: Path, options: ChaosOptions, progress: Progress) -> ScenarioResult:
    name = "broker-down"
    started = time.monotonic()
    run = ScenarioRun(chaos, name, logs).prepare()
    traffic = Traffic.simulated(run.settings, options.events, options.seed)
    try:
        run.components.start("worker", "sink")
        producer = PacedProducer(run.settings, LLM_USAGE.name(run.settings), avro_records(traffic),
                                 max(options.send_seconds, 2 * options.outage_s))
        producer.start()
        run.wait_rows(options.events // 4, options.settle_timeout_s)
        progress(f"{name}: kill -9 the broker for {options.outage_s:.0f} s while services keep sending")
        chaos.kill(chaos.kafka)
        time.sleep(options.outage_s)
        chaos.restart(chaos.kafka)
        fault_end = time.monotonic()
        report = producer.join_checked(options.settle_timeout_s)
        expected = _expected_after_sending(traffic, report.failed_ids)
        settled = run.wait_settled(expected, options.settle_timeout_s)
        return _finish(run, name, expected, report.sent, started, settled, fault_end,
                       extra={"delivered_by_sdk": report.delivered, "undelivered": len(report.failed_ids)})
    finally:
        run.stop()


def _clickhouse_fault(kind: str) -> Callable[[ChaosStack, Path, ChaosOptions, Progress], ScenarioResult]:
    name = f"clickhouse-{kind}"

    def scenario(chaos: ChaosStack, logs: Path, options: ChaosOptions, progress: Progress) -> ScenarioResult:
        started = time.monotonic()
        run = ScenarioRun(chaos, name, logs).prepare()
        traffic = Traffic.simulated(run.settings, options.events, options.seed)
        try:
            run.components.start("worker", "sink")
            producer = PacedProducer(run.settings, LLM_USAGE.name(run.settings), avro_records(traffic),
                                     max(options.send_seconds, options.outage_s))
            producer.start()
            run.wait_rows(options.events // 3, options.settle_timeout_s)
            if kind == "stop":
                progress(f"{name}: SIGSTOP ClickHouse for {options.outage_s:.0f} s")
                chaos.pause(chaos.clickhouse)
                time.sleep(options.outage_s)
                chaos.resume(chaos.clickhouse)
            else:
                progress(f"{name}: kill -9 ClickHouse, start it again after 5 s")
                chaos.kill(chaos.clickhouse)
                time.sleep(5)
                chaos.restart(chaos.clickhouse)
            fault_end = time.monotonic()
            report = producer.join_checked(options.settle_timeout_s)
            expected = _expected_after_sending(traffic, report.failed_ids)
            settled = run.wait_settled(expected, options.settle_timeout_s)
            return _finish(run, name, expected, report.sent, started, settled, fault_end)
        finally:
            run.stop()

    return scenario


def rebalance(chaos: ChaosStack, logs: Path, options: ChaosOptions, progress: Progress) -> ScenarioResult:
    name = "rebalance"
    started = time.monotonic()
    run = ScenarioRun(chaos, name, logs).prepare()
    traffic = Traffic.simulated(run.settings, options.events, options.seed)
    try:
        run.components.start("worker", "sink")
        producer = PacedProducer(run.settings, LLM_USAGE.name(run.settings), avro_records(traffic), options.send_seconds)
        producer.start()
        run.wait_rows(options.events // 4, options.settle_timeout_s)
        progress(f"{name}: a second worker joins the group")
        second = run.second_worker()
        second.start("worker")
        run.wait_rows(options.events * 2 // 3, options.settle_timeout_s)
        progress(f"{name}: the second worker leaves (SIGTERM)")
        code = second.terminate("worker")
        fault_end = time.monotonic()
        report = producer.join_checked(options.settle_timeout_s)
        expected = _expected_after_sending(traffic, report.failed_ids)
        settled = run.wait_settled(expected, options.settle_timeout_s)
        result = _finish(run, name, expected, report.sent, started, settled, fault_end,
                         extra={"second_worker_exit": code})
        if code != 0:
            result.observed.crash_lines.append(f"worker-2: exit code {code} after SIGTERM")
        return result
    finally:
        run.stop()


def namespaces(chaos: ChaosStack, logs: Path, options: ChaosOptions, progress: Progress) -> ScenarioResult:
    """Two deployments on one cluster with the same tenants and default group names: each stores and
    budgets only its own traffic."""
    name = "namespaces"
    started = time.monotonic()
    runs = [ScenarioRun(chaos, f"{name}-{side}", logs, namespace=f"ns-{side}").prepare() for side in ("a", "b")]
    traffics = [Traffic.simulated(run.settings, options.events // 2, options.seed + i) for i, run in enumerate(runs)]
    try:
        for run in runs:
            run.components.start("worker", "sink")
        progress(f"{name}: {options.events // 2} events into each of two namespaces at once")
        producers = [PacedProducer(run.settings, LLM_USAGE.name(run.settings), avro_records(traffic), options.send_seconds)
                     for run, traffic in zip(runs, traffics)]
        for producer in producers:
            producer.start()
        reports = [producer.join_checked(options.settle_timeout_s) for producer in producers]
        expectations = [_expected_after_sending(t, r.failed_ids) for t, r in zip(traffics, reports)]
        for run, expected in zip(runs, expectations):
            run.wait_settled(expected, options.settle_timeout_s)
        observations = [run.observe(expected) for run, expected in zip(runs, expectations)]
        expected, observed = _merge_namespaces(expectations, observations, ("ns-a", "ns-b"))
        return ScenarioResult(name, sum(r.sent for r in reports), expected, observed, time.monotonic() - started,
                              extra={"app_ids": [run.settings.worker_app_id for run in runs]})
    finally:
        for run in runs:
            run.stop()


def _merge_namespaces(expectations: list[Expectation], observations: list[Observation],
                      names: tuple[str, ...]) -> tuple[Expectation, Observation]:
    """One verdict over both namespaces; budget keys carry the namespace, so one's spend in the other's
    budget state shows as a difference."""
    expected, observed = Expectation(), Observation(budget_spend={})
    for namespace, one, seen in zip(names, expectations, observations):
        expected.line_ids |= {f"{namespace}/{line_id}" for line_id in one.line_ids}
        expected.cost += one.cost
        for (tenant, day), amount in one.tenant_day_cost.items():
            expected.tenant_day_cost[(f"{namespace}/{tenant}", day)] += amount
        observed.rows_raw += seen.rows_raw
        observed.rows_final += seen.rows_final
        observed.distinct_ids += seen.distinct_ids
        observed.expected_found += seen.expected_found
        observed.cost_final += seen.cost_final
        observed.dlq += seen.dlq
        observed.pii_hits += seen.pii_hits
        observed.crash_lines += seen.crash_lines
        observed.worker_alive = observed.worker_alive and seen.worker_alive
        for (tenant, day), amount in (seen.budget_spend or {}).items():
            observed.budget_spend[(f"{namespace}/{tenant}", day)] = amount  # type: ignore[index]
    return expected, observed


def cluster(chaos: ChaosStack, logs: Path, options: ChaosOptions, progress: Progress) -> ScenarioResult:
    """The pipeline on a 3-broker KRaft cluster (RF 3, min.insync.replicas 2) from the same jars; one broker is
    killed mid-stream and started again 10 s later."""
    name = "cluster"
    started = time.monotonic()
    progress(f"{name}: starting a 3-broker KRaft cluster")
    with KafkaCluster(chaos.settings, chaos.home / "cluster") as kafka_cluster:
        kafka_cluster.start(progress)
        run = ScenarioRun(chaos, name, logs, settings=kafka_cluster.client_settings()).prepare()
        traffic = Traffic.simulated(run.settings, options.events, options.seed)
        try:
            run.components.start("worker", "sink")
            producer = PacedProducer(run.settings, LLM_USAGE.name(run.settings), avro_records(traffic),
                                     max(options.send_seconds, 20))
            producer.start()
            run.wait_rows(options.events // 3, options.settle_timeout_s)
            progress(f"{name}: kill -9 broker 2 of 3, start it again after 10 s")
            kafka_cluster.kill(2)
            time.sleep(10)
            kafka_cluster.restart(2, progress)
            fault_end = time.monotonic()
            report = producer.join_checked(options.settle_timeout_s)
            expected = _expected_after_sending(traffic, report.failed_ids)
            settled = run.wait_settled(expected, options.settle_timeout_s)
            return _finish(run, name, expected, report.sent, started, settled, fault_end,
                           extra={"under_replicated_at_end": kafka_cluster.under_replicated()})
        finally:
            run.stop()


# --- fuzz --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantedData:
    email: str
    phone: str
    prompt: str

    @property
    def needles(self) -> tuple[str, ...]:
        return (self.email, self.phone, self.prompt)


def malformed_records(valid: dict[str, Any], count: int, oversized: int, pii: PlantedData,
                      rng: random.Random) -> list[tuple[str, bytes, bytes, str]]:
    """`count` records the worker must dead-letter, cycling through the families of bad input seen in the
    field, `oversized` of them with a 900 KB service name; personal data is planted in most."""
    codec = codec_for(LLM_USAGE.schema)

    def json_of(**changes: Any) -> bytes:
        event = json.loads(codec.encode_json(valid)) | {"event_id": f"bad-{rng.getrandbits(64):016x}"}
        event.update(changes)
        return json.dumps({k: v for k, v in event.items() if v is not _DROP}).encode()

    families: list[Callable[[], bytes]] = [
        lambda: b'{"event_id": "trunc", "prompt": "' + pii.prompt.encode() + b'", "customer": "' + pii.email.encode() + b'", "inp',
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))),
        lambda: json_of(event_id=_DROP, metadata={"prompt": pii.prompt, "contact": {"email": pii.email}}),
        lambda: json_of(status=pii.email),
        lambda: json_of(input_tokens=-5, messages=[{"role": "user", "content": pii.prompt}]),
        lambda: json_of(event_time=(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).isoformat(), customer=pii.phone),
        lambda: json_of(tenant="acme\u202egnp.exe"),
        lambda: json_of(tenant="ac\x00me", customer=pii.email),
        lambda: json_of(labels={f"k{i}": "v" for i in range(65)}),
        lambda: json_of(cached_input_tokens=10**9, labels={"note": f"call {pii.phone}"}),
        lambda: codec.encode(valid)[: rng.randint(3, 40)],
        lambda: json_of(model=""),
        lambda: json_of(status="ok", error_code=f"contact {pii.email} or {pii.phone}"),
    ]
    records = [(f"bad-{i}", families[i % len(families)](), JSON, f"bad-{i}") for i in range(count - oversized)]
    records += [(f"huge-{i}", json_of(service="s" * 900_000), JSON, f"huge-{i}") for i in range(oversized)]
    return records


_DROP = object()


def fuzz(chaos: ChaosStack, logs: Path, options: ChaosOptions, progress: Progress) -> ScenarioResult:
    name = "fuzz"
    started = time.monotonic()
    run = ScenarioRun(chaos, name, logs).prepare()
    run_id = new_run_id()
    pii = PlantedData(f"chaos.{run_id}@example.com", "+1 415 555 0199", f"CHAOS-SECRET-PROMPT-{run_id}")
    rng = random.Random(options.seed)
    traffic = Traffic.simulated(run.settings, max(10, options.events // 10), options.seed)
    pricing = LlmPricingContext.from_settings(run.settings)
    codec = codec_for(LLM_USAGE.schema)
    good: list[tuple[str, bytes, bytes, str]] = []
    now = dt.datetime.now(dt.timezone.utc)
    expected = Expectation()
    for index, event in enumerate(traffic.events):
        # valid events carrying personal data where it may legally sit: masked or dropped, never stored
        if index % 3 == 0:
            event = event | {"customer": pii.email, "labels": {"contact": f"call {pii.phone}"}}
            value = json.dumps(json.loads(codec.encode_json(event)) | {"prompt": pii.prompt,
                               "metadata": {"messages": [{"content": pii.prompt}]}}).encode()
            content_type = JSON
        else:
            value, content_type = codec.encode(event), AVRO_SINGLE_OBJECT
        outcome = process_llm_usage(value, pricing, now)
        if not isinstance(outcome, PricedUsage):
            raise ValueError(f"fuzz: a valid event was rejected before sending: {outcome}")
        expected.add(outcome.cost_line)
        good.append((event["tenant"], value, content_type, event["event_id"]))
    bad = malformed_records(traffic.events[0], options.events, max(2, options.events // 500), pii, rng)
    mixed = good + bad
    rng.shuffle(mixed)
    try:
        run.components.start("worker", "sink")
        progress(f"{name}: {len(bad)} malformed and {len(good)} valid records, personal data planted")
        producer = PacedProducer(run.settings, LLM_USAGE.name(run.settings), mixed, options.send_seconds)
        producer.start()
        report = producer.join_checked(options.settle_timeout_s)
        if report.failed_ids:
            raise RuntimeError(f"{name}: the broker refused {len(report.failed_ids)} records: {report.failed_ids[:5]}")
        settled = run.wait_settled(expected, options.settle_timeout_s, expected_dlq=len(bad))
        return _finish(run, name, expected, report.sent, started, settled, None, needles=pii.needles,
                       expected_dlq=len(bad), extra={"malformed": len(bad), "valid": len(good)})
    finally:
        run.stop()


SCENARIOS: dict[str, Callable[[ChaosStack, Path, ChaosOptions, Progress], ScenarioResult]] = {
    "kill-worker": _kill_component("worker"),
    "kill-sink": _kill_component("sink"),
    "kill-gateway": kill_gateway,
    "broker-down": broker_down,
    "clickhouse-stop": _clickhouse_fault("stop"),
    "clickhouse-kill": _clickhouse_fault("kill"),
    "fuzz": fuzz,
    "rebalance": rebalance,
    "namespaces": namespaces,
    "cluster": cluster,
}

DESCRIPTIONS: dict[str, str] = {
    "kill-worker": "kill -9 the worker mid-stream (--kills times), restart it at once",
    "kill-sink": "kill -9 the ClickHouse sink mid-stream (--kills times), restart it at once",
    "kill-gateway": "kill -9 the gateway under Decide load (--kills times); events keep flowing",
    "broker-down": "kill -9 the broker for --outage seconds while services keep sending",
    "clickhouse-stop": "SIGSTOP ClickHouse for --outage seconds mid-stream",
    "clickhouse-kill": "kill -9 ClickHouse mid-stream, restart it 5 s later",
    "fuzz": "malformed records of 13 families and 900 KB names, personal data planted and searched for",
    "rebalance": "a second worker joins mid-stream and leaves with SIGTERM",
    "namespaces": "two namespaces on one cluster, same tenants and default group names, at once",
    "cluster": "a 3-broker KRaft cluster (RF 3, min ISR 2); one broker killed mid-stream and restarted",
}
