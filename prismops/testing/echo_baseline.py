"""The floor the router is measured against in `prismops bench route`: a gRPC service that does nothing.

`EchoServer` answers one unary method with its input, on a grpc.aio server in its own thread and event loop.
It needs no .proto: a generic handler with identity (bytes) serializers, so the only work on either side is
gRPC's own. `drive_unary` runs the same closed-loop load (N calls from C threads, each with its own
channel) against any unary call, and `compare_router_with_echo` drives the real Router and the echo with it,
so both are timed the same way and the difference is what routing costs. The client threads run in a process of
their own (`drive_unary_in_process_of_its_own`), as a calling service would, so they do not share the server's
interpreter lock. Both servers also time their own handler (entry to response built) into an in-process list, so
the server side is known apart from the client's view, which also holds gRPC and the network stack.

The Router is timed under several `RouterScenario`s, one server each: the plain policy, rate limits and tier
quotas (in process, and on Redis when one answers) set too high to refuse, and a concurrency cap whose lease
each call gives back with ReportOutcome, so each row shows what that part of the policy adds to Decide.

A run is made of rounds: each round times every scenario and then the echo, and a scenario's ratio to the echo
is the median of its rounds' ratios, each against the echo of its own round. On a shared machine the rate of
the same target swings by a third within minutes; a router timed at one minute against an echo timed at another
measured that swing, while the calls of one round share the machine's mood.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import multiprocessing
import queue
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc
import yaml

ECHO_SERVICE = "prismops.bench.v1.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
ECHO_SCENARIO = "echo (gRPC floor)"


class EchoServer:
    """Start with `start()` (returns the target), stop with `stop()`; usable as a context manager.
    `handler_ns` holds the nanoseconds each answered call spent in the handler."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._address = f"{host}:{port}"
        self._host = host
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.port = 0
        self.handler_ns: list[int] = []

    @property
    def target(self) -> str:
        return f"{self._host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> str:
        self._thread = threading.Thread(target=self._run, name="echo-baseline", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"echo server did not start on {self._address} within {timeout_s} s")
        if self._failure is not None:
            raise RuntimeError(f"echo server cannot listen on {self._address}: {self._failure}") from self._failure
        return self.target

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10.0)

    async def _echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started_ns = time.perf_counter_ns()
        response = request
        self.handler_ns.append(time.perf_counter_ns() - started_ns)
        return response

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(), which is waiting on another thread
            self._failure = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        # as in the router: without this a second server on a taken port would start and share the traffic
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(self._echo)},
        ),))
        self.port = server.add_insecure_port(self._address)
        if self.port == 0:
            raise RuntimeError("no port bound")
        await server.start()
        self._ready.set()
        await self._stopping.wait()
        await server.stop(0)

    def __enter__(self) -> "EchoServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def echo_call(channel: grpc.Channel) -> Callable[..., bytes]:
    """The client side of the echo: bytes in, the same bytes out."""
    return channel.unary_unary(ECHO_METHOD)


@dataclass(frozen=True)
class LoadResult:
    requests: int
    concurrency: int
    errors: int
    seconds: float
    latencies_ms: tuple[float, ...]
    first_error: str = ""

    @property
    def qps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, fraction: float) -> float:
        """Nearest-rank percentile of the successful calls, so p50 <= p99 <= max always holds."""
        return nearest_rank(self.latencies_ms, fraction)

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ms, default=0.0)

    @classmethod
    def merged(cls, parts: Sequence["LoadResult"]) -> "LoadResult":
        """The loads of several rounds as one: calls, errors and seconds summed, latencies pooled."""
        return cls(
            requests=sum(part.requests for part in parts), concurrency=parts[0].concurrency,
            errors=sum(part.errors for part in parts), seconds=sum(part.seconds for part in parts),
            latencies_ms=tuple(ms for part in parts for ms in part.latencies_ms),
            first_error=next((part.first_error for part in parts if part.first_error), ""),
        )


def median_ratio(measured: Sequence[LoadResult], baseline: Sequence[LoadResult]) -> float:
    """The median over rounds of measured QPS / baseline QPS, each round against its own baseline (0.0 when a
    baseline round made no call)."""
    return statistics.median(m.qps / b.qps if b.qps else 0.0 for m, b in zip(measured, baseline, strict=True))


