"""`prismops bench route` end to end through click: the real Router and the echo, both measured."""

from __future__ import annotations

import json
import statistics

import pytest
from click.testing import CliRunner

from prismops.cli.app import main
from prismops.settings import Settings


def test_bench_route_json_has_a_router_and_an_echo_row_with_rates_and_ordered_percentiles():
    result = CliRunner().invoke(
        main, ["bench", "route", "--requests", "100", "--rounds", "2", "--concurrency", "2", "--warmup", "20",
               "--format", "json"],
        obj=Settings(),
    )

    assert result.exit_code == 0, result.output
    rows = {row["scenario"]: row for row in json.loads(result.stdout)}
    # no Redis in this test's settings: its row is skipped with a note, never faked
    assert set(rows) == {"plain policy", "rate limits + tier quotas (local)", "lease: Decide + ReportOutcome release",
                         "echo (gRPC floor)"}
    assert "redis" in result.stderr
    for row in rows.values():
        assert (row["requests"], row["rounds"], row["concurrency"], row["errors"]) == (200, 2, 2, 0)
        assert row["qps"] > 0 and len(row["qps_rounds"]) == 2 and all(qps > 0 for qps in row["qps_rounds"])
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    echo = rows["echo (gRPC floor)"]
    assert (echo["target"], echo["qps_vs_echo"], echo["p50_vs_echo"]) == ("echo (gRPC floor)", 1.0, 1.0)
    assert 0 <= echo["server_p50_ms"] <= echo["server_p99_ms"]
    assert rows["lease: Decide + ReportOutcome release"]["target"] == "routing.v1.Router/Decide + ReportOutcome"
    for name in ("plain policy", "rate limits + tier quotas (local)", "lease: Decide + ReportOutcome release"):
        router = rows[name]
        # each round against the echo of its own round, the median of those
        ratios = [qps / echo_qps for qps, echo_qps in zip(router["qps_rounds"], echo["qps_rounds"])]
        assert router["qps_vs_echo"] == pytest.approx(statistics.median(ratios), abs=0.01)
        assert 0 < router["server_p50_ms"] <= router["server_p99_ms"]
        # the handler alone is part of the call the client timed
        assert router["server_p50_ms"] <= router["p50_ms"] + 0.001
    assert rows["plain policy"]["target"] == "routing.v1.Router/Decide"


def test_bench_route_table_is_for_people():
    result = CliRunner().invoke(main, ["bench", "route", "--requests", "50", "--rounds", "1", "--concurrency", "1",
                                      "--warmup", "0"],
                                obj=Settings())

    assert result.exit_code == 0, result.output
    assert "routing.v1.Router/Decide" in result.stdout and "echo (gRPC floor)" in result.stdout
    assert "server_p50_ms" in result.stdout and "server_p99_ms" in result.stdout
    assert not result.stdout.lstrip().startswith("[")
