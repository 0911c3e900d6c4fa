"""The echo baseline, the load driver and the router scenarios `prismops bench route` rests on."""

from __future__ import annotations

import datetime as dt
import json
import threading

import grpc
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from prismops.cli.app import main
from prismops.gateway_grpc.client import RouterClient, refusal_hints
from prismops.gateway_grpc.server import DiscardingPublisher, build_server
from prismops.settings import Settings
from prismops.testing import echo_baseline, free_port
from prismops.testing.echo_baseline import (
    BENCH_LEASE_CAP, ECHO_SCENARIO, PLAIN_SCENARIO, EchoServer, LoadResult, bench_decide_request, bench_live_table,
    compare_router_with_echo, drive_unary, echo_call, lease_scenario, median_ratio, nearest_rank,
    rate_limits_scenario, scenario_state, time_router,
)


def test_the_echo_answers_with_its_input_bytes_over_a_real_channel():
    with EchoServer() as echo, grpc.insecure_channel(echo.target) as channel:
        call = echo_call(channel)
        assert call(b"\x00prismops\xff", timeout=5.0) == b"\x00prismops\xff"
        assert call(b"", timeout=5.0) == b""
    assert echo.port > 0


def test_an_echo_on_a_taken_port_fails_to_start_with_the_address():
    with EchoServer() as first:
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{first.port}"):
            EchoServer(port=first.port).start()


class CountingCaller:
    """Every `fail_every`-th call raises an RpcError; counts calls and connections."""

    def __init__(self, fail_every: int = 0):
        self.fail_every = fail_every
        self.calls = 0
        self.opened = 0
        self.closed = 0
        self._lock = threading.Lock()

    def open(self):
        with self._lock:
            self.opened += 1
        return self.call, self.close

    def call(self) -> None:
        with self._lock:
            self.calls += 1
            failing = self.fail_every and self.calls % self.fail_every == 0
        if failing:
            raise FailedCall()

    def close(self) -> None:
        with self._lock:
            self.closed += 1


