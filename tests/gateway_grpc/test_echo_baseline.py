"""The echo baseline and the load driver `prismops bench route` rests on."""

from __future__ import annotations

import threading

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prismops.settings import Settings
from prismops.testing.echo_baseline import (
    EchoServer, LoadResult, compare_router_with_echo, drive_unary, echo_call, nearest_rank,
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

    assert (result.router.errors, result.echo.errors) == (0, 0)
    assert (len(result.router_server_ms), len(result.echo_server_ms)) == (30, 30)
    assert all(ms > 0 for ms in result.router_server_ms)
    assert all(ms >= 0 for ms in result.echo_server_ms)


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
