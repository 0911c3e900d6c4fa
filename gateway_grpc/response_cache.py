"""The response and embedding cache `call_with_fallback` consults: exact match, TTL, per tenant.

The key is computed in the service, from what it would send: sha256 over the canonical JSON of (tenant,
provider, model, normalized request, parameters). Normalized: mappings with sorted keys, strings in Unicode
NFC, floats as JSON numbers; nothing else is rewritten (whitespace inside a prompt can change an answer).
The prompt never reaches PrismOps: only hit/miss, the tokens and the money saved do.

Not cached: streaming calls (`stream: true`), errors, several choices (`n` > 1), and non-deterministic
parameters (`temperature` or `top_p` sampling above 0) unless the cache was built with
`allow_nondeterministic=True` (a policy decision: the service accepts a repeated answer). Values are JSON
documents that name their tenant and key; a value that is not ours (another tenant's, another key's, not
JSON, too large) is never returned: it counts as `prismops_cache_rejected_total` and as a miss.

Stores: `MemoryCacheStore` (in the process, LRU, size-capped, injected clock) and `RedisCacheStore` (shared,
SET with EX, keys under `<prefix>cache:<tenant digest>:`). Embeddings are cached by (tenant, model, text
hash) through `embedding_key`.

Prometheus (when prometheus_client is installed): prismops_cache_lookups_total{result=hit|miss|uncacheable},
prismops_cache_saved_usd_total (the decision's estimated cost of each hit), prismops_cache_rejected_total.
Hit ratio: rate(prismops_cache_lookups_total{result="hit"}[5m]) / rate(prismops_cache_lookups_total{result!="uncacheable"}[5m]).
"""

from __future__ import annotations

import decimal
import hashlib
import json
import logging
import math
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prismops.finops.labels import CACHE_KEY_LABEL, CACHE_SAVED_USD_LABEL

log = logging.getLogger(__name__)

VALUE_VERSION = 1
SAVED_USD_LABEL = CACHE_SAVED_USD_LABEL


class CacheError(ValueError):
    """A request or value the cache cannot work with (not JSON-serializable, bad TTL or size)."""


try:  # the light SDK install has no prometheus_client: the counters are then not kept
    from prometheus_client import Counter

    LOOKUPS: Any = Counter("prismops_cache_lookups_total", "response cache lookups by result", ["result"])
    SAVED_USD: Any = Counter("prismops_cache_saved_usd_total", "estimated USD not spent thanks to cache hits")
    REJECTED: Any = Counter("prismops_cache_rejected_total", "cached values refused (not ours, corrupt, too large)")
except ImportError:  # pragma: no cover - exercised only without the platform extra
    LOOKUPS = SAVED_USD = REJECTED = None


def _count(counter: Any, amount: float = 1.0, label: str | None = None) -> None:
    if counter is None:
        return
    (counter.labels(label) if label is not None else counter).inc(amount)


