"""`prismops gateway serve|decide|outcome|tables|policy|token-hash`: run the Router, or talk to a running one."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from prismops.cli.errors import show_kafka_client_logs
from prismops.cli.output import FORMAT_OPTION, emit, emit_json, emit_table, fail, stderr_console, stdout_console
from prismops.settings import Settings

CANDIDATE_COLUMNS = [
    "model", "live", "p95_ms", "error_rate", "samples", "est_cost_usd", "breaker", "eligible", "verdict",
]


@click.group(name="gateway")
def command() -> None:
    """The cost-aware model router (routing.v1.Router over gRPC)."""


@command.command()
@click.option("--host", default=None, help="listen address; default: gateway.host from settings")
@click.option("--port", type=int, default=None, help="listen port; default: gateway.port from settings")
@click.pass_obj
def serve(settings: Settings, host: str | None, port: int | None) -> None:
    """Serve Router, health and reflection in the foreground until SIGINT/SIGTERM."""
    from prismops.gateway_grpc.server import ServeError
    from prismops.gateway_grpc.server import serve as run_server

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if overrides:
        settings = settings.with_overrides(gateway=overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    show_kafka_client_logs()
    stop_event = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_event.set())
    try:
        run_server(settings, stop_event)
    except ServeError as error:
        fail(escape(str(error)))


def _parse_model(text: str, option: str = "--allow") -> tuple[str, str]:
    provider, sep, model = text.partition("/")
    if not (sep and provider and model):
        raise click.BadParameter(f"{text!r} is not provider/model", param_hint=option)
    return provider, model


def _target_options(function: Any) -> Any:
    function = click.option("--target", default=None, help="host:port of the gateway; default: gateway host/port")(function)
    function = click.option("--token", envvar="PRISMOPS_GATEWAY_TOKEN", default=None,
                            help="bearer token (or PRISMOPS_GATEWAY_TOKEN)")(function)
    function = click.option("--tls-root-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                            default=None, help="PEM root certificate: connect with TLS")(function)
    return click.option("--timeout", type=float, default=5.0, show_default=True, help="seconds")(function)


def _client(settings: Settings, target: str | None, token: str | None, tls_root_cert: Path | None) -> Any:
    from prismops.gateway_grpc.client import RouterClient

    root = tls_root_cert.read_bytes() if tls_root_cert else None
    return RouterClient(target or f"{settings.gateway.host}:{settings.gateway.port}", token=token, tls_root_cert=root)


def _rpc_failed(client: Any, error: Any) -> None:
    fail(escape(f"{client.target}: {error.code().name}: {error.details()}"))


def response_as_dict(response: Any) -> dict[str, Any]:
    """The DecideResponse as plain data; costs stay decimal strings."""
    def retry(policy: Any) -> dict[str, Any]:
        return {"max_attempts": policy.max_attempts, "backoff_ms": list(policy.backoff_ms), "retry_on": list(policy.retry_on)}

    return {
        "decision_id": response.decision_id,
        "provider": response.model.provider,
        "model": response.model.model,
        "reason_code": response.reason_code,
        "reason_codes": list(response.reason_codes),
        "reason": response.reason,
        "estimated_cost_usd": response.estimated_cost_usd or None,
        "route": response.route,
        "policy_version": response.policy_version,
        "retry": retry(response.retry),
        "fallbacks": [
            {"provider": f.model.provider, "model": f.model.model, "estimated_cost_usd": f.estimated_cost_usd or None}
            for f in response.fallbacks
        ],
        "shadow": f"{response.shadow.provider}/{response.shadow.model}" if response.HasField("shadow") else None,
        "experiment": response.experiment or None,
        "arm": response.arm or None,
        "budget": {
            "status": response.budget.status, "budget_id": response.budget.budget_id or None,
            "used_pct": response.budget.used_pct if response.budget.budget_id else None,
            "downgraded": response.budget.downgraded, "tier": response.budget.tier or None,
        },
        "static_fallback": response.static_fallback,
        "live_table_age_ms": response.live_table_age_ms if response.live_table_age_ms >= 0 else None,
        "candidates": [
            {
                "provider": c.model.provider,
                "model": c.model.model,
                "has_live_data": c.has_live_data,
                "p95_latency_ms": c.p95_latency_ms if c.has_live_data else None,
                "error_rate": c.error_rate if c.has_live_data else None,
                "sample_count": c.sample_count,
                "estimated_cost_usd": c.estimated_cost_usd or None,
                "breaker_state": c.breaker_state,
                "eligible": c.eligible,
                "verdict": c.verdict,
            }
            for c in response.candidates
        ],
    }


@command.command()
@click.option("--tenant", required=True)
@click.option("--service", required=True)
@click.option("--feature", default="", help="product feature; with the service it selects the policy route")
@click.option("--allow", "allowed", multiple=True, metavar="PROVIDER/MODEL",
              help="an allowed model, in order of preference; repeat for more; none: the route's models")
@click.option("--slo-ms", type=float, default=0.0, show_default=True, help="accepted p95 latency, ms; 0: the route's")
@click.option("--input-tokens", type=int, default=0, show_default=True, help="0: the gateway's default")
@click.option("--output-tokens", type=int, default=0, show_default=True, help="0: the gateway's default")
@click.option("--prompt-chars", type=int, default=0, show_default=True, help="prompt size (complexity rules)")
@click.option("--task-type", default="", help="e.g. classification, reasoning (complexity rules)")
@click.option("--hint", "hints", multiple=True, help="e.g. simple, complex; repeat for more")
@click.option("--session", "session_id", default="", help="session id (experiments sticky by session)")
@click.option("--customer", default="")
@click.option("--structured-output", is_flag=True, help="needs strict structured output")
@click.option("--vision", is_flag=True, help="sends images")
@click.option("--region", default="", help="must stay in this region")
@click.option("--request-id", default="")
@_target_options
@FORMAT_OPTION
@click.pass_obj
def decide(
    settings: Settings, tenant: str, service: str, feature: str, allowed: tuple[str, ...], slo_ms: float,
    input_tokens: int, output_tokens: int, prompt_chars: int, task_type: str, hints: tuple[str, ...],
    session_id: str, customer: str, structured_output: bool, vision: bool, region: str, request_id: str,
    target: str | None, token: str | None, tls_root_cert: Path | None, timeout: float, fmt: str,
) -> None:
    """Ask a running gateway which model to call, and why."""
    models = [_parse_model(text) for text in allowed]
    import grpc

    with _client(settings, target, token, tls_root_cert) as client:
        try:
            response = client.decide(
                tenant, service, feature, models, latency_slo_ms=slo_ms, expected_input_tokens=input_tokens,
                expected_output_tokens=output_tokens, request_id=request_id, timeout=timeout, session_id=session_id,
                task_type=task_type, hints=list(hints), prompt_chars=prompt_chars,
                requires_structured_output=structured_output, requires_vision=vision, region=region, customer=customer,
            )
        except grpc.RpcError as error:
            _rpc_failed(client, error)
    result = response_as_dict(response)
    if fmt == "json":
        emit_json(result)
        return
    cost = f" (est. ${result['estimated_cost_usd']})" if result["estimated_cost_usd"] else ""
    stdout_console.print(
        f"[bold]{escape(result['provider'])}/{escape(result['model'])}[/]{cost}  "
        f"[dim]{' '.join(result['reason_codes'])} · route {escape(result['route'])} v{result['policy_version']}[/]",
        highlight=False,
    )
    stdout_console.print(escape(result["reason"]), highlight=False)
    extras = []
    if result["fallbacks"]:
        extras.append("fallbacks: " + ", ".join(f"{f['provider']}/{f['model']}" for f in result["fallbacks"]))
    if result["shadow"]:
        extras.append(f"shadow: {result['shadow']}")
    if result["experiment"]:
        extras.append(f"experiment {result['experiment']}: arm {result['arm']}")
    if result["budget"]["budget_id"]:
        budget = result["budget"]
        extras.append(f"budget {budget['budget_id']}: {budget['status']} at {budget['used_pct']:.1f}%"
                      + (f", downgraded to {budget['tier']}" if budget["downgraded"] else ""))
    for line in extras:
        stdout_console.print(escape(line), highlight=False)
    rows = [
        {
            "model": f"{c['provider']}/{c['model']}",
            "live": "yes" if c["has_live_data"] else "no",
            "p95_ms": c["p95_latency_ms"],
            "error_rate": c["error_rate"],
            "samples": c["sample_count"],
            "est_cost_usd": c["estimated_cost_usd"],
            "breaker": c["breaker_state"],
            "eligible": "yes" if c["eligible"] else "no",
            "verdict": c["verdict"],
        }
        for c in result["candidates"]
    ]
    emit_table(rows, title=f"candidates (decision {result['decision_id']})", columns=CANDIDATE_COLUMNS)


@command.command()
@click.option("--model", "model_text", required=True, metavar="PROVIDER/MODEL")
@click.option("--status", type=click.Choice(["ok", "rate_limited", "server_error", "timeout", "client_error"]),
              default=None, help="outcome; or give --http-status")
@click.option("--http-status", type=int, default=0, help="the provider's HTTP status (429, 5xx, 4xx, 2xx)")
@click.option("--latency-ms", type=float, default=0.0)
@click.option("--decision-id", default="")
@click.option("--shadow", is_flag=True, help="the outcome of a shadow call (never moves breakers)")
@click.option("--retry-after-ms", type=click.IntRange(min=0), default=0,
              help="a 429's Retry-After: the model's breaker opens for exactly this long")
@click.option("--lease-id", default="", help="the decision's concurrency lease, released by this report")
@click.option("--input-tokens", type=click.IntRange(min=0), default=0, help="tokens used; corrects the estimate")
@click.option("--output-tokens", type=click.IntRange(min=0), default=0)
@_target_options
@FORMAT_OPTION
@click.pass_obj
def outcome(
    settings: Settings, model_text: str, status: str | None, http_status: int, latency_ms: float, decision_id: str,
    shadow: bool, retry_after_ms: int, lease_id: str, input_tokens: int, output_tokens: int, target: str | None,
    token: str | None, tls_root_cert: Path | None, timeout: float, fmt: str,
) -> None:
    """Report how a call to a model went (feeds the circuit breakers)."""
    model = _parse_model(model_text, "--model")
    if status is None and not http_status:
        fail("give --status or --http-status")
    import grpc

    with _client(settings, target, token, tls_root_cert) as client:
        try:
            response = client.report_outcome(
                model, status or "", decision_id=decision_id, http_status=http_status, latency_ms=latency_ms,
                shadow=shadow, timeout=timeout, retry_after_ms=retry_after_ms, lease_id=lease_id,
                input_tokens=input_tokens, output_tokens=output_tokens,
            )
        except grpc.RpcError as error:
            _rpc_failed(client, error)
    row = {"model": model_text, "breaker_state": response.breaker_state,
           "consecutive_failures": response.consecutive_failures, "retry_in_s": response.retry_in_s}
    if lease_id:
        row["lease_state"] = response.lease_state
    emit([row], fmt, title="breaker")


@command.command()
@_target_options
@FORMAT_OPTION
@click.pass_obj
def tables(settings: Settings, target: str | None, token: str | None, tls_root_cert: Path | None, timeout: float,
           fmt: str) -> None:
    """The gateway's live tables: models, budgets, breakers and canaries."""
    import grpc

    with _client(settings, target, token, tls_root_cert) as client:
        try:
            response = client.get_tables(timeout=timeout)
        except grpc.RpcError as error:
            _rpc_failed(client, error)
    result = {
        "policy_version": response.policy_version,
        "models": [
            {"model": f"{m.model.provider}/{m.model.model}", "samples": m.sample_count, "p50_ms": m.p50_latency_ms,
             "p95_ms": m.p95_latency_ms, "p99_ms": m.p99_latency_ms, "p95_ttft_ms": m.p95_ttft_ms,
             "error_rate": m.error_rate, "rate_limited_rate": m.rate_limited_rate, "rps": m.requests_per_second,
             "tokens_per_s": m.tokens_per_second, "usd_per_1k_in": m.cost_per_1k_input_usd or None,
             "usd_per_1k_out": m.cost_per_1k_output_usd or None, "age_ms": m.age_ms, "stale": m.stale}
            for m in response.models
        ],
        "budgets": [
            {"scope": f"{b.scope}/{b.scope_id}", "budget_id": b.budget_id, "period": b.period, "unit": b.unit,
             "limit": b.limit, "spent": b.spent, "used_pct": b.used_pct, "status": b.status}
            for b in response.budgets
        ],
        "breakers": [
            {"model": f"{b.model.provider}/{b.model.model}", "state": b.state,
             "consecutive_failures": b.consecutive_failures, "retry_in_s": round(b.retry_in_s, 1)}
            for b in response.breakers
        ],
        "canaries": [
            {"route": c.route, "model": f"{c.model.provider}/{c.model.model}", "percent": c.percent, "state": c.state,
             "reason": c.reason}
            for c in response.canaries
        ],
    }
    if fmt == "json":
        emit_json(result)
        return
    for name in ("models", "budgets", "breakers", "canaries"):
        emit_table(result[name], title=f"{name} (policy v{result['policy_version']})")