def nearest_rank(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (an observed value, so p50 <= p99 <= max); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def milliseconds(durations_ns: Sequence[int]) -> tuple[float, ...]:
    return tuple(ns / 1e6 for ns in durations_ns)


# Opens one client's connection: returns the call to time and what closes the connection afterwards.
OpenCaller = Callable[[], tuple[Callable[[], Any], Callable[[], None]]]


def drive_unary(
    open_caller: OpenCaller,
    *,
    requests: int,
    concurrency: int,
    warmup: int = 0,
    on_progress: Callable[[int], None] = lambda done: None,
    progress_every: int = 100,
    on_start: Callable[[], None] = lambda: None,
) -> LoadResult:
    """`requests` timed calls split over `concurrency` threads, each on its own connection; each thread first
    makes its share of `warmup` untimed calls, then all start together. QPS is over the timed phase's wall
    time; a failed call counts as an error and is left out of the latencies. `on_start` runs once, after
    every warm-up call has returned and before the first timed call (e.g. to mark where server timings begin)."""
    shares = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    warmups = [warmup // concurrency + (1 if i < warmup % concurrency else 0) for i in range(concurrency)]
    start_line = threading.Barrier(concurrency + 1, action=on_start)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[list[str]] = [[] for _ in range(concurrency)]
    crashes: list[BaseException] = []

    def client(index: int) -> None:
        close: Callable[[], None] = lambda: None
        try:
            call, close = open_caller()
            for _ in range(warmups[index]):
                call()
            start_line.wait()
            timed, failed, pending = latencies[index], errors[index], 0
            for _ in range(shares[index]):
                started = time.perf_counter()
                try:
                    call()
                except grpc.RpcError as error:
                    failed.append(_describe(error))
                else:
                    timed.append((time.perf_counter() - started) * 1000.0)
                pending += 1
                if pending == progress_every:
                    on_progress(pending)
                    pending = 0
            on_progress(pending)
        except threading.BrokenBarrierError:
            return
        except BaseException as exc:  # handed to the main thread, which re-raises it
            crashes.append(exc)
            start_line.abort()
        finally:
            close()

    threads = [threading.Thread(target=client, args=(i,), name=f"bench-client-{i}") for i in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        start_line.wait()
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if crashes:
        raise RuntimeError(f"a benchmark client failed: {_describe(crashes[0])}") from crashes[0]
    all_errors = [e for per_thread in errors for e in per_thread]
    return LoadResult(
        requests=requests, concurrency=concurrency, errors=len(all_errors), seconds=seconds,
        latencies_ms=tuple(ms for per_thread in latencies for ms in per_thread),
        first_error=all_errors[0] if all_errors else "",
    )


CLIENT_KINDS = ("router", "router+release", "echo")


def _client_caller(kind: str, target: str) -> OpenCaller:
    """How a client process opens its connection: the Router's client (Decide, or Decide and the ReportOutcome
    that gives the lease back) or a raw channel to the echo with the Decide request's bytes."""
    request = bench_decide_request()
    if kind == "echo":
        payload = request.SerializeToString()

        def open_echo() -> tuple[Callable[[], Any], Callable[[], None]]:
            channel = grpc.insecure_channel(target)
            grpc.channel_ready_future(channel).result(timeout=10.0)
            call = echo_call(channel)
            return (lambda: call(payload, timeout=10.0)), channel.close

        return open_echo
    from prismops.gateway_grpc.client import RouterClient

    def open_router() -> tuple[Callable[[], Any], Callable[[], None]]:
        client = RouterClient(target)
        if not client.wait_ready(10.0):
            client.close()
            raise RuntimeError(f"the router on {target} did not report SERVING within 10 s")
        return routed_call(client, request, kind == "router+release"), client.close

    return open_router


def _client_process(kind: str, target: str, requests: int, concurrency: int, warmup: int, progress: Any,
                    warmed: Any, go: Any, results: Any) -> None:
    """Entry point of the load process: `drive_unary` against `target`; warm-up done is signalled on `warmed`,
    timing starts when a word comes on `go` (a pipe: setting an Event waits for every waiter, a killed one too);
    the LoadResult (or the failure) goes back on `results`."""
    try:
        def on_start() -> None:
            warmed.set()
            go.recv()

        result = drive_unary(_client_caller(kind, target), requests=requests, concurrency=concurrency,
                             warmup=warmup, on_progress=progress.put, on_start=on_start)
        results.send(("ok", result))
    except BaseException as exc:  # handed to the parent, which raises it with the bench's message
        results.send(("failed", _describe(exc)))
    finally:
        results.close()


def drive_unary_in_process_of_its_own(
    kind: str,
    target: str,
    *,
    requests: int,
    concurrency: int,
    warmup: int = 0,
    on_progress: Callable[[int], None] = lambda done: None,
    on_start: Callable[[], None] = lambda: None,
    timeout_s: float = 600.0,
) -> LoadResult:
    """`drive_unary` with the client threads in a process of their own (spawned), so the server under test
    does not share its interpreter lock with the load: a service calls the router from its own process, and
    in one process every microsecond of the clients' Python was taken from the server (the heavier handler lost
    more). `kind` is one of CLIENT_KINDS; `on_start` runs in this process between warm-up and timing."""
    if kind not in CLIENT_KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {CLIENT_KINDS}")
    context = multiprocessing.get_context("spawn")
    progress, warmed = context.Queue(), context.Event()
    receive, send = context.Pipe(duplex=False)
    go_receive, go = context.Pipe(duplex=False)
    worker = context.Process(target=_client_process, name=f"bench-clients-{kind}", daemon=True,
                             args=(kind, target, requests, concurrency, warmup, progress, warmed, go_receive, send))
    worker.start()
    send.close()
    go_receive.close()
    deadline = time.monotonic() + timeout_s
    started = False
    try:
        while True:
            try:
                on_progress(progress.get(timeout=0.1))
            except queue.Empty:
                pass
            if not started and warmed.is_set():
                on_start()
                try:
                    go.send(True)
                except OSError:  # the process is gone (broken pipe): the checks below say how it ended
                    pass
                started = True
            if receive.poll():
                break
            if not worker.is_alive() and not receive.poll(0.5):
                raise RuntimeError(f"the benchmark client process exited with code {worker.exitcode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the benchmark clients did not finish within {timeout_s:.0f} s")
        try:
            status, value = receive.recv()
        except EOFError:  # the process ended without a word: killed, or it crashed while starting
            worker.join(5.0)
            raise RuntimeError(f"the benchmark client process exited with code {worker.exitcode} "
                               "before it reported") from None
        while True:
            try:
                on_progress(progress.get_nowait())
            except queue.Empty:
                break
    finally:
        go.close()
        worker.join(10.0)
        if worker.is_alive():
            worker.kill()
    if status != "ok":
        raise RuntimeError(f"a benchmark client failed: {value}")
    return value


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


# --- the router against the echo --------------------------------------------------------------------------

BENCH_MODELS = (
    # provider, model, p95 ms, input and output USD per million tokens: the cheapest one misses the SLO
    ("openai", "gpt-4o", 600.0, "2.5", "10"),
    ("openai", "gpt-4o-mini", 412.0, "0.15", "0.6"),
    ("google", "gemini-2.0-flash", 1200.0, "0.10", "0.40"),
)


def bench_live_rows(now: dt.datetime) -> list[dict[str, Any]]:
    """Live rows as the live-stats agent publishes them: fresh, with traffic, priced exactly."""
    return [
        {
            "provider": provider, "model": model, "window_seconds": 300.0, "sample_count": 120, "error_count": 1,
            "error_rate": 1 / 120, "p50_latency_ms": p95 / 2, "p95_latency_ms": p95, "p99_latency_ms": p95 * 1.4,
            "cost_usd": Decimal("0.25"), "tokens": 400_000, "input_price_per_mtok": Decimal(input_price),
            "output_price_per_mtok": Decimal(output_price), "updated_at": now,
        }
        for provider, model, p95, input_price, output_price in BENCH_MODELS
    ]


def bench_decide_request() -> Any:
    """A request shaped like a real one: three allowed models, an SLO, token estimates, session and size."""
    from prismops.gateway_grpc.routing.v1 import routing_pb2

    return routing_pb2.DecideRequest(
        tenant="acme", service="chat", feature="answer", request_id="bench-0001",
        allowed_models=[routing_pb2.ModelRef(provider=p, model=m) for p, m, *_ in BENCH_MODELS],
        latency_slo_ms=800, expected_input_tokens=1200, expected_output_tokens=300,
        session_id="session-42", task_type="classification", prompt_chars=4800, customer="globex",
    )


BENCH_CEILING = 10**8  # calls a minute or a day that the limited scenario lets through: never reached in a run
BENCH_LEASE_CAP = "bench-chat"


@dataclass(frozen=True)
class RouterScenario:
    """A policy the router is timed under. `policy_sections` replace those top-level sections of the base policy
    (the settings' policy file, else the bundled one); `limits_store` is gateway.limits_store for the run; with
    `releases_lease` each call is Decide then the ReportOutcome that gives its lease back, timed as one."""

    name: str
    policy_sections: Mapping[str, Any] = field(default_factory=dict)
    limits_store: str = "local"
    releases_lease: bool = False


PLAIN_SCENARIO = RouterScenario("plain policy")


def rate_limits_scenario(ceiling: int = BENCH_CEILING, limits_store: str = "local") -> RouterScenario:
    """rpm/tpm on every bench model, and the bench tenant in a tier with daily request/token quotas and its own
    rpm/tpm. Each limit lets `ceiling` calls through, so with the default none refuses and what is timed is the
    accounting: every Decide peeks at the buckets and spends the chosen model's and the tier's."""
    request = bench_decide_request()
    tokens = ceiling * (request.expected_input_tokens + request.expected_output_tokens)
    rates = {"rpm": ceiling, "tpm": tokens}
    return RouterScenario(
        f"rate limits + tier quotas ({limits_store})",
        {
            "limits": {"models": {f"{provider}/{model}": rates for provider, model, *_ in BENCH_MODELS}},
            "tenant_tiers": {
                "tiers": {"bench": {"daily_requests": ceiling, "daily_tokens": tokens, **rates}},
                "tenants": {request.tenant: "bench"},
            },
        },
        limits_store=limits_store,
    )


def lease_scenario(max_in_flight: int) -> RouterScenario:
    """A concurrency cap on the bench request's service: Decide takes a lease, the call's ReportOutcome returns
    it. A cap of at least the client threads never refuses, as each thread holds at most one lease at a time."""
    return RouterScenario(
        "lease: Decide + ReportOutcome release",
        {"limits": {"concurrency": [
            {"name": BENCH_LEASE_CAP, "match": {"service": bench_decide_request().service},
             "max_in_flight": max_in_flight},
        ]}},
        releases_lease=True,
    )


def bench_scenarios(concurrency: int) -> tuple[RouterScenario, ...]:
    """What `prismops bench route` times, the plain policy first (its row is the one the P3 goal is about)."""
    return (
        PLAIN_SCENARIO, rate_limits_scenario(), rate_limits_scenario(limits_store="redis"),
        lease_scenario(max_in_flight=concurrency),
    )


def bench_live_table() -> Any:
    """One live table for every scenario, so the rows differ only in policy."""
    from prismops.gateway_grpc.live_table import LiveModelTable

    table = LiveModelTable()
    refresh_live_rows(table)
    return table


def refresh_live_rows(table: Any) -> None:
    """The bench's rows published anew, as the live-stats agent keeps publishing them: rows filled once go stale
    after the policy's `live.max_age_s` (60 s), and a round timed after that measured the static fallback, not the
    routing the row is named for."""
    for row in bench_live_rows(dt.datetime.now(dt.timezone.utc)):
        table.upsert(row)


def scenario_state(settings: Any, scenario: RouterScenario, table: Any) -> Any:
    """The gateway state of one scenario, on a free loopback port: the base policy with the scenario's sections,
    validated by the policy's own parser, and the scenario's limit store. Redis counters go under a key prefix
    of their own, so a run never spends a real tenant's quota (its keys expire as the store's always do)."""
    from prismops.finops.pricing import load_catalog
    from prismops.gateway_grpc.policy_config import BUNDLED_POLICY, PolicyStore, load_policy_file, parse_policy
    from prismops.gateway_grpc.server import GatewayState
    from prismops.testing import free_port

    policy, text = load_policy_file(settings.gateway.policy_file or BUNDLED_POLICY)
    if scenario.policy_sections:
        text = yaml.safe_dump({**yaml.safe_load(text), **scenario.policy_sections}, sort_keys=False)
        policy = parse_policy(text)
    run_settings = settings.with_overrides(
        gateway={"host": "127.0.0.1", "port": free_port(), "limits_store": scenario.limits_store},
        redis={"key_prefix": f"{settings.redis.key_prefix}bench-{secrets.token_hex(4)}:"},
    )
    return GatewayState(run_settings, table, PolicyStore(policy, text),
                        catalog=load_catalog(settings.pricing.catalog, settings.pricing.tenant_overrides))


def limit_store_problem(state: Any) -> str:
    """Why the state's shared limit store cannot be used ("" when it answers, or is in process): a row on a
    Redis that does not answer would time the gateway failing open, not shared limits."""
    ping = getattr(state.limiter.store, "ping", None)
    if ping is None:
        return ""
    redis_settings = state.settings.redis
    try:
        ping()
    except Exception as error:  # redis.RedisError and OSError alike: the row is skipped with the reason
        return f"no Redis answered at {redis_settings.host}:{redis_settings.port} ({_describe(error)})"
    return ""


def leases_held(state: Any) -> int:
    """Leases still held under any of the running policy's concurrency caps."""
    now_s = state.clock().timestamp()
    caps = state.installed_policy().policy.limits.concurrency
    return sum(state.limiter.store.leases_held(cap.name, now_s) for cap in caps)


def routed_call(client: Any, request: Any, releases_lease: bool) -> Callable[[], Any]:
    """One client call as a service makes it: Decide alone, or Decide and then the ReportOutcome that gives
    its lease back."""
    if not releases_lease:
        return lambda: client.decide_message(request, timeout=10.0)

    def decide_and_release() -> Any:
        decision = client.decide_message(request, timeout=10.0)
        client.report_outcome(decision.model, "ok", decision_id=decision.decision_id, lease_id=decision.lease_id,
                              timeout=10.0)
        return decision

    return decide_and_release


@dataclass(frozen=True)
class RouterRun:
    """One scenario: client-side load, the Decide handler times (ms) of its timed calls, its first answer, and
    the leases still held after the run (0 when every lease was given back). `rounds` holds each round's load
    when the run was made of several (`compare_router_with_echo`); `load` is then all of them merged."""

    scenario: RouterScenario
    load: LoadResult
    server_ms: tuple[float, ...]
    first: Any
    leases_held_after: int
    rounds: tuple[LoadResult, ...] = ()

    @property
    def round_loads(self) -> tuple[LoadResult, ...]:
        return self.rounds or (self.load,)

    @classmethod
    def merged(cls, parts: Sequence["RouterRun"]) -> "RouterRun":
        """The rounds of one scenario as one run: loads merged, server times pooled, the first round's answer, the
        leases still held after the last round."""
        return cls(parts[0].scenario, LoadResult.merged([part.load for part in parts]),
                   tuple(ms for part in parts for ms in part.server_ms), parts[0].first, parts[-1].leases_held_after,
                   tuple(part.load for part in parts))


def time_router(
    state: Any,
    scenario: RouterScenario,
    *,
    requests: int,
    concurrency: int,
    warmup: int,
    on_progress: Callable[[int], None] = lambda done: None,
) -> RouterRun:
    """The real Router serving `state` in this process, driven from a client process with the bench request. Each
    decision is encoded as a deployed gateway encodes it for Kafka, on the RPC's thread, and then dropped."""
    from prismops.gateway_grpc.server import EncodingPublisher, build_server
    from prismops.streams.topics import ROUTING_DECISIONS

    decide_ns: list[int] = []
    server = build_server(state.settings, state.table, publisher=EncodingPublisher(ROUTING_DECISIONS), budgets=None,
                          state=state, decide_ns=decide_ns)
    server.start()
    target = f"127.0.0.1:{state.settings.gateway.port}"
    kind = "router+release" if scenario.releases_lease else "router"
    try:
        first_call, close_first = _client_caller(kind, target)()
        try:
            first = first_call()
        finally:
            close_first()
        timed_from: list[int] = []
        load = drive_unary_in_process_of_its_own(
            kind, target, requests=requests,
            concurrency=concurrency, warmup=warmup, on_progress=on_progress,
            on_start=lambda: timed_from.append(len(decide_ns)))
    finally:
        server.stop(0).wait()
    return RouterRun(scenario, load, milliseconds(decide_ns[timed_from[0]:]), first, leases_held(state))


@dataclass(frozen=True)
class RouteBenchResult:
    """Each router scenario that ran (the first is the plain policy's in `prismops bench route`), the echo's
    load and handler times (ms, timed calls only), each round's echo load, and why each scenario that did not run
    was skipped."""

    runs: tuple[RouterRun, ...]
    echo: LoadResult
    echo_server_ms: tuple[float, ...] = ()
    skipped: tuple[str, ...] = ()
    echo_rounds: tuple[LoadResult, ...] = ()

    @property
    def router(self) -> LoadResult:
        return self.runs[0].load

    @property
    def router_server_ms(self) -> tuple[float, ...]:
        return self.runs[0].server_ms

    @property
    def chosen_model(self) -> str:
        model = self.runs[0].first.model
        return f"{model.provider}/{model.model}"

    @property
    def reason_code(self) -> str:
        return self.runs[0].first.reason_code

    @property
    def echo_round_loads(self) -> tuple[LoadResult, ...]:
        return self.echo_rounds or (self.echo,)


def compare_router_with_echo(
    settings: Any,
    *,
    requests: int,
    concurrency: int,
    warmup: int,
    rounds: int = 1,
    scenarios: Sequence[RouterScenario] | None = None,
    on_progress: Callable[[str, int], None] = lambda name, done: None,
) -> RouteBenchResult:
    """`rounds` rounds, each timing every scenario's Router (in process, live table filled in memory and its rows
    published anew before each scenario's round, a server started for the round) and then the echo, with the same
    load: `requests` timed calls per target and round. The echo gets the Decide request's bytes so payloads match. `on_progress` gets the scenario's name
    (ECHO_SCENARIO for the echo) and the calls just done. A scenario whose limit store does not answer is skipped
    with a note."""
    from prismops.gateway_grpc.server import ServeError

    if rounds < 1:
        raise ValueError(f"rounds {rounds}: expected at least 1")
    table = bench_live_table()
    ready: list[tuple[RouterScenario, Any]] = []
    skipped: list[str] = []
    for scenario in scenarios if scenarios is not None else bench_scenarios(concurrency):
        try:
            state = scenario_state(settings, scenario, table)
            problem = limit_store_problem(state)
        except ServeError as error:
            problem = str(error)
        if problem:
            skipped.append(f"{scenario.name}: skipped, {problem}")
            continue
        ready.append((scenario, state))
    if not ready:
        raise RuntimeError("no router scenario could run: " + "; ".join(skipped))

    per_scenario: list[list[RouterRun]] = [[] for _ in ready]
    echo_rounds: list[LoadResult] = []
    echo_server_ms: list[float] = []
    with EchoServer() as echo:
        for _ in range(rounds):
            for (scenario, state), done in zip(ready, per_scenario):
                refresh_live_rows(table)
                done.append(time_router(state, scenario, requests=requests, concurrency=concurrency, warmup=warmup,
                                        on_progress=lambda calls, name=scenario.name: on_progress(name, calls)))
            echo_timed_from: list[int] = []
            echo_rounds.append(drive_unary_in_process_of_its_own(
                "echo", echo.target, requests=requests, concurrency=concurrency, warmup=warmup,
                on_progress=lambda calls: on_progress(ECHO_SCENARIO, calls),
                on_start=lambda: echo_timed_from.append(len(echo.handler_ns))))
            echo_server_ms.extend(milliseconds(echo.handler_ns[echo_timed_from[0]:]))
    return RouteBenchResult(tuple(RouterRun.merged(done) for done in per_scenario), LoadResult.merged(echo_rounds),
                            tuple(echo_server_ms), tuple(skipped), tuple(echo_rounds))
