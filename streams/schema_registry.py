"""Confluent wire format through a schema registry (Confluent's API; Apicurio's `/apis/ccompat/v7` serves it).

A Confluent-framed value is the magic byte 0, the writer schema's registry id (4 bytes, big-endian), then the
Avro binary body. The body is the same bytes as after an Avro single-object header, so our own writers frame
either way. Readers fetch a writer schema by id once per process and keep it parsed (`writer_schema`); writers
register our `.avsc` once per subject with BACKWARD compatibility and keep the id (`register`).

The registry is process-wide, like the codecs: `configure_schema_registry(url)` sets it; until a process
configures one, the URL comes from `PRISMOPS_KAFKA__SCHEMA_REGISTRY_URL` (the environment a component is
started with), and without either there is none and Confluent-framed values are refused. confluent-kafka's
schema-registry client is imported only when a registry is used (the domain core must not load it).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from typing import Any

import fastavro

LOCAL_REGISTRY_PORT = 18081
CCOMPAT_PATH = "/apis/ccompat/v7"
CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_LEN = 5
REGISTRY_URL_ENV = "PRISMOPS_KAFKA__SCHEMA_REGISTRY_URL"
DEFAULT_COMPATIBILITY = "BACKWARD"
_ID = struct.Struct(">I")


class SchemaNotInRegistry(LookupError):
    """The registry answered that it has no schema of this id (a permanent error: the record is unreadable)."""


class SchemaRegistryUnavailable(RuntimeError):
    """The registry could not be asked (down, unreachable, 5xx): a transient error, not the record's fault."""


def is_confluent_framed(data: bytes) -> bool:
    """Magic byte 0 and room for a schema id. Neither JSON nor Avro single-object (0xC3 0x01) starts with 0."""
    return len(data) >= CONFLUENT_HEADER_LEN and data[0] == CONFLUENT_MAGIC


def confluent_schema_id(data: bytes) -> int:
    return _ID.unpack_from(data, 1)[0]


def confluent_header(schema_id: int) -> bytes:
    return bytes([CONFLUENT_MAGIC]) + _ID.pack(schema_id)


def record_full_name(definition: dict[str, Any]) -> str:
    name = definition["name"]
    namespace = definition.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


class SchemaRegistry:
    """A registry client with the two caches the hot path needs: parsed writer schemas by id, ids by subject."""

    def __init__(self, url: str, client: Any = None):
        self.url = url.rstrip("/")
        self._client = client
        self._lock = threading.Lock()
        self._parsed: dict[int, Any] = {}
        self._ids: dict[tuple[str, str], int] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self._client = SchemaRegistryClient({"url": self.url})
        return self._client

    def writer_schema(self, schema_id: int) -> Any:
        """The parsed (fastavro) Avro schema registered under `schema_id`; asked of the registry once."""
        parsed = self._parsed.get(schema_id)
        if parsed is not None:
            return parsed
        schema = self._call(lambda: self.client.get_schema(schema_id), f"schema id {schema_id}")
        if (schema.schema_type or "AVRO") != "AVRO":
            raise SchemaNotInRegistry(f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
        if schema.references:
            raise SchemaNotInRegistry(f"schema id {schema_id} uses schema references, which PrismOps does not read")
        parsed = fastavro.parse_schema(json.loads(schema.schema_str))
        with self._lock:
            self._parsed[schema_id] = parsed
        return parsed

    def register(self, subject: str, definition: dict[str, Any], compatibility: str = DEFAULT_COMPATIBILITY) -> int:
        """Register `definition` under `subject` (setting the subject's compatibility first) and return its id,
        or the id it already has. Done once per subject and schema per process."""
        schema_str = json.dumps(definition, separators=(",", ":"))
        key = (subject, schema_str)
        schema_id = self._ids.get(key)
        if schema_id is not None:
            return schema_id
        from confluent_kafka.schema_registry import Schema

        self._call(lambda: self.client.set_compatibility(subject_name=subject, level=compatibility),
                   f"compatibility of {subject}")
        schema_id = self._call(lambda: self.client.register_schema(subject, Schema(schema_str, "AVRO")),
                               f"registering {subject}")
        with self._lock:
            self._ids[key] = schema_id
            self._parsed.setdefault(schema_id, fastavro.parse_schema(definition))
        return schema_id

    def _call(self, call: Any, what: str) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return call()
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise SchemaNotInRegistry(f"{what} is not in the schema registry at {self.url}") from None
            if exc.http_status_code is not None and 400 <= exc.http_status_code < 500:
                raise ValueError(f"schema registry at {self.url} refused {what}: {exc.error_message}") from None
            raise SchemaRegistryUnavailable(f"schema registry at {self.url} failed on {what}: {exc}") from None
        except Exception as exc:  # connection refused, timeouts: httpx errors of many types
            raise SchemaRegistryUnavailable(f"schema registry at {self.url} unreachable ({what}): {exc}") from None


_UNSET = object()
_registry: Any = _UNSET
_registries: dict[str, SchemaRegistry] = {}


def registry_for(url: str) -> SchemaRegistry:
    """One SchemaRegistry (and cache) per URL in a process."""
    url = url.rstrip("/")
    if url not in _registries:
        _registries[url] = SchemaRegistry(url)
    return _registries[url]


def registry_url_from_settings(settings: Any) -> str:
    """`kafka.schema_registry_url`; else the local stack's registry when it runs with one (`stack.with_registry`,
    on `stack.registry_port`); else "" (no registry). Read with getattr so settings without these fields mean none."""
    configured = getattr(settings.kafka, "schema_registry_url", "") or ""
    if configured:
        return configured
    if getattr(settings.stack, "with_registry", False):
        return f"http://127.0.0.1:{getattr(settings.stack, 'registry_port', LOCAL_REGISTRY_PORT)}{CCOMPAT_PATH}"
    return ""


def configure_from_settings(settings: Any) -> SchemaRegistry | None:
    """The process's registry from its settings (see registry_url_from_settings); the env var when they name none."""
    url = registry_url_from_settings(settings)
    return configure_schema_registry(url) if url else schema_registry()


def configure_schema_registry(registry: str | SchemaRegistry | None) -> SchemaRegistry | None:
    """Set the process's registry (a URL, a SchemaRegistry, or None for none); returns it."""
    global _registry
    _registry = registry_for(registry) if isinstance(registry, str) and registry else (registry or None)
    return _registry


def schema_registry() -> SchemaRegistry | None:
    """The process's registry: the configured one, else one at $PRISMOPS_KAFKA__SCHEMA_REGISTRY_URL, else None."""
    global _registry
    if _registry is _UNSET:
        url = os.environ.get(REGISTRY_URL_ENV, "").strip()
        _registry = registry_for(url) if url else None
    return _registry
