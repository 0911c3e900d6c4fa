"""What an HTTP request body holds, as LLM usage events checked by the worker's own rules, every broken field at once.

Bodies (by Content-Type):
  application/cloudevents+json        one CloudEvent 1.0, structured mode: the usage event is its `data`
  application/cloudevents-batch+json  a JSON array of structured CloudEvents
  application/json                    one usage event in our field names (an object) or many (an array); with
                                      `ce-specversion` among the headers, a CloudEvent in binary mode (body = data)

A CloudEvent must say `type: io.prismops.llm.usage.v1`; its `id` is the event_id and its `time` the event_time
unless `data` gives them. A usage event without request_id gets its event_id, as the SDK does.

Each event is checked alone: first against the Avro schema field by field (every field is coerced on its own, so
one wrong type does not hide the next), then by `finops.validation.llm_usage_errors`, the worker's rules, on the
fields that passed. The tenant comes from the caller's token: an event may leave it empty or repeat it, never name
another tenant (rule `token_tenant`). Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prismops.errors import FieldRuleError
from prismops.finops.validation import llm_usage_errors
from prismops.schemas import latest
from prismops.streams.codecs import CodecError, coerce

USAGE_SCHEMA = "llm_usage_event"
CLOUDEVENT_TYPE = "io.prismops.llm.usage.v1"
CLOUDEVENTS_JSON = "application/cloudevents+json"
CLOUDEVENTS_BATCH_JSON = "application/cloudevents-batch+json"
PLAIN_JSON = "application/json"
CONTENT_TYPES = (CLOUDEVENTS_JSON, CLOUDEVENTS_BATCH_JSON, PLAIN_JSON)
CLOUDEVENT_REQUIRED = ("specversion", "id", "source", "type")


class RequestError(FieldRuleError):
    """The body as a whole cannot be read (not JSON, wrong shape, too many events): the request is refused."""


@dataclass
class CheckedEvent:
    """One event of a request: its position, its value ready for the Avro writer when it passed, every broken
    field when it did not, and its own JSON text (what a dead letter keeps)."""

    index: int
    original: bytes
    value: dict[str, Any] | None = None
    errors: list[FieldRuleError] = field(default_factory=list)

    @property
    def event_id(self) -> str | None:
        return self.value.get("event_id") if self.value else None

    def error_report(self) -> dict[str, Any]:
        return {"index": self.index,
                "errors": [{"field": e.field, "rule": e.rule, "message": e.message} for e in self.errors]}


def media_type(content_type: str | None) -> str:
    return (content_type or PLAIN_JSON).split(";", 1)[0].strip().lower()


def usage_payloads(body: bytes, content_type: str | None, headers: Mapping[str, str],
                   max_events: int) -> list[tuple[Any, FieldRuleError | None]]:
    """The usage events a body carries, each as (JSON value, or None with the reason it is not one)."""
    kind = media_type(content_type)
    if kind not in CONTENT_TYPES:
        raise RequestError("content-type", "supported", f"{kind!r} is not one of {', '.join(CONTENT_TYPES)}")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(None, "json_decode", f"the body is not JSON: {exc}") from None
    lowered = {k.lower(): v for k, v in headers.items()}
    if kind == CLOUDEVENTS_JSON:
        items, cloudevents = [document], True
    elif kind == CLOUDEVENTS_BATCH_JSON:
        if not isinstance(document, list):
            raise RequestError(None, "type", "a CloudEvents batch is a JSON array of events")
        items, cloudevents = document, True
    elif "ce-specversion" in lowered:
        binary = {name[3:]: value for name, value in lowered.items() if name.startswith("ce-")}
        items, cloudevents = [binary | {"data": document}], True
    else:
        items, cloudevents = (document if isinstance(document, list) else [document]), False
    if len(items) > max_events:
        raise RequestError(None, "max_events", f"{len(items)} events in one request; at most {max_events}")
    return [_from_cloudevent(item) if cloudevents else (item, None) for item in items]


def _from_cloudevent(event: Any) -> tuple[Any, FieldRuleError | None]:
    if not isinstance(event, Mapping):
        return event, FieldRuleError(None, "type", "a CloudEvent is a JSON object")
    for name in CLOUDEVENT_REQUIRED:
        if not event.get(name):
            return event, FieldRuleError(name, "required", f"CloudEvents attribute {name} is required")
    if event["specversion"] != "1.0":
        return event, FieldRuleError("specversion", "supported", f"{event['specversion']!r}: only CloudEvents 1.0")
    if event["type"] != CLOUDEVENT_TYPE:
        return event, FieldRuleError("type", "supported", f"{event['type']!r}: this endpoint takes {CLOUDEVENT_TYPE}")
    data = event.get("data")
    if not isinstance(data, Mapping):
        return event, FieldRuleError("data", "type", "a usage CloudEvent carries the usage event as a JSON object")
    usage = dict(data)
    usage.setdefault("event_id", event["id"])
    if event.get("time"):
        usage.setdefault("event_time", event["time"])
    return usage, None


def check_usage_event(index: int, payload: Any, payload_error: FieldRuleError | None, *, tenant: str,
                      now: dt.datetime, max_tokens: int) -> CheckedEvent:
    """The event checked field by field against the schema, then by the worker's rules."""
    original = json.dumps(payload, separators=(",", ":"), default=str).encode()
    checked = CheckedEvent(index, original)
    if payload_error is not None:
        checked.errors.append(payload_error)
        return checked
    if not isinstance(payload, Mapping):
        checked.errors.append(FieldRuleError(None, "type", f"an event is a JSON object, got {type(payload).__name__}"))
        return checked
    event = dict(payload)
    if event.get("tenant") in (None, ""):
        event["tenant"] = tenant
    elif event["tenant"] != tenant:
        checked.errors.append(FieldRuleError("tenant", "token_tenant", "a token writes only its own tenant's events"))
        event["tenant"] = tenant
    if event.get("event_id") and not event.get("request_id"):
        event["request_id"] = event["event_id"]
    value, schema_errors = _coerce_fields(event)
    checked.errors.extend(schema_errors)
    broken = {error.field for error in checked.errors}
    checked.errors.extend(e for e in llm_usage_errors(value, now, max_tokens) if e.field not in broken)
    if not checked.errors:
        checked.value = value
    return checked


