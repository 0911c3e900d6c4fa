"""`prismops gateway serve|decide`: run the Router, or ask a running one which model to call."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click
from rich.markup import escape

from prismops.output import FORMAT_OPTION, emit_json, emit_table, fail, stdout_console
from prismops.settings import Settings

CANDIDATE_COLUMNS = ["model", "live", "p95_ms", "error_rate", "samples", "est_cost_usd", "eligible", "verdict"]


def _ensure_stubs() -> None:
    """The stubs are build outputs; generate them when missing or stale instead of failing on import."""
    from gateway_grpc import codegen

    try:
        codegen.ensure_stubs()
    except (codegen.CodegenError, OSError) as error:
        fail(escape(f"cannot generate the gRPC stubs ({error}); run `prismops proto`"))


@click.group(name="gateway")
def command() -> None:
    """The cost-aware model router (routing.v1.Router over gRPC)."""


@command.command()
@click.option("--host", default=None, help="listen address; default: gateway.host from settings")
@click.option("--port", type=int, default=None, help="listen port; default: gateway.port from settings")
@click.pass_obj
def serve(settings: Settings, host: str | None, port: int | None) -> None:
    """Serve Router, health and reflection in the foreground until SIGINT/SIGTERM."""
    _ensure_stubs()
    from gateway_grpc.server import ServeError
    from gateway_grpc.server import serve as run_server

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if overrides:
        settings = settings.with_overrides(gateway=overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop_event = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_event.set())
    try:
        run_server(settings, stop_event)
    except ServeError as error:
        fail(escape(str(error)))


def _parse_model(text: str) -> tuple[str, str]:
    provider, sep, model = text.partition("/")
    if not (sep and provider and model):
        raise click.BadParameter(f"{text!r} is not provider/model", param_hint="--allow")
    return provider, model


def response_as_dict(response: Any) -> dict[str, Any]:
    """The DecideResponse as plain data; costs stay decimal strings."""
    return {
        "decision_id": response.decision_id,
        "provider": response.model.provider,
        "model": response.model.model,
        "reason_code": response.reason_code,
        "reason": response.reason,
        "estimated_cost_usd": response.estimated_cost_usd or None,
        "candidates": [
            {
                "provider": c.model.provider,
                "model": c.model.model,
                "has_live_data": c.has_live_data,
                "p95_latency_ms": c.p95_latency_ms if c.has_live_data else None,
                "error_rate": c.error_rate if c.has_live_data else None,
                "sample_count": c.sample_count,
                "estimated_cost_usd": c.estimated_cost_usd or None,
                "eligible": c.eligible,
                "verdict": c.verdict,
            }
            for c in response.candidates
        ],
    }


@command.command()
@click.option("--tenant", required=True)
@click.option("--service", required=True)
@click.option("--feature", required=True)
@click.option("--allow", "allowed", multiple=True, required=True, metavar="PROVIDER/MODEL",
              help="an allowed model, in order of preference; repeat for more")
@click.option("--slo-ms", type=float, required=True, help="the p95 latency the caller accepts, ms")
@click.option("--input-tokens", type=int, default=0, show_default=True, help="0: the gateway's default")
@click.option("--output-tokens", type=int, default=0, show_default=True, help="0: the gateway's default")
@click.option("--request-id", default="")
@click.option("--target", default=None, help="host:port of the gateway; default: gateway host/port from settings")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="seconds")
@FORMAT_OPTION
@click.pass_obj
def decide(
    settings: Settings, tenant: str, service: str, feature: str, allowed: tuple[str, ...], slo_ms: float,
    input_tokens: int, output_tokens: int, request_id: str, target: str | None, timeout: float, fmt: str,
) -> None:
    """Ask a running gateway which model to call, and why."""
    models = [_parse_model(text) for text in allowed]
    _ensure_stubs()
    import grpc

    from gateway_grpc.client import RouterClient

    target = target or f"{settings.gateway.host}:{settings.gateway.port}"
    with RouterClient(target) as client:
        try:
            response = client.decide(
                tenant, service, feature, models, latency_slo_ms=slo_ms, expected_input_tokens=input_tokens,
                expected_output_tokens=output_tokens, request_id=request_id, timeout=timeout,
            )
        except grpc.RpcError as error:
            fail(escape(f"{target}: {error.code().name}: {error.details()}"))
    result = response_as_dict(response)
    if fmt == "json":
        emit_json(result)
        return
    cost = f" (est. ${result['estimated_cost_usd']})" if result["estimated_cost_usd"] else ""
    stdout_console.print(
        f"[bold]{escape(result['provider'])}/{escape(result['model'])}[/]{cost}  [dim]{result['reason_code']}[/]",
        highlight=False,
    )
    stdout_console.print(escape(result["reason"]), highlight=False)
    rows = [
        {
            "model": f"{c['provider']}/{c['model']}",
            "live": "yes" if c["has_live_data"] else "no",
            "p95_ms": c["p95_latency_ms"],
            "error_rate": c["error_rate"],
            "samples": c["sample_count"],
            "est_cost_usd": c["estimated_cost_usd"],
            "eligible": "yes" if c["eligible"] else "no",
            "verdict": c["verdict"],
        }
        for c in result["candidates"]
    ]
    emit_table(rows, title=f"candidates (decision {result['decision_id']})", columns=CANDIDATE_COLUMNS)
