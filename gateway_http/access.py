"""Who may write, and how fast: bearer tokens per tenant and a token bucket per token. No I/O but reading the file.

The tokens file is YAML: a list of `{tenant, token_sha256}` (or `token` in clear, for local use). A request's
bearer token is hashed and looked up; a token writes only its own tenant's events.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prismops.errors import FieldRuleError


class TokensFileError(FieldRuleError):
    """The tokens file cannot be used; the message names the file, the entry and the rule."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TenantTokens:
    """sha256(token) → tenant."""

    by_digest: Mapping[str, str]

    def tenant_of(self, authorization: str | None) -> str | None:
        """The tenant of an `Authorization: Bearer <token>` header, or None for a missing or unknown token."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        digest = token_digest(authorization[7:].strip())
        for known, tenant in self.by_digest.items():  # compare_digest over all: no early exit to time
            if hmac.compare_digest(known, digest):
                return tenant
        return None


def parse_tenant_tokens(entries: Any, source: str) -> TenantTokens:
    if not isinstance(entries, list):
        raise TokensFileError(None, "type", f"{source}: expected a list of {{tenant, token_sha256}} entries")
    by_digest: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"{source}: entry {index}"
        if not isinstance(entry, Mapping) or not str(entry.get("tenant") or "").strip():
            raise TokensFileError("tenant", "required", f"{where}: tenant is required")
        digest = entry.get("token_sha256") or (token_digest(str(entry["token"])) if entry.get("token") else None)
        if not digest or len(str(digest)) != 64:
            raise TokensFileError("token_sha256", "required", f"{where}: give token_sha256 (64 hex digits) or token")
        by_digest[str(digest).lower()] = str(entry["tenant"])
    return TenantTokens(by_digest)


def load_tenant_tokens(path: Path) -> TenantTokens:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TokensFileError(None, "readable", f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise TokensFileError(None, "yaml", f"{path}: not YAML ({exc})") from None
    return parse_tenant_tokens(document, str(path))


class TokenBuckets:
    """Events per second per key, with a burst of `burst` events; `clock` is injected so tests need no sleeps."""

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float]):
        self.rate, self.burst, self.clock = rate_per_s, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, events: int) -> float:
        """Take `events` from `key`'s bucket: 0.0 when allowed, else the seconds after which they would be."""
        with self._lock:
            now = self.clock()
            level, since = self._buckets.get(key, (self.burst, now))
            level = min(self.burst, level + (now - since) * self.rate)
            if events <= level:
                self._buckets[key] = (level - events, now)
                return 0.0
            self._buckets[key] = (level, now)
            if events > self.burst:
                return math.inf
            return (events - level) / self.rate


def known_tenants(tokens: TenantTokens) -> Iterable[str]:
    return sorted(set(tokens.by_digest.values()))
