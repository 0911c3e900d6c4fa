"""GPU usage events into event-time windows per pool: the rules an event must meet, and when a window closes.

A pool is one node (`cluster/node`, the topic key, so a pool's events share a partition and its state lives in
one place). Windows are `window_s` long and aligned to the epoch. An event's usage counts in the window(s) its
own [window_start, window_end) overlaps; one that straddles a boundary is split pro rata by time, exactly.

Closing, by event time: the pool's watermark is the latest window_end seen minus `grace_s`; a window closes as
soon as the watermark reaches its end. Usage for a window that is still open (within the grace period) is
accounted, and the window is marked `late`. Usage for a window that is already closed is rejected with rule
`too_late` (the caller dead-letters it): it is never silently dropped, and an emitted window never changes.

Closing, by processing time: a window also closes once the wall clock is `grace_s` past its end AND nothing
has arrived for it for `grace_s` of wall-clock time. Why: the watermark only moves when events arrive, so an
idle or decommissioned cluster would otherwise keep its last window open forever and its cost would never be
emitted. Why the second condition: a replay or backfill of old data is far past `end + grace` on the wall
clock from its first event; without it, each window would close right after its first event and the rest
of its events would be rejected as too late.

State is a plain JSON-able dict (`PoolWindows.state`): Decimal/Fraction quantities as strings, times as epoch
microseconds, so the worker can keep it in a Faust table with a changelog and recover it after a restart.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from prismops.finops.gpu_pricing import GpuCatalog, UnknownMigProfile, normalize_model
from prismops.finops.tagging import normalize
from prismops.finops.text_rules import ID_MAX_CHARS, NAME_MAX_CHARS, check_labels, check_text
from prismops.errors import FieldRuleError

MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
# One unit of the event's decimal(18, 6) quantities: collectors that round GPU-seconds up are not rejected.
QUANTITY_TOLERANCE = Fraction(1, 10**6)
FRACTION_TOLERANCE = Fraction(1, 10**6)  # gpu_fraction is decimal(9, 6): 1/7 arrives as 0.142857
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
MICROS = 1_000_000


@dataclass(frozen=True)
class Workload:
    """One workload's GPU-seconds in one pool-window; `key` identifies it (and orders ties)."""

    key: str
    requested_gpu_seconds: Fraction | Decimal | int
    used_gpu_seconds: Fraction | Decimal | int
    tenant: str = ""
    team: str | None = None
    namespace: str | None = None
    job: str | None = None

    @property
    def charged_gpu_seconds(self) -> Fraction:
        return max(Fraction(self.requested_gpu_seconds), Fraction(self.used_gpu_seconds))


class InvalidGpuUsage(FieldRuleError):
    """A decodable GPU usage event that breaks a rule; the worker dead-letters it."""


