"""The routing policy file: model catalog, routes, experiments, canaries, shadows, budget and breaker rules.

One YAML document is the source of truth for how the router chooses (the shipped example is
`gateway_grpc/routing_policy.yaml`). It is validated as a whole before it replaces the running policy, and
every error names the field path and the rule, e.g. `routes[1].fallbacks[0]: unknown_model: ...`.

`PolicyStore` holds the running policy with a version number, installs new YAML from an admin call or from
the file on disk (hot reload by polling its modification time), and reports each change (who, when, diff)
to an audit callback, so changes reach Kafka and ClickHouse without the store knowing about either.
"""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prismops.errors import FieldRuleError

log = logging.getLogger(__name__)

BUNDLED_POLICY = Path(__file__).with_name("routing_policy.yaml")
ModelKey = tuple[str, str]


class PolicyConfigError(FieldRuleError):
    """A policy document that cannot be installed; `field` is the path inside the YAML."""


class PolicyVersionConflict(RuntimeError):
    """SetPolicy named an expected version that is no longer current."""


def parse_model_ref(text: str) -> ModelKey:
    provider, sep, model = text.partition("/")
    if not (sep and provider.strip() and model.strip()):
        raise ValueError(f"{text!r} is not provider/model")
    return provider.strip(), model.strip()


def model_name(key: ModelKey) -> str:
    return f"{key[0]}/{key[1]}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryConfig(_Strict):
    """Seed: retry on 429/5xx/timeout with backoff 1 s, 2 s, 4 s; never on other 4xx."""

    max_attempts: int = Field(default=4, ge=1, le=10, description="attempts per model, the first included")
    backoff_ms: tuple[int, ...] = (1000, 2000, 4000)
    retry_on: tuple[Literal["rate_limited", "server_error", "timeout"], ...] = (
        "rate_limited", "server_error", "timeout",
    )

    @model_validator(mode="after")
    def _enough_backoffs(self) -> "RetryConfig":
        if len(self.backoff_ms) < self.max_attempts - 1:
            raise ValueError(f"backoff_ms needs {self.max_attempts - 1} waits for max_attempts={self.max_attempts}")
        if any(wait < 0 for wait in self.backoff_ms):
            raise ValueError("backoff_ms must be >= 0")
        return self


class LiveConfig(_Strict):
    """When the streamed live rows count, and when the router falls back to the static order."""

    max_age_s: float = Field(default=60.0, gt=0, description="older rows are stale and ignored")
    min_samples: int = Field(default=5, ge=1, description="fewer calls in the window: the row says nothing yet")
    max_error_rate: float = Field(default=0.5, ge=0, le=1, description="models above it are skipped")


class BreakerPolicy(_Strict):
    """Seed: 3 consecutive failures → open 30 s → half-open with one probe."""

    failure_threshold: int = Field(default=3, ge=1)
    open_s: float = Field(default=30.0, gt=0)
    half_open_probes: int = Field(default=1, ge=1)
    error_rate_trip: float = Field(default=0.5, gt=0, le=1)
    error_rate_min_samples: int = Field(default=20, ge=1)