class FailedCall(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "scripted failure"


def test_drive_unary_splits_the_timed_and_warm_up_calls_over_the_threads_and_reports_progress():
    caller = CountingCaller()
    progress: list[int] = []
    lock = threading.Lock()

    def on_progress(done: int) -> None:
        with lock:
            progress.append(done)

    result = drive_unary(caller.open, requests=1003, concurrency=4, warmup=10, on_progress=on_progress,
                         progress_every=100)

    assert caller.calls == 1013
    assert (caller.opened, caller.closed) == (4, 4)
    assert sum(progress) == 1003
    assert (result.requests, result.concurrency, result.errors) == (1003, 4, 0)
    assert len(result.latencies_ms) == 1003
    assert result.seconds > 0 and result.qps == pytest.approx(1003 / result.seconds)


def test_failed_calls_are_counted_and_left_out_of_the_latencies():
    caller = CountingCaller(fail_every=5)

    result = drive_unary(caller.open, requests=100, concurrency=1)

    assert result.errors == 20
    assert len(result.latencies_ms) == 80
    assert result.first_error == "UNAVAILABLE: scripted failure"


def test_on_start_runs_once_after_every_warm_up_call_and_before_any_timed_one():
    caller = CountingCaller()
    calls_at_start: list[int] = []

    result = drive_unary(caller.open, requests=40, concurrency=4, warmup=12,
                         on_start=lambda: calls_at_start.append(caller.calls))

    assert calls_at_start == [12]
    assert (caller.calls, result.requests) == (52, 40)


def test_the_echo_times_its_handler_once_per_call():
    with EchoServer() as echo, grpc.insecure_channel(echo.target) as channel:
        call = echo_call(channel)
        for _ in range(5):
            call(b"ping", timeout=5.0)
    assert len(echo.handler_ns) == 5
    assert all(0 <= ns < 10**9 for ns in echo.handler_ns)


def test_compare_keeps_the_server_times_of_the_timed_calls_only():
    result = compare_router_with_echo(Settings(), requests=30, concurrency=2, warmup=10)

    assert result.runs[0].scenario == PLAIN_SCENARIO
    assert (result.router.errors, result.echo.errors) == (0, 0)
    assert (len(result.router_server_ms), len(result.echo_server_ms)) == (30, 30)
    for run in result.runs:
        assert run.load.errors == 0 and len(run.server_ms) == 30 and all(ms > 0 for ms in run.server_ms)
    assert all(ms >= 0 for ms in result.echo_server_ms)


def test_rounds_time_each_scenario_and_the_echo_once_per_round_and_pool_the_timed_calls():
    result = compare_router_with_echo(Settings(), requests=20, concurrency=2, warmup=4, rounds=3,
                                      scenarios=[PLAIN_SCENARIO])

    [run] = result.runs
    assert [load.requests for load in run.rounds] == [20, 20, 20]
    assert [load.requests for load in result.echo_rounds] == [20, 20, 20]
    assert (run.load.requests, result.echo.requests) == (60, 60)
    assert (len(run.server_ms), len(result.echo_server_ms)) == (60, 60)
    assert run.load.seconds == pytest.approx(sum(load.seconds for load in run.rounds))


def test_every_round_routes_on_rows_published_just_before_it(monkeypatch: pytest.MonkeyPatch):
    # the policy serves live rows for 60 s: a run of several rounds outlasts rows published once
    published: list[dt.datetime] = []
    real_time_router = echo_baseline.time_router

    def time_router(state, scenario, **kwargs):  # type: ignore[no-untyped-def]
        published.append(state.table.get("openai", "gpt-4o-mini")["updated_at"])
        return real_time_router(state, scenario, **kwargs)

    monkeypatch.setattr(echo_baseline, "time_router", time_router)
    compare_router_with_echo(Settings(), requests=5, concurrency=1, warmup=1, rounds=3, scenarios=[PLAIN_SCENARIO])

    assert len(published) == 3 and published == sorted(set(published))


def load(requests: int, seconds: float, latencies=(), errors: int = 0, first_error: str = "") -> LoadResult:
    return LoadResult(requests=requests, concurrency=2, errors=errors, seconds=seconds, latencies_ms=tuple(latencies),
                      first_error=first_error)


def test_merged_loads_sum_calls_errors_and_seconds_and_pool_latencies():
    merged = LoadResult.merged([load(10, 2.0, [1.0, 3.0]), load(30, 1.0, [2.0], errors=1, first_error="UNAVAILABLE")])

    assert (merged.requests, merged.errors, merged.seconds, merged.first_error) == (40, 1, 3.0, "UNAVAILABLE")
    assert sorted(merged.latencies_ms) == [1.0, 2.0, 3.0]
    assert merged.qps == pytest.approx(40 / 3.0)


def test_the_ratio_to_the_echo_is_the_median_of_each_round_against_its_own_echo():
    # 0.8, 0.8 and 0.7 round by round: the median is 0.8, where the pooled rates would give 0.75
    router = [load(80, 1.0), load(8, 1.0), load(70, 1.0)]
    echo = [load(100, 1.0), load(10, 1.0), load(100, 1.0)]

    assert median_ratio(router, echo) == pytest.approx(0.8)
    assert median_ratio([load(5, 1.0)], [load(0, 0.0)]) == 0.0
    with pytest.raises(ValueError):
        median_ratio(router, echo[:2])


def without_redis() -> Settings:
    """Settings whose Redis is a loopback port nobody listens on."""
    return Settings().with_overrides(redis={"port": free_port()})


class Serving:
    """The Router serving a scenario's state, with one client (for checks outside the timed run)."""

    def __init__(self, state):
        self.server = build_server(state.settings, state.table, publisher=DiscardingPublisher(), state=state)
        self.client = RouterClient(f"127.0.0.1:{state.settings.gateway.port}")

    def __enter__(self) -> RouterClient:
        self.server.start()
        assert self.client.wait_ready(5.0)
        return self.client

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()
        self.server.stop(0).wait()


def test_every_call_of_the_limits_scenario_is_charged_to_the_tier_quota():
    # a daily quota of exactly the run's calls (1 first call + 4 warm-up + 20 timed): all pass, the next is refused
    state = scenario_state(Settings(), rate_limits_scenario(ceiling=25), bench_live_table())

    run = time_router(state, rate_limits_scenario(ceiling=25), requests=20, concurrency=2, warmup=4)

    assert run.load.errors == 0 and run.first.tenant_tier == "bench"
    with Serving(state) as client, pytest.raises(grpc.RpcError) as refused:
        client.decide_message(bench_decide_request(), timeout=5.0)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refusal_hints(refused.value)[1] == "tier_daily_limit"


def test_the_limits_scenario_limits_every_bench_model_and_never_trips_in_a_bench_run():
    policy = scenario_state(Settings(), rate_limits_scenario(), bench_live_table()).installed_policy().policy

    assert set(policy.limits.models) == {"openai/gpt-4o", "openai/gpt-4o-mini", "google/gemini-2.0-flash"}
    assert all(limit.rpm >= 10**8 and limit.tpm for limit in policy.limits.models.values())
    tier = policy.tenant_tiers.tiers["bench"]
    assert policy.tenant_tiers.tenants[bench_decide_request().tenant] == "bench"
    assert tier.daily_requests >= 10**8 and tier.daily_tokens and tier.rpm and tier.tpm


def test_the_lease_scenario_gives_every_lease_back_and_its_cap_is_enforced():
    state = scenario_state(Settings(), lease_scenario(max_in_flight=2), bench_live_table())

    run = time_router(state, lease_scenario(max_in_flight=2), requests=40, concurrency=2, warmup=6)

    assert run.load.errors == 0
    assert run.first.lease_id.startswith(f"{BENCH_LEASE_CAP}/")
    assert run.leases_held_after == 0
    with Serving(state) as client:
        held = [client.decide_message(bench_decide_request(), timeout=5.0) for _ in range(2)]
        with pytest.raises(grpc.RpcError) as refused:
            client.decide_message(bench_decide_request(), timeout=5.0)
    assert all(decision.lease_id for decision in held)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refusal_hints(refused.value)[1] == "concurrency_limited"


def test_the_plain_scenario_takes_no_lease():
    state = scenario_state(Settings(), PLAIN_SCENARIO, bench_live_table())

    run = time_router(state, PLAIN_SCENARIO, requests=10, concurrency=1, warmup=0)

    assert (run.load.errors, run.first.lease_id, run.leases_held_after) == (0, "", 0)


def test_shared_limits_without_a_redis_are_skipped_with_a_note_not_timed():
    settings = without_redis()

    result = compare_router_with_echo(settings, requests=10, concurrency=1, warmup=0,
                                      scenarios=[PLAIN_SCENARIO, rate_limits_scenario(limits_store="redis")])

    assert [run.scenario for run in result.runs] == [PLAIN_SCENARIO]
    [note] = result.skipped
    assert note.startswith("rate limits + tier quotas (redis): skipped, no Redis answered at ")
    assert f":{settings.redis.port} " in note


def test_bench_route_json_has_one_object_per_scenario_with_the_same_keys():
    result = CliRunner().invoke(
        main, ["bench", "route", "--requests", "40", "--rounds", "1", "--concurrency", "2", "--warmup", "4",
               "--format", "json"],
        obj=without_redis(),
    )

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["scenario"] for row in rows] == [
        "plain policy", "rate limits + tier quotas (local)", "lease: Decide + ReportOutcome release", ECHO_SCENARIO,
    ]
    keys = {"scenario", "target", "requests", "rounds", "concurrency", "errors", "qps", "qps_rounds", "p50_ms",
            "p99_ms", "max_ms", "qps_vs_echo", "p50_vs_echo", "server_p50_ms", "server_p99_ms"}
    assert all(set(row) == keys for row in rows)
    assert all(row["errors"] == 0 and row["qps"] > 0 for row in rows)
    assert "rate limits + tier quotas (redis): skipped, no Redis answered" in result.stderr