def to_micros(moment: dt.datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * MICROS + delta.microseconds


def from_micros(micros: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=micros)


def workload_key(tenant: str, team: str | None, namespace: str | None, job: str | None) -> str:
    """Unambiguous (a JSON array), and the stable order ties are broken in."""
    return json.dumps([tenant, team, namespace, job], separators=(",", ":"))


@dataclass(frozen=True)
class GpuUsage:
    """A validated event: exact quantities, times in epoch microseconds."""

    event_id: str
    cluster: str
    node: str
    gpu_model: str
    gpu_index: int
    capacity_type: str
    tenant: str
    team: str | None
    namespace: str | None
    job: str | None
    gpu_fraction: Fraction
    start_us: int
    end_us: int
    requested_gpu_seconds: Fraction
    used_gpu_seconds: Fraction

    @property
    def pool(self) -> str:
        return f"{self.cluster}/{self.node}"

    @property
    def workload_key(self) -> str:
        return workload_key(self.tenant, self.team, self.namespace, self.job)


# The longest value each text field may hold (finops/text_rules.py), in schema order: names (cluster and node
# make the pool key, tenant/team/namespace/job the workload key of the windows state) 128 characters, ids 256.
# The enums capacity_type and source are checked as names too, so no text field is left without a rule.
TEXT_FIELD_LIMITS: dict[str, int] = {
    "event_id": ID_MAX_CHARS,
    "cluster": NAME_MAX_CHARS,
    "node": NAME_MAX_CHARS,
    "gpu_model": NAME_MAX_CHARS,
    "mig_profile": NAME_MAX_CHARS,
    "capacity_type": NAME_MAX_CHARS,
    "tenant": NAME_MAX_CHARS,
    "team": NAME_MAX_CHARS,
    "namespace": NAME_MAX_CHARS,
    "job": ID_MAX_CHARS,
    "source": NAME_MAX_CHARS,
}


def check_text_fields(event: Mapping[str, Any]) -> None:
    """Raise InvalidGpuUsage (rule max_length, printable or max_entries) for the first text field, in schema order,
    that is too long or holds a forbidden character; then the labels map."""
    try:
        for name, max_chars in TEXT_FIELD_LIMITS.items():
            check_text(name, event.get(name), max_chars)
        check_labels("labels", event.get("labels"))
    except FieldRuleError as exc:
        raise InvalidGpuUsage(exc.field, exc.rule, exc.message) from None


def _text(event: Mapping[str, Any], name: str) -> str:
    value = str(event.get(name) or "").strip()
    if not value:
        raise InvalidGpuUsage(name, "non_empty", "must be a non-empty string")
    return value


def _optional(event: Mapping[str, Any], name: str) -> str | None:
    value = str(event.get(name) or "").strip()
    return value or None


def validate_gpu_usage(
    event: Mapping[str, Any], *, key: bytes | None, now: dt.datetime, catalog: GpuCatalog, window_s: int,
) -> GpuUsage:
    """Raise InvalidGpuUsage (or UnknownMigProfile) for the first broken rule; each names field and rule.

    The text fields' length and character rules come first, before any value becomes part of a key."""
    check_text_fields(event)
    event_id = _text(event, "event_id")
    cluster, node = _text(event, "cluster"), _text(event, "node")
    for name, value in (("cluster", cluster), ("node", node)):
        if "/" in value:
            raise InvalidGpuUsage(
                name, "no_pool_separator", f"{value!r} contains '/', which separates cluster and node in the pool name",
            )
    expected_key = f"{cluster}/{node}".encode()
    if key != expected_key:
        raise InvalidGpuUsage(
            None, "keyed_by_pool",
            f"the message key must be {expected_key.decode()!r} (cluster/node) so one pool's events share a partition; "
            f"got {_shown_key(key)}",
        )
    gpu_model, tenant = _text(event, "gpu_model"), normalize(_text(event, "tenant"))
    team = _optional(event, "team")
    start, end = event["window_start"], event["window_end"]
    if end <= start:
        raise InvalidGpuUsage(
            "window_end", "end_after_start", f"{end.isoformat()} is not after window_start {start.isoformat()}",
        )
    length = end - start
    if length > dt.timedelta(seconds=window_s):
        raise InvalidGpuUsage(
            "window_end", "within_attribution_window",
            f"the event covers {length.total_seconds():g} s; one event may cover at most the {window_s} s "
            "attribution window",
        )
    if end > now + MAX_CLOCK_SKEW:
        raise InvalidGpuUsage("window_end", "not_in_future", f"{end.isoformat()} is more than 5 minutes ahead")
    for name in ("gpu_index", "memory_bytes", "requested_gpu_seconds", "used_gpu_seconds"):
        value = event.get(name)
        if value is not None and value < 0:
            raise InvalidGpuUsage(name, "non_negative", f"must be >= 0, got {value}")
    declared = Fraction(event["gpu_fraction"])
    if not 0 < declared <= 1:
        raise InvalidGpuUsage(
            "gpu_fraction", "within_one_gpu", f"must be more than 0 and at most 1, got {event['gpu_fraction']}",
        )
    fraction = declared
    profile = _optional(event, "mig_profile")
    if profile is not None:
        fraction = catalog.mig_fraction(gpu_model, profile)  # raises UnknownMigProfile (rule known_mig_profile)
        if abs(declared - fraction) > FRACTION_TOLERANCE:
            raise InvalidGpuUsage(
                "gpu_fraction", "matches_mig_profile",
                f"{event['gpu_fraction']} does not match MIG profile {profile} ({fraction} of a GPU)",
            )
    seconds = Fraction(to_micros(end) - to_micros(start), MICROS)
    limit = seconds * fraction
    requested, used = Fraction(event["requested_gpu_seconds"]), Fraction(event["used_gpu_seconds"])
    for name, value in (("requested_gpu_seconds", requested), ("used_gpu_seconds", used)):
        if value > limit + QUANTITY_TOLERANCE:
            raise InvalidGpuUsage(
                name, "within_gpu_share",
                f"{Decimal(event[name])} GPU-seconds exceed the window's {seconds} s x GPU fraction {fraction} "
                f"= {_decimal_text(limit)}",
            )
    return GpuUsage(
        event_id=event_id, cluster=cluster, node=node, gpu_model=gpu_model, gpu_index=int(event["gpu_index"]),
        capacity_type=str(event["capacity_type"]), tenant=tenant, team=normalize(team) if team else None,
        namespace=_optional(event, "namespace"), job=_optional(event, "job"), gpu_fraction=fraction,
        start_us=to_micros(start), end_us=to_micros(end), requested_gpu_seconds=requested, used_gpu_seconds=used,
    )


def _shown_key(key: bytes | None) -> str:
    """The key as the rejection shows it: whole when it could be a pool name, else only its size."""
    if key is not None and len(key) > 4 * (2 * NAME_MAX_CHARS + 1):  # two names and '/', 4 UTF-8 bytes a character
        return f"a {len(key)}-byte key"
    return repr(key)


def _decimal_text(value: Fraction) -> str:
    """A fraction shown to 6 places for people (messages only; state keeps the exact fraction)."""
    return str((Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal("0.000001")))


@dataclass(frozen=True)
class UsagePiece:
    """The part of one event that falls in one attribution window."""

    window_start_us: int
    window_end_us: int
    requested_gpu_seconds: Fraction
    used_gpu_seconds: Fraction


def window_bounds(micros: int, window_s: int) -> tuple[int, int]:
    size = window_s * MICROS
    start = (micros // size) * size
    return start, start + size


def split_into_windows(start_us: int, end_us: int, requested: Fraction, used: Fraction, window_s: int) -> list[UsagePiece]:
    """Each overlapped window gets the share of the quantities its overlap is of the event's length (exact)."""
    length = end_us - start_us
    pieces = []
    window_start, window_end = window_bounds(start_us, window_s)
    while window_start < end_us:
        overlap = min(end_us, window_end) - max(start_us, window_start)
        pieces.append(UsagePiece(window_start, window_end, requested * overlap / length, used * overlap / length))
        window_start, window_end = window_end, window_end + window_s * MICROS
    return pieces


@dataclass(frozen=True)
class ClosedWindow:
    """Everything attribution needs about one pool-window, taken out of the state when it closed."""

    pool: str
    cluster: str
    node: str
    window_start: dt.datetime
    window_end: dt.datetime
    gpus: Mapping[int, tuple[str, str]]  # gpu_index -> (gpu_model, capacity_type) as observed
    workloads: tuple[Workload, ...]
    late: bool
    closed_by: str  # "watermark" or "processing_time"
    events: int


class PoolWindows:
    """One pool's clock and open windows. Works on a deep copy of the given state: the caller stores
    `state` back only once the consequences (closed windows' output) are safely published."""

    def __init__(self, state: Mapping[str, Any], *, window_s: int, grace_s: int):
        self.state: dict[str, Any] = copy.deepcopy(dict(state))
        self.window_s = window_s
        self.grace_us = grace_s * MICROS
        self.grace_s = grace_s

    @classmethod
    def new(cls, cluster: str, node: str, partition: int, *, window_s: int, grace_s: int) -> "PoolWindows":
        return cls({
            "pool": f"{cluster}/{node}", "cluster": cluster, "node": node, "partition": partition,
            "applied_offset": -1, "max_event_end_us": None, "closed_through_us": None, "windows": {},
        }, window_s=window_s, grace_s=grace_s)

    @property
    def pool(self) -> str:
        return self.state["pool"]

    @property
    def watermark_us(self) -> int | None:
        latest = self.state["max_event_end_us"]
        return None if latest is None else latest - self.grace_us

    def open_windows(self) -> list[tuple[dt.datetime, dt.datetime]]:
        return [(from_micros(w["start_us"]), from_micros(w["end_us"])) for w in self._windows_in_order()]

    def is_replay(self, offset: int) -> bool:
        """Offsets at or below the last applied one were already counted before a restart (state is
        stored only after a message's output is published; the source offset commits later)."""
        return offset <= self.state["applied_offset"]

    def add(self, usage: GpuUsage, *, offset: int, arrived_at: dt.datetime) -> None:
        """Count the event in its window(s), or raise InvalidGpuUsage (too_late, consistent_gpu) changing nothing."""
        pieces = split_into_windows(
            usage.start_us, usage.end_us, usage.requested_gpu_seconds, usage.used_gpu_seconds, self.window_s,
        )
        windows = self.state["windows"]
        horizon = max(v for v in (self.state["closed_through_us"], self.watermark_us, -1) if v is not None)
        for piece in pieces:
            window = windows.get(str(piece.window_start_us))
            if window is None and piece.window_end_us <= horizon:
                raise InvalidGpuUsage(
                    "window_start", "too_late",
                    f"window {from_micros(piece.window_start_us).isoformat()} to "
                    f"{from_micros(piece.window_end_us).isoformat()} of pool {self.pool} is already closed and emitted "
                    f"(usage arrived after its {self.grace_s} s grace period)",
                )
            seen = (window or {}).get("gpus", {}).get(str(usage.gpu_index))
            if seen and (normalize_model(seen["gpu_model"]), seen["capacity_type"]) != (
                    normalize_model(usage.gpu_model), usage.capacity_type):
                raise InvalidGpuUsage(
                    "gpu_model", "consistent_gpu",
                    f"GPU {usage.gpu_index} of {self.pool} was reported as {seen['gpu_model']}/{seen['capacity_type']} "
                    f"earlier in this window, now as {usage.gpu_model}/{usage.capacity_type}",
                )
        now_us = to_micros(arrived_at)
        latest = self.state["max_event_end_us"]
        for piece in pieces:
            window = windows.setdefault(str(piece.window_start_us), {
                "start_us": piece.window_start_us, "end_us": piece.window_end_us, "late": False, "events": 0,
                "gpus": {}, "workloads": {}, "last_arrival_us": now_us,
            })
            window["gpus"].setdefault(
                str(usage.gpu_index), {"gpu_model": usage.gpu_model, "capacity_type": usage.capacity_type},
            )
            workload = window["workloads"].setdefault(usage.workload_key, {
                "tenant": usage.tenant, "team": usage.team, "namespace": usage.namespace, "job": usage.job,
                "requested_gpu_seconds": "0", "used_gpu_seconds": "0",
            })
            for name in ("requested_gpu_seconds", "used_gpu_seconds"):
                workload[name] = str(Fraction(workload[name]) + getattr(piece, name))  # exact, as "n/d" text
            window["events"] += 1
            window["last_arrival_us"] = max(window["last_arrival_us"], now_us)
            if latest is not None and latest > piece.window_end_us:
                window["late"] = True  # newer usage was already seen: this arrived out of order, within grace
        self.state["max_event_end_us"] = usage.end_us if latest is None else max(latest, usage.end_us)
        self.state["applied_offset"] = max(self.state["applied_offset"], offset)

    def close_due_by_watermark(self) -> list[ClosedWindow]:
        watermark = self.watermark_us
        if watermark is None:
            return []
        return self._close([w for w in self._windows_in_order() if w["end_us"] <= watermark], "watermark")

    def close_quiet(self, now: dt.datetime) -> list[ClosedWindow]:
        """Processing-time close (see the module docstring for why both conditions)."""
        now_us = to_micros(now)
        due = [
            w for w in self._windows_in_order()
            if now_us >= w["end_us"] + self.grace_us and now_us >= w["last_arrival_us"] + self.grace_us
        ]
        return self._close(due, "processing_time")

    def _windows_in_order(self) -> list[dict[str, Any]]:
        return sorted(self.state["windows"].values(), key=lambda w: w["start_us"])

    def _close(self, windows: list[dict[str, Any]], closed_by: str) -> list[ClosedWindow]:
        closed = []
        for window in windows:
            del self.state["windows"][str(window["start_us"])]
            through = self.state["closed_through_us"]
            self.state["closed_through_us"] = window["end_us"] if through is None else max(through, window["end_us"])
            closed.append(ClosedWindow(
                pool=self.pool, cluster=self.state["cluster"], node=self.state["node"],
                window_start=from_micros(window["start_us"]), window_end=from_micros(window["end_us"]),
                gpus={int(i): (g["gpu_model"], g["capacity_type"]) for i, g in window["gpus"].items()},
                workloads=tuple(
                    Workload(
                        key=key, requested_gpu_seconds=Fraction(w["requested_gpu_seconds"]),
                        used_gpu_seconds=Fraction(w["used_gpu_seconds"]), tenant=w["tenant"], team=w["team"],
                        namespace=w["namespace"], job=w["job"],
                    )
                    for key, w in sorted(window["workloads"].items())
                ),
                late=window["late"], closed_by=closed_by, events=window["events"],
            ))
        return closed


__all__ = [
    "ClosedWindow", "GpuUsage", "InvalidGpuUsage", "PoolWindows", "UnknownMigProfile", "UsagePiece",
    "split_into_windows", "validate_gpu_usage", "window_bounds", "workload_key",
]
