"""Bearer tokens → roles for the router, as a gRPC server interceptor.

Roles nest: `viewer` may read (GetTables, GetPolicy, health), `service` may also route (Decide,
ReportOutcome), `admin` may also change the policy (SetPolicy). Tokens live in a YAML file
(`gateway.tokens_file`), preferably as SHA-256 hashes so the file itself grants nothing:

    - {name: checkout-service, role: service, token_sha256: 9f86d0...}
    - {name: alice, role: admin, token_sha256: ...}

Without a tokens file every caller is the anonymous `service`: routing works out of the box on a laptop, and
the policy can only be changed by editing the file (hot reload), never over the network.
Health checking and reflection stay open so load balancers and grpcurl work without a token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from prismops.errors import FieldRuleError
from prismops.gateway_grpc.request_bounds import cap_detail

ROLES = ("viewer", "service", "admin")
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")
METHOD_ROLES: Mapping[str, str] = {
    "/routing.v1.Router/Decide": "service",
    "/routing.v1.Router/ReportOutcome": "service",
    "/routing.v1.Router/GetTables": "viewer",
    "/routing.v1.RouterAdmin/GetPolicy": "viewer",
    "/routing.v1.RouterAdmin/SetPolicy": "admin",
}
ANONYMOUS_ROLE = "service"


class TokensFileError(FieldRuleError):
    """The tokens file cannot be used; names the entry and the rule."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (or "anonymous") and its role."""

    name: str
    role: str

    def may(self, required: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(required)


ANONYMOUS = Principal("anonymous", ANONYMOUS_ROLE)
current_principal: ContextVar[Principal] = ContextVar("current_principal", default=ANONYMOUS)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenGrants:
    """sha256(token) → principal; empty means authentication is off (everyone is ANONYMOUS)."""

    by_digest: Mapping[str, Principal]

    @property
    def enabled(self) -> bool:
        return bool(self.by_digest)

    def principal_for(self, token: str) -> Principal | None:
        digest = token_digest(token)
        for known, principal in self.by_digest.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None


def load_token_grants(path: Path | None) -> TokenGrants:
    if path is None:
        return TokenGrants({})
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError) as exc:
        raise TokensFileError("tokens_file", "readable", f"cannot read {path}: {exc}") from None
    if not isinstance(entries, list):
        raise TokensFileError("tokens_file", "list", f"{path} must hold a YAML list of {{name, role, token_sha256}}")
    grants: dict[str, Principal] = {}
    for index, entry in enumerate(entries):
        where = f"tokens[{index}]"
        if not isinstance(entry, dict) or not entry.get("name"):
            raise TokensFileError(f"{where}.name", "required", "every token needs a name (it is the audit actor)")
        role = entry.get("role")
        if role not in ROLES:
            raise TokensFileError(f"{where}.role", "one_of", f"must be one of {', '.join(ROLES)}, got {role!r}")
        digest = entry.get("token_sha256") or (token_digest(str(entry["token"])) if entry.get("token") else None)
        if not digest:
            raise TokensFileError(f"{where}.token_sha256", "required", "needs token_sha256 (64 hex digits) or token")
        digest = str(digest).strip().lower()  # compared as lowercase hex, so duplicates are found in any case
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise TokensFileError(f"{where}.token_sha256", "sha256_hex", "must be a SHA-256 digest: 64 hex digits")
        if digest in grants:
            raise TokensFileError(f"{where}.token_sha256", "unique", "the same token is listed twice")
        grants[digest] = Principal(str(entry["name"]), role)
    return TokenGrants(grants)


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def abort(_request: Any, context: grpc.ServicerContext) -> None:
        context.abort(code, cap_detail(message))  # it may echo a caller's method name: never unbounded

    return grpc.unary_unary_rpc_method_handler(abort)


class BearerAuthInterceptor(grpc.ServerInterceptor):
    """Resolves the caller's principal, refuses what its role does not allow, and exposes the principal to
    the handler through `current_principal` (the audit trail names it)."""

    def __init__(self, grants: TokenGrants):
        self.grants = grants
        # Without tokens every caller is ANONYMOUS: the methods it may call pass straight to their handler,
        # as the checks below would let them (ANONYMOUS needs no `current_principal` wrapper).
        self._anonymous_methods = frozenset() if grants.enabled else frozenset(
            method for method, role in METHOD_ROLES.items()
            if method.split("/")[1] not in OPEN_SERVICES and ANONYMOUS.may(role)
        )

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method in self._anonymous_methods:
            return continuation(handler_call_details)
        service = method.split("/")[1] if method.count("/") >= 2 else ""
        if service in OPEN_SERVICES:
            return continuation(handler_call_details)
        required = METHOD_ROLES.get(method, "admin")
        if self.grants.enabled:
            token = bearer_token(handler_call_details.invocation_metadata)
            if token is None:
                return _deny(grpc.StatusCode.UNAUTHENTICATED, "authorization: a `Bearer <token>` metadata entry is required")
            principal = self.grants.principal_for(token)
            if principal is None:
                return _deny(grpc.StatusCode.UNAUTHENTICATED, "authorization: the bearer token is not known to this gateway")
        else:
            principal = ANONYMOUS
        if not principal.may(required):
            hint = "" if self.grants.enabled else " (this gateway has no tokens file, so nobody may)"
            return _deny(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.rsplit('/', 1)[-1]} needs the {required} role; {principal.name} has {principal.role}{hint}",
            )
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or principal is ANONYMOUS:
            return handler  # ANONYMOUS is what `current_principal` holds when nothing set it: no wrapper needed
        inner = handler.unary_unary

        def with_principal(request: Any, context: grpc.ServicerContext) -> Any:
            reset = current_principal.set(principal)
            try:
                return inner(request, context)
            finally:
                current_principal.reset(reset)

        return handler._replace(unary_unary=with_principal)