@command.group()
def policy() -> None:
    """Read or replace the routing policy of a running gateway (replacing needs an admin token)."""


@policy.command(name="get")
@_target_options
@FORMAT_OPTION
@click.pass_obj
def policy_get(settings: Settings, target: str | None, token: str | None, tls_root_cert: Path | None,
               timeout: float, fmt: str) -> None:
    """Print the installed policy YAML (with its version on stderr)."""
    import grpc

    with _client(settings, target, token, tls_root_cert) as client:
        try:
            document = client.get_policy(timeout=timeout)
        except grpc.RpcError as error:
            _rpc_failed(client, error)
    if fmt == "json":
        emit_json({"version": document.version, "updated_by": document.updated_by,
                   "updated_at": document.updated_at, "yaml": document.yaml})
        return
    stderr_console.print(f"policy version {document.version}, by {escape(document.updated_by)} at {document.updated_at}")
    click.echo(document.yaml, nl=False)


@policy.command(name="set")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--comment", default="", help="why; recorded in the audit event")
@click.option("--expected-version", type=int, default=0, help="apply only if this version is still current")
@_target_options
@FORMAT_OPTION
@click.pass_obj
def policy_set(settings: Settings, file: Path, comment: str, expected_version: int, target: str | None,
               token: str | None, tls_root_cert: Path | None, timeout: float, fmt: str) -> None:
    """Validate and install FILE as the policy (admin role; audited)."""
    import grpc

    with _client(settings, target, token, tls_root_cert) as client:
        try:
            response = client.set_policy(file.read_text(encoding="utf-8"), expected_version=expected_version,
                                         comment=comment)
        except grpc.RpcError as error:
            _rpc_failed(client, error)
    if fmt == "json":
        emit_json({"version": response.version, "audit_id": response.audit_id, "diff": response.diff})
        return
    stdout_console.print(f"installed policy version {response.version} (audit {response.audit_id})", highlight=False)
    click.echo(response.diff, nl=False)


@command.command(name="token-hash")
@click.argument("token")
@FORMAT_OPTION
def token_hash(token: str, fmt: str) -> None:
    """The token_sha256 to put in gateway.tokens_file for TOKEN."""
    from prismops.gateway_grpc.auth import token_digest

    emit([{"token_sha256": token_digest(token)}], fmt)