def _coerce_fields(event: Mapping[str, Any]) -> tuple[dict[str, Any], list[FieldRuleError]]:
    """Every field coerced on its own; a broken one is reported and replaced by a neutral value of its type, so
    the worker's rules can still read the others."""
    definition = latest(USAGE_SCHEMA).definition
    try:
        return coerce(definition, event, ""), []  # the common case: one pass over the record
    except CodecError:
        pass
    fields = definition["fields"]
    value: dict[str, Any] = {}
    errors: list[FieldRuleError] = []
    for spec in fields:
        name = spec["name"]
        try:
            value.update(coerce({"type": "record", "name": "one", "fields": [spec]}, {name: event[name]} if name in event else {}, ""))
        except CodecError as exc:
            errors.append(exc)
            value[name] = _neutral(spec["type"])
    return value, errors


def _neutral(kind: Any) -> Any:
    """A value of an Avro type that breaks no rule, standing in for a broken field while the others are checked."""
    if isinstance(kind, list):
        return None if "null" in kind else _neutral(kind[0])
    if isinstance(kind, Mapping):
        if kind.get("logicalType") == "timestamp-micros":
            return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        if kind["type"] == "enum":
            return kind.get("default", kind["symbols"][0])
        if kind["type"] == "map":
            return {}
        if kind["type"] == "array":
            return []
        return _neutral(kind["type"])
    return {"string": "-", "long": 0, "int": 0, "boolean": False, "double": 0.0, "float": 0.0, "bytes": b""}[kind]


def check_request(body: bytes, content_type: str | None, headers: Mapping[str, str], *, tenant: str,
                  now: dt.datetime, max_tokens: int, max_events: int) -> list[CheckedEvent]:
    """Every event of a request body, checked; raises RequestError when the body as a whole is unreadable."""
    payloads = usage_payloads(body, content_type, headers, max_events)
    return [check_usage_event(i, payload, error, tenant=tenant, now=now, max_tokens=max_tokens)
            for i, (payload, error) in enumerate(payloads)]


def accepted_and_rejected(events: Sequence[CheckedEvent]) -> tuple[list[CheckedEvent], list[CheckedEvent]]:
    return [e for e in events if e.value is not None], [e for e in events if e.value is None]