def _normalized(value: Any, path: str = "request") -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, Mapping):
        return {str(k): _normalized(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalized(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CacheError(f"{path}: {value!r} cannot be part of a cache key")
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise CacheError(f"{path}: a {type(value).__name__} cannot be part of a cache key (JSON values only)")


def canonical_json(value: Any) -> str:
    return json.dumps(_normalized(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def tenant_digest(tenant: str) -> str:
    return hashlib.sha256(f"tenant\0{tenant}".encode()).hexdigest()[:16]


def cache_key(tenant: str, provider: str, model: str, request: Any, params: Mapping[str, Any] | None = None) -> str:
    """`<tenant digest>:<sha256>` of (tenant, provider, model, normalized request, parameters)."""
    if not tenant:
        raise CacheError("tenant: required, the cache is per tenant")
    body = canonical_json({"t": tenant, "p": provider, "m": model, "r": request, "o": dict(params or {})})
    return f"{tenant_digest(tenant)}:{hashlib.sha256(body.encode()).hexdigest()}"


def embedding_key(tenant: str, model: str, text: str) -> str:
    """Embeddings by (model, text hash), per tenant."""
    text_hash = hashlib.sha256(unicodedata.normalize("NFC", text).encode()).hexdigest()
    return cache_key(tenant, "embedding", model, {"text_sha256": text_hash})


def uncacheable_reason(params: Mapping[str, Any] | None, *, allow_nondeterministic: bool = False) -> str | None:
    """Why a call with these parameters is not cached; None when it may be."""
    params = params or {}
    if params.get("stream"):
        return "streaming response"
    if (params.get("n") or 1) > 1:
        return "several choices (n > 1)"
    if not allow_nondeterministic:
        temperature = params.get("temperature")
        if temperature is None or temperature > 0:
            return "non-deterministic sampling (temperature > 0 or unset)"
    return None


class CacheStore(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl_s: float) -> None: ...


class MemoryCacheStore:
    """In-process LRU with a TTL per entry and a cap on entries and bytes; `clock` in seconds."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic):
        if max_entries < 1 or max_bytes < 1:
            raise CacheError("max_entries and max_bytes must be >= 1")
        self.max_entries, self.max_bytes, self._clock = max_entries, max_bytes, clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[1] <= self._clock():
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return item[0]

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        with self._lock:
            if key in self._items:
                self._drop(key)
            if len(value) > self.max_bytes:
                return
            self._items[key] = (value, self._clock() + ttl_s)
            self._bytes += len(value)
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        value, _ = self._items.pop(key)
        self._bytes -= len(value)

    def __len__(self) -> int:
        return len(self._items)


class RedisCacheStore:
    """Shared: SET key value EX ttl under `<prefix>cache:`; the server's maxmemory/LRU caps the total."""

    def __init__(self, client: Any, prefix: str = "prismops:"):
        self._client = client
        self._prefix = f"{prefix}cache:"

    @classmethod
    def from_settings(cls, redis_settings: Any) -> "RedisCacheStore":
        import redis

        return cls(redis.Redis(host=redis_settings.host, port=redis_settings.port, db=redis_settings.db,
                               password=redis_settings.password, socket_timeout=redis_settings.timeout_s,
                               socket_connect_timeout=redis_settings.timeout_s), redis_settings.key_prefix)

    def get(self, key: str) -> bytes | None:
        import redis

        try:
            return self._client.get(self._prefix + key)
        except redis.RedisError as error:
            log.warning("response cache read failed (treated as a miss): %s", error)
            return None

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        import redis

        try:
            self._client.set(self._prefix + key, value, ex=max(1, math.ceil(ttl_s)))
        except redis.RedisError as error:
            log.warning("response cache write failed: %s", error)


@dataclass(frozen=True)
class CachedResponse:
    response: Any
    provider: str
    model: str
    input_tokens: int
    output_tokens: int


class ResponseCache:
    """What `call_with_fallback` uses: lookup and store by key, values checked to be ours."""

    def __init__(self, store: CacheStore, *, ttl_s: float = 3600.0, max_value_bytes: int = 256 * 1024,
                 allow_nondeterministic: bool = False):
        if not (isinstance(ttl_s, (int, float)) and math.isfinite(ttl_s) and ttl_s > 0):
            raise CacheError(f"ttl_s: must be > 0 seconds, got {ttl_s!r}")
        if max_value_bytes < 1:
            raise CacheError(f"max_value_bytes: must be >= 1, got {max_value_bytes!r}")
        self.store, self.ttl_s, self.max_value_bytes = store, ttl_s, max_value_bytes
        self.allow_nondeterministic = allow_nondeterministic

    def uncacheable(self, params: Mapping[str, Any] | None) -> str | None:
        return uncacheable_reason(params, allow_nondeterministic=self.allow_nondeterministic)

    def lookup(self, tenant: str, key: str) -> CachedResponse | None:
        raw = self.store.get(key)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
            ours = (isinstance(value, dict) and value.get("v") == VALUE_VERSION and value.get("tenant") == tenant
                    and value.get("key") == key and key.startswith(tenant_digest(tenant) + ":"))
            if not ours:
                raise ValueError("the value names another tenant or key, or another format")
            return CachedResponse(value["response"], str(value["provider"]), str(value["model"]),
                                  int(value.get("input_tokens") or 0), int(value.get("output_tokens") or 0))
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as error:
            _count(REJECTED)
            log.warning("cached value under %s refused: %s", key, error)
            return None

    def store_response(self, tenant: str, key: str, provider: str, model: str, response: Any,
                       input_tokens: int = 0, output_tokens: int = 0) -> bool:
        """Keep a successful response; False when it is not JSON or larger than max_value_bytes."""
        try:
            raw = json.dumps({"v": VALUE_VERSION, "tenant": tenant, "key": key, "provider": provider, "model": model,
                              "response": response, "input_tokens": input_tokens, "output_tokens": output_tokens},
                             separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError):
            return False  # the response is not JSON: a service caching such responses passes a JSON form
        if len(raw) > self.max_value_bytes:
            return False
        self.store.set(key, raw, self.ttl_s)
        return True