def test_a_client_that_cannot_connect_fails_the_run_with_its_reason():
    def unreachable():
        raise FailedCall()

    with pytest.raises(RuntimeError, match="UNAVAILABLE: scripted failure"):
        drive_unary(unreachable, requests=10, concurrency=3)


def test_nearest_rank_of_nothing_is_zero():
    assert (nearest_rank([], 0.5), nearest_rank([3.0], 0.99)) == (0.0, 3.0)


def test_percentiles_are_nearest_rank():
    result = LoadResult(requests=10, concurrency=1, errors=0, seconds=1.0,
                        latencies_ms=tuple(float(ms) for ms in range(10, 0, -1)))
    assert (result.percentile_ms(0.5), result.percentile_ms(0.99), result.max_ms) == (5.0, 10.0, 10.0)
    assert result.percentile_ms(0.1) == 1.0


@given(st.lists(st.floats(min_value=0.001, max_value=10_000, allow_nan=False), min_size=1, max_size=300))
def test_p50_never_exceeds_p99_nor_p99_the_max(latencies):
    result = LoadResult(requests=len(latencies), concurrency=1, errors=0, seconds=1.0, latencies_ms=tuple(latencies))
    assert min(latencies) <= result.percentile_ms(0.5) <= result.percentile_ms(0.99) <= result.max_ms == max(latencies)


def test_clients_in_a_process_of_their_own_warm_up_before_on_start_and_time_the_rest():
    from prismops.testing.echo_baseline import EchoServer, drive_unary_in_process_of_its_own

    seen_at_start: list[int] = []
    progress: list[int] = []
    with EchoServer() as echo:
        result = drive_unary_in_process_of_its_own(
            "echo", echo.target, requests=60, concurrency=3, warmup=9, on_progress=progress.append,
            on_start=lambda: seen_at_start.append(len(echo.handler_ns)))
        answered = len(echo.handler_ns)
    assert seen_at_start == [9], "on_start runs after every warm-up call returned and before any timed one"
    assert (result.requests, result.errors, len(result.latencies_ms), answered) == (60, 0, 60, 69)
    assert sum(progress) == 60
    with pytest.raises(ValueError):
        drive_unary_in_process_of_its_own("nothing", "127.0.0.1:1", requests=1, concurrency=1)


def test_a_client_process_that_dies_without_a_word_fails_the_run_with_its_exit_code():
    import multiprocessing

    from prismops.testing.echo_baseline import EchoServer, drive_unary_in_process_of_its_own

    def kill_the_clients() -> None:  # between warm-up and timing: the process is waiting for the go
        for child in multiprocessing.active_children():
            if child.name == "bench-clients-echo":
                child.kill()
                child.join(5.0)

    with EchoServer() as echo, pytest.raises(RuntimeError, match=r"exited with code -9 before it reported"):
        drive_unary_in_process_of_its_own("echo", echo.target, requests=10, concurrency=1, warmup=1,
                                          on_start=kill_the_clients)