class BudgetRule(_Strict):
    """Seed: >= 80% of a budget → cheaper tier; >= 100% → refuse with the budget named (MANUAL mode)."""

    downgrade_at_pct: float = Field(default=80.0, gt=0)
    downgrade_to_tier: str | None = Field(default=None, description="default: the cheapest tier on the route")
    refuse_at_pct: float = Field(default=100.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "BudgetRule":
        if self.downgrade_at_pct > self.refuse_at_pct:
            raise ValueError("downgrade_at_pct must be <= refuse_at_pct")
        return self


class Defaults(_Strict):
    latency_slo_ms: float = Field(default=10_000.0, gt=0)
    retry: RetryConfig = RetryConfig()
    live: LiveConfig = LiveConfig()
    breaker: BreakerPolicy = BreakerPolicy()
    budget: BudgetRule = BudgetRule()


class ModelSpec(_Strict):
    """What a model can do and how expensive it is relative to others (tier)."""

    tier: str
    context_window: int = Field(default=128_000, gt=0)
    structured_output: bool = Field(default=False, description="guarantees strict JSON-schema output")
    vision: bool = False
    regions: tuple[str, ...] = Field(default=(), description="empty: any region")


class ComplexityClass(_Strict):
    """When a request is of this class and which models then serve it (in order)."""

    hints: tuple[str, ...] = ()
    task_types: tuple[str, ...] = ()
    max_prompt_chars: int | None = Field(default=None, ge=0)
    min_prompt_chars: int | None = Field(default=None, ge=0)
    models: tuple[str, ...] = Field(min_length=1)


class ComplexityRules(_Strict):
    """simple → cheap or local model, complex → strong model; hints win, then task type, then prompt size."""

    simple: ComplexityClass | None = None
    complex: ComplexityClass | None = None


class Arm(_Strict):
    name: str = Field(min_length=1)
    model: str
    weight: int = Field(gt=0)


class Experiment(_Strict):
    """A weighted A/B split, sticky by tenant or session so one user sees one arm."""

    name: str = Field(min_length=1)
    sticky_by: Literal["tenant", "session"] = "tenant"
    arms: tuple[Arm, ...] = Field(min_length=2)

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, arms: tuple[Arm, ...]) -> tuple[Arm, ...]:
        names = [arm.name for arm in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        return arms


class Canary(_Strict):
    """Seed: 10% → 50% → 100%, rolled back when error rate > 10% over 5 minutes or p95 > 30 s."""

    model: str
    started_at: dt.datetime
    stages: tuple[int, ...] = (10, 50, 100)
    stage_duration_s: float = Field(default=600.0, gt=0)
    min_samples: int = Field(default=50, ge=1)
    max_error_rate: float = Field(default=0.10, ge=0, le=1)
    max_p95_ms: float = Field(default=30_000.0, gt=0)
    sticky_by: Literal["tenant", "session"] = "tenant"

    @field_validator("stages")
    @classmethod
    def _increasing_to_100(cls, stages: tuple[int, ...]) -> tuple[int, ...]:
        if not stages or stages[-1] != 100 or any(b <= a for a, b in zip(stages, stages[1:])) or stages[0] <= 0:
            raise ValueError(f"stages must be increasing percents ending at 100, got {list(stages)}")
        return stages

    @field_validator("started_at")
    @classmethod
    def _aware(cls, moment: dt.datetime) -> dt.datetime:
        if moment.tzinfo is None:
            raise ValueError("started_at needs a time zone, e.g. 2026-11-21T09:00:00Z")
        return moment.astimezone(dt.timezone.utc)


class Shadow(_Strict):
    model: str
    sample_rate: float = Field(ge=0, le=1)


class Match(_Strict):
    """Shell-style patterns; '*' matches anything."""

    service: str = "*"
    feature: str = "*"

    @property
    def specificity(self) -> int:
        return (2 if "*" not in self.service else 0) + (1 if "*" not in self.feature else 0)

    def matches(self, service: str, feature: str) -> bool:
        return fnmatch.fnmatchcase(service, self.service) and fnmatch.fnmatchcase(feature, self.feature)


class Route(_Strict):
    """How one service/feature is served.

    strategy `priority`: the primary unless a filter rules it out, then the fallbacks in order.
    strategy `cheapest`: the cheapest model within the SLO among primary and fallbacks.
    """

    name: str = Field(min_length=1)
    match: Match = Match()
    strategy: Literal["priority", "cheapest"] = "priority"
    primary: str | None = None
    fallbacks: tuple[str, ...] = ()
    latency_slo_ms: float | None = Field(default=None, gt=0)
    retry: RetryConfig | None = None
    complexity: ComplexityRules | None = None
    experiment: Experiment | None = None
    canary: Canary | None = None
    shadow: Shadow | None = None
    budget: BudgetRule | None = None

    @model_validator(mode="after")
    def _models_or_none(self) -> "Route":
        if self.fallbacks and not self.primary:
            raise ValueError("fallbacks need a primary")
        return self

    def model_names(self) -> list[str]:
        """The route's own chain, primary first."""
        return [self.primary, *self.fallbacks] if self.primary else []


LIMIT_MAX = 10**12  # per minute or per day: anything above is a typo, not a limit


class RateLimit(_Strict):
    """Requests and tokens per minute; unset: no limit of that kind."""

    rpm: int | None = Field(default=None, gt=0, le=LIMIT_MAX, description="requests per minute")
    tpm: int | None = Field(default=None, gt=0, le=LIMIT_MAX, description="tokens (input + output) per minute")


class ConcurrencyCap(_Strict):
    """At most `max_in_flight` calls at once for the services/features `match` selects (one shared count)."""

    name: str = Field(min_length=1)
    match: Match = Match()
    max_in_flight: int = Field(ge=1, le=1_000_000)
    lease_ttl_s: float = Field(default=120.0, gt=0, le=86_400, description="a lease never released ends then")


class Limits(_Strict):
    """Rate limits per provider/model (the provider account's) and per tenant, and concurrency caps."""

    models: dict[str, RateLimit] = Field(default_factory=dict)
    tenants: dict[str, RateLimit] = Field(
        default_factory=dict, description="per tenant; '*' applies to every tenant not listed",
    )
    concurrency: tuple[ConcurrencyCap, ...] = ()
    lease_retry_ms: int = Field(default=250, ge=1, le=60_000, description="retry-after sent when a cap is full")
    max_retry_after_s: float = Field(default=3600.0, gt=0, le=86_400, description="longest 429 retry-after honoured")

    def concurrency_for(self, service: str, feature: str) -> ConcurrencyCap | None:
        matching = [(cap.match.specificity, -i, cap) for i, cap in enumerate(self.concurrency)
                    if cap.match.matches(service, feature)]
        return max(matching, key=lambda item: (item[0], item[1]))[2] if matching else None


class TenantTier(_Strict):
    """What a tier of tenants may use: model tiers (empty: all), daily quotas and rate limits (unset: none)."""

    model_tiers: tuple[str, ...] = ()
    daily_requests: int | None = Field(default=None, gt=0, le=LIMIT_MAX)
    daily_tokens: int | None = Field(default=None, gt=0, le=LIMIT_MAX)
    rpm: int | None = Field(default=None, gt=0, le=LIMIT_MAX)
    tpm: int | None = Field(default=None, gt=0, le=LIMIT_MAX)


class TenantTiers(_Strict):
    """Tenants to tiers. A tenant not listed gets `default`; with no default it has no tier (no tier rules)."""

    default: str | None = None
    tiers: dict[str, TenantTier] = Field(default_factory=dict)
    tenants: dict[str, str] = Field(default_factory=dict)

    def tier_of(self, tenant: str) -> tuple[str | None, TenantTier | None]:
        name = self.tenants.get(tenant, self.default)
        return (name, self.tiers[name]) if name is not None else (None, None)


class RoutingPolicy(_Strict):
    """The whole policy document."""

    tiers: tuple[str, ...] = Field(
        default=("premium", "standard", "economy", "local"), min_length=1,
        description="most to least expensive; downgrades move right",
    )
    defaults: Defaults = Defaults()
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    limits: Limits = Limits()
    tenant_tiers: TenantTiers = TenantTiers()

    @model_validator(mode="after")
    def _references_resolve(self) -> "RoutingPolicy":
        for name, spec in self.models.items():
            try:
                parse_model_ref(name)
            except ValueError as exc:
                raise PolicyConfigError(f"models.{name}", "provider_model", str(exc)) from None
            if spec.tier not in self.tiers:
                raise PolicyConfigError(f"models.{name}.tier", "known_tier", f"{spec.tier!r} is not one of {list(self.tiers)}")
        seen: set[str] = set()
        for index, route in enumerate(self.routes):
            where = f"routes[{index}]"
            if route.name in seen:
                raise PolicyConfigError(f"{where}.name", "unique", f"route {route.name!r} is defined twice")
            seen.add(route.name)
            references = [("primary", route.primary)] if route.primary else []
            references += [(f"fallbacks[{i}]", name) for i, name in enumerate(route.fallbacks)]
            if route.complexity:
                for label in ("simple", "complex"):
                    rule = getattr(route.complexity, label)
                    references += [(f"complexity.{label}.models[{i}]", m) for i, m in enumerate(rule.models if rule else ())]
            if route.experiment:
                references += [(f"experiment.arms[{i}].model", arm.model) for i, arm in enumerate(route.experiment.arms)]
            if route.canary:
                references.append(("canary.model", route.canary.model))
            if route.shadow:
                references.append(("shadow.model", route.shadow.model))
            for field, name in references:
                if name not in self.models:
                    raise PolicyConfigError(
                        f"{where}.{field}", "unknown_model", f"{name!r} is not in the models catalog"
                    )
            chain = route.model_names()
            if len(set(chain)) != len(chain):
                raise PolicyConfigError(f"{where}.fallbacks", "unique", "a model appears twice in primary + fallbacks")
            rule = route.budget
            if rule and rule.downgrade_to_tier and rule.downgrade_to_tier not in self.tiers:
                raise PolicyConfigError(
                    f"{where}.budget.downgrade_to_tier", "known_tier", f"{rule.downgrade_to_tier!r} is not one of {list(self.tiers)}"
                )
        for name in self.limits.models:
            try:
                parse_model_ref(name)
            except ValueError as exc:
                raise PolicyConfigError(f"limits.models.{name}", "provider_model", str(exc)) from None
        cap_names = [cap.name for cap in self.limits.concurrency]
        if len(set(cap_names)) != len(cap_names):
            raise PolicyConfigError("limits.concurrency", "unique", f"cap names must be unique, got {cap_names}")
        tiers = self.tenant_tiers
        for tier_name, tier in tiers.tiers.items():
            for i, model_tier in enumerate(tier.model_tiers):
                if model_tier not in self.tiers:
                    raise PolicyConfigError(
                        f"tenant_tiers.tiers.{tier_name}.model_tiers[{i}]", "known_tier",
                        f"{model_tier!r} is not one of {list(self.tiers)}",
                    )
        if tiers.default is not None and tiers.default not in tiers.tiers:
            raise PolicyConfigError("tenant_tiers.default", "known_tenant_tier",
                                    f"{tiers.default!r} is not one of {sorted(tiers.tiers)}")
        for tenant, tier_name in tiers.tenants.items():
            if tier_name not in tiers.tiers:
                raise PolicyConfigError(f"tenant_tiers.tenants.{tenant}", "known_tenant_tier",
                                        f"{tier_name!r} is not one of {sorted(tiers.tiers)}")
        default_rule = self.defaults.budget
        if default_rule.downgrade_to_tier and default_rule.downgrade_to_tier not in self.tiers:
            raise PolicyConfigError(
                "defaults.budget.downgrade_to_tier", "known_tier", f"{default_rule.downgrade_to_tier!r} is not a tier"
            )
        return self

    def model_spec(self, key: ModelKey) -> ModelSpec | None:
        return self.models.get(model_name(key))

    def tier_rank(self, key: ModelKey) -> int | None:
        """0 = most expensive tier; None for models outside the catalog."""
        spec = self.model_spec(key)
        return self.tiers.index(spec.tier) if spec else None

    def route_for(self, service: str, feature: str) -> Route:
        """The most specific matching route (service beats feature), the first in the file on ties; an
        implicit catch-all (caller's allowed models, cheapest within SLO) when nothing matches."""
        matching = [(route.match.specificity, -i, route) for i, route in enumerate(self.routes)
                    if route.match.matches(service, feature)]
        if not matching:
            return IMPLICIT_ROUTE
        return max(matching, key=lambda item: (item[0], item[1]))[2]


IMPLICIT_ROUTE = Route(name="__implicit__", strategy="cheapest")


def _field_path(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "policy"


def parse_policy(text: str) -> RoutingPolicy:
    """Parse and validate policy YAML; PolicyConfigError names the first bad field and its rule."""
    try:
        document = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PolicyConfigError("policy", "yaml", f"is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise PolicyConfigError("policy", "mapping", f"must be a YAML mapping, got {type(document).__name__}")
    try:
        return RoutingPolicy.model_validate(document)
    except PolicyConfigError:
        raise
    except ValidationError as exc:
        error = exc.errors()[0]
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, PolicyConfigError):
            raise cause from None
        message = error["msg"].removeprefix("Value error, ")
        raise PolicyConfigError(_field_path(error["loc"]), error["type"], message) from None


def load_policy_file(path: Path) -> tuple[RoutingPolicy, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyConfigError("policy", "readable", f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_policy(text), text


def policy_diff(old_text: str, new_text: str) -> str:
    return "".join(difflib.unified_diff(
        old_text.splitlines(keepends=True), new_text.splitlines(keepends=True), "policy (current)", "policy (new)",
    ))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PolicyChange:
    """One installed change, as the audit trail records it."""

    actor: str
    role: str
    source: str
    action: str
    changed_at: dt.datetime
    old_version: int
    new_version: int
    old_text: str
    new_text: str
    comment: str | None

    @property
    def diff(self) -> str:
        return policy_diff(self.old_text, self.new_text)


@dataclass(frozen=True)
class InstalledPolicy:
    policy: RoutingPolicy
    text: str
    version: int
    updated_by: str
    updated_at: dt.datetime


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class PolicyStore:
    """The running policy. Readers get an immutable snapshot; writers validate first and install atomically."""

    def __init__(
        self,
        policy: RoutingPolicy,
        text: str,
        *,
        path: Path | None = None,
        on_change: Callable[[PolicyChange], None] | None = None,
        clock: Callable[[], dt.datetime] = _utc_now,
    ):
        self.path = path
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._current = InstalledPolicy(policy, text, 1, "file" if path else "startup", clock())
        self._mtime = self._file_mtime()
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    def from_file(cls, path: Path | None, **kwargs: Any) -> "PolicyStore":
        policy, text = load_policy_file(path or BUNDLED_POLICY)
        return cls(policy, text, path=path, **kwargs)

    @property
    def current(self) -> InstalledPolicy:
        return self._current

    def install(
        self, text: str, *, actor: str, role: str, source: str = "grpc", expected_version: int = 0,
        comment: str | None = None,
    ) -> PolicyChange:
        """Validate and install `text`. Raises PolicyConfigError or PolicyVersionConflict, leaving the
        running policy untouched."""
        policy = parse_policy(text)
        with self._lock:
            old = self._current
            if expected_version and expected_version != old.version:
                raise PolicyVersionConflict(
                    f"expected policy version {expected_version}, but version {old.version} is current"
                )
            now = self._clock()
            change = PolicyChange(
                actor=actor, role=role, source=source, action="set_policy" if source == "grpc" else "load_policy",
                changed_at=now, old_version=old.version, new_version=old.version + 1, old_text=old.text,
                new_text=text, comment=comment,
            )
            if self._on_change is not None:
                self._on_change(change)  # the audit lands first: a change it cannot record is not installed
            self._current = InstalledPolicy(policy, text, change.new_version, actor, now)
        return change

    def _file_mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime if self.path else None
        except OSError:
            return None

    def reload_if_changed(self) -> PolicyChange | None:
        """Install the file again when its modification time moved and its text differs. A bad file is
        logged and the running policy kept, so a typo never takes routing down."""
        mtime = self._file_mtime()
        if mtime is None or mtime == self._mtime:
            return None
        self._mtime = mtime
        try:
            text = self.path.read_text(encoding="utf-8")  # type: ignore[union-attr]
        except OSError as exc:
            log.error("cannot re-read policy %s: %s", self.path, exc)
            return None
        if text == self._current.text:
            return None
        try:
            change = self.install(text, actor=f"file:{self.path}", role="admin", source="file")
        except PolicyConfigError as exc:
            log.error("policy file %s not installed, keeping version %d: %s", self.path, self._current.version, exc)
            return None
        except Exception:
            self._mtime = None  # e.g. the audit could not be written: try again on the next poll
            log.exception("policy file %s not installed, keeping version %d", self.path, self._current.version)
            return None
        log.info("policy reloaded from %s: version %d", self.path, change.new_version)
        return change

    def start_watching(self, interval_s: float = 1.0) -> None:
        if self.path is None or self._watcher is not None:
            return

        def watch() -> None:
            while not self._stop.wait(interval_s):
                self.reload_if_changed()

        self._watcher = threading.Thread(target=watch, name="policy-file-watcher", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5.0)


def model_keys(names: list[str] | tuple[str, ...]) -> list[ModelKey]:
    return [parse_model_ref(name) for name in names]
