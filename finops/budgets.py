"""Budgets per tenant and per team, daily and monthly, in USD and in tokens, and the ledger that spends them.

Plain Python (no Faust, no Kafka) so the rules are tested on their own; `prismops.agents.budget_agents` runs one
ledger per scope with its store in a Faust table (changelogged, so a restart neither forgets spend nor
re-decides a crossing).

The rules:
- Budgets are the YAML list named by `settings.budgets.definitions` plus two seeds for every tenant: daily USD
  (`default_tenant_daily_usd`) and daily tokens (`default_tenant_daily_tokens`). A seed set to 0 is left out;
  a YAML budget with a seed's id replaces the seed.
- A budget for a named scope id replaces the "*" budget of the same scope, period and unit for that id, so
  one tenant can be given a larger (or smaller) allowance than everyone else.
- Periods are UTC calendar days and months of the cost line's `event_time`.
- USD counts every line's `cost_usd`, whatever its source (llm, gpu, cloud); tokens count input + output tokens.
- A threshold is crossed when spent x 100 >= limit x pct: `warn_pct` warns, `block_pct` blocks. Each (budget,
  scope id, period, threshold) is crossed at most once; its event id is derived from exactly those four, so
  anything that re-sends it sends the same id.
- Lines that travel in a batch record (one Kafka message, many lines) are applied per batch (`apply_batch`). A
  batch names its `origin`, a monotonic stream such as "<usage topic>/<partition>", and its `position` in it:
  positions increase within an origin and a replayed batch repeats both. Each scope record keeps, per origin,
  the last position it applied; a batch at or below it was already applied to that scope, so it is not
  counted again and the crossings its lines caused are handed back (`redelivered`). Nothing is remembered per
  line, so a batch costs one store write per scope it touches whatever its size. Each scope decides on its
  own: a crash between two scopes' writes is repaired by the replay (one scope redelivers, the other applies).
- A line that comes alone (`apply`: billing and GPU lines, which have no origin) is applied at most once per
  scope: its line_id is remembered (for the current and the previous calendar month), so a replayed line is
  recognized and not counted again.
- A line older than the previous calendar month is not counted at all (`LedgerOutcome.too_late`,
  `too_late_lines`): the ledger no longer holds its period, so its replay could not be recognized.
- Blocked means: some budget of the scope is at or over block_pct in the period that contains `now`. A new
  period starts from zero, so it unblocks.
"""

from __future__ import annotations

import bisect
import datetime as dt
import decimal
import functools
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from prismops.settings import BudgetSettings
from prismops.errors import FieldRuleError

SCOPES = ("tenant", "team")
PERIODS = ("daily", "monthly")
UNITS = ("usd", "tokens")
WILDCARD = "*"
SEED_DAILY_USD = "tenant-daily-usd"
SEED_DAILY_TOKENS = "tenant-daily-tokens"
BUDGET_EVENT_NAMESPACE = uuid.UUID("0b6f7d2e-8c1a-4f5e-9a37-2d4c6e8f1b90")

_EXACT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
_SCOPE_PREFIX = "scope|"
_LINE_PREFIX = "line|"


class BudgetDefinitionError(FieldRuleError):
    """A budget definition that cannot be used; names the field (e.g. budgets[2].limit) and the rule."""


@dataclass(frozen=True)
class Budget:
    budget_id: str
    scope: str
    scope_id: str
    period: str
    unit: str
    limit: Decimal

    def describe(self) -> str:
        """'tenant-daily-usd ($30 per day)'."""
        per = "day" if self.period == "daily" else "month"
        return f"{self.budget_id} ({format_amount(self.unit, self.limit)} per {per})"


@dataclass(frozen=True)
class BudgetBook:
    """Every budget, and which of them govern one scope id."""

    budgets: tuple[Budget, ...]

    @cached_property
    def _by_scope_id(self) -> dict[tuple[str, str], list[Budget]]:
        """Budgets by (scope, scope id), in file order: a lookup per line must not scan 10,000 budgets."""
        index: dict[tuple[str, str], list[Budget]] = {}
        for budget in self.budgets:
            index.setdefault((budget.scope, budget.scope_id), []).append(budget)
        return index

    def for_scope(self, scope: str, scope_id: str) -> list[Budget]:
        """The scope id's own budgets, plus the "*" budgets of a (period, unit) it has no own budget for."""
        own = list(self._by_scope_id.get((scope, scope_id), ()))
        covered = {(b.period, b.unit) for b in own}
        everyone = [b for b in self._by_scope_id.get((scope, WILDCARD), ()) if (b.period, b.unit) not in covered]
        return own + everyone

    def has_scope(self, scope: str) -> bool:
        return any(b.scope == scope for b in self.budgets)


def seed_budgets(settings: BudgetSettings) -> list[Budget]:
    """The seeds' defaults for every tenant: daily USD and daily tokens (a default of 0 is left out)."""
    seeds = []
    usd = Decimal(settings.default_tenant_daily_usd)
    if usd < 0:
        raise BudgetDefinitionError("budgets.default_tenant_daily_usd", "non_negative", f"must be >= 0, got {usd}")
    if usd > 0:
        seeds.append(Budget(SEED_DAILY_USD, "tenant", WILDCARD, "daily", "usd", usd))
    tokens = int(settings.default_tenant_daily_tokens)
    if tokens < 0:
        raise BudgetDefinitionError(
            "budgets.default_tenant_daily_tokens", "non_negative", f"must be >= 0, got {tokens}"
        )
    if tokens > 0:
        seeds.append(Budget(SEED_DAILY_TOKENS, "tenant", WILDCARD, "daily", "tokens", Decimal(tokens)))
    return seeds


def parse_budgets(document: Any) -> list[Budget]:
    """Budgets from a parsed YAML document `{budgets: [{id, scope, scope_id, period, unit, limit}]}`."""
    if document is None:
        return []
    if not isinstance(document, Mapping):
        raise BudgetDefinitionError(None, "mapping", "the budgets file must be a mapping with a `budgets` list")
    entries = document.get("budgets") or []
    if not isinstance(entries, list):
        raise BudgetDefinitionError("budgets", "list", "must be a list of budgets")
    budgets: list[Budget] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"budgets[{index}]"
        if not isinstance(entry, Mapping):
            raise BudgetDefinitionError(
                where, "mapping", "must be a mapping with id, scope, scope_id, period, unit, limit"
            )
        budget_id = _required_text(entry, "id", where)
        if budget_id in seen:
            raise BudgetDefinitionError(f"{where}.id", "unique", f"{budget_id!r} is defined twice")
        seen.add(budget_id)
        scope = _choice(entry, "scope", SCOPES, where)
        scope_id = _required_text(entry, "scope_id", where)
        period = _choice(entry, "period", PERIODS, where)
        unit = _choice(entry, "unit", UNITS, where)
        limit = _limit(entry.get("limit"), unit, f"{where}.limit")
        budgets.append(Budget(budget_id, scope, scope_id, period, unit, limit))
    return budgets


def load_budget_book(settings: BudgetSettings, cache_dir: Path | None = None) -> BudgetBook:
    """The seeds plus the definitions file (a file budget with a seed's id replaces the seed); with `cache_dir`,
    the file is parsed once per content (`read_definitions`)."""
    defined = parse_budgets(read_definitions(Path(settings.definitions), cache_dir)) if settings.definitions else []
    defined_ids = {b.budget_id for b in defined}
    seeds = [b for b in seed_budgets(settings) if b.budget_id not in defined_ids]
    return BudgetBook(tuple(seeds + defined))


def read_definitions(path: Path, cache_dir: Path | None = None) -> Any:
    """The YAML document of a definitions file. With `cache_dir`, its parse is kept there as JSON under the
    file's SHA-256, because a restarted worker waits for it: libyaml takes ~0.9 s for 10,000 budgets, the JSON
    of the same document ~20 ms. A document JSON does not carry unchanged (dates, non-text keys) is not
    cached, and a cache that cannot be written or read is skipped."""
    text = path.read_bytes()
    if cache_dir is None:
        return _parse_yaml(text)
    cached = cache_dir / f"budgets-{hashlib.sha256(text).hexdigest()}.json"
    try:
        return json.loads(cached.read_bytes())
    except (OSError, ValueError):
        pass
    document = _parse_yaml(text)
    try:
        encoded = json.dumps(document, allow_nan=False)
    except (TypeError, ValueError):
        return document
    if json.loads(encoded) != document:
        return document
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(encoded)
        partial.replace(cached)
    except OSError:
        pass
    return document


def _parse_yaml(text: bytes) -> Any:
    # libyaml's loader when PyYAML has it: 10,000 budgets took the pure-Python one 3 s
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _required_text(entry: Mapping[str, Any], name: str, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BudgetDefinitionError(f"{where}.{name}", "required", "is required and must be a non-empty string")
    return value.strip()


def _choice(entry: Mapping[str, Any], name: str, allowed: Sequence[str], where: str) -> str:
    value = entry.get(name)
    if value not in allowed:
        raise BudgetDefinitionError(f"{where}.{name}", "one_of", f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _limit(value: Any, unit: str, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise BudgetDefinitionError(where, "required", "is required: a positive number (a decimal string for USD)")
    try:
        limit = Decimal(str(value).strip())
    except decimal.InvalidOperation:
        raise BudgetDefinitionError(where, "decimal", f"{value!r} is not a number") from None
    if not limit.is_finite() or limit <= 0:
        raise BudgetDefinitionError(where, "positive", f"must be > 0, got {value!r}")
    if unit == "tokens" and limit != limit.to_integral_value():
        raise BudgetDefinitionError(where, "whole_tokens", f"a token budget is a whole number, got {value!r}")
    return limit


# -- periods -------------------------------------------------------------------------------------------------

def as_utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


def period_start(period: str, moment: dt.datetime) -> dt.datetime:
    """Start of the UTC calendar day or month that holds `moment`."""
    moment = as_utc(moment)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day
    if period == "monthly":
        return day.replace(day=1)
    raise ValueError(f"unknown budget period {period!r}")


def period_end(period: str, start: dt.datetime) -> dt.datetime:
    """Exclusive end of the period that starts at `start`."""
    if period == "daily":
        return start + dt.timedelta(days=1)
    return _next_month(start)


def _next_month(start: dt.datetime) -> dt.datetime:
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def period_label(period: str, start: dt.datetime) -> str:
    return start.strftime("%Y-%m-%d" if period == "daily" else "%Y-%m")


def retention_start(now: dt.datetime) -> dt.datetime:
    """First instant whose lines the ledger still remembers: the start of the previous UTC calendar month."""
    month = period_start("monthly", now)
    return month.replace(year=month.year - 1, month=12) if month.month == 1 else month.replace(month=month.month - 1)


def in_period(period: str, start: dt.datetime, now: dt.datetime) -> bool:
    return start <= as_utc(now) < period_end(period, start)


# -- amounts -------------------------------------------------------------------------------------------------

def line_amount(line: Mapping[str, Any], unit: str) -> Decimal:
    """What a cost line spends of a budget in `unit`: its cost_usd, or its input + output tokens."""
    if unit == "usd":
        return Decimal(line["cost_usd"])
    return Decimal(int(line.get("input_tokens") or 0) + int(line.get("output_tokens") or 0))


def plain_decimal(amount: Decimal) -> str:
    """Exact, without exponent or trailing zeros: Decimal('0.050000000000') -> '0.05'."""
    text = format(amount.normalize(context=_EXACT), "f")
    return "0" if text in ("-0", "0") else text


def format_amount(unit: str, amount: Decimal) -> str:
    if unit == "usd":
        return f"${plain_decimal(amount)}"
    return f"{int(amount):,} tokens"


def used_pct(spent: Decimal, limit: Decimal) -> float:
    return float(_EXACT.divide(spent * 100, limit).quantize(Decimal("0.01"), context=_EXACT))


def format_pct(pct: float) -> str:
    return f"{pct:.2f}".rstrip("0").rstrip(".") + "%"


@dataclass(frozen=True)
class BudgetStanding:
    """The budget closest to (or over) its limit for a request's tenant or team, with its numbers."""

    tenant: str
    scope: str
    scope_id: str
    budget_id: str
    period: str
    period_start: dt.datetime
    unit: str
    limit: Decimal
    spent: Decimal
    used_pct: float
    status: str

    @property
    def message(self) -> str:
        """The refusal sentence, with the budget and the numbers."""
        who = f"tenant {self.tenant}" if self.scope == "tenant" else f"tenant {self.tenant}'s team {self.scope_id}"
        when = ("on " if self.period == "daily" else "in ") + period_label(self.period, self.period_start)
        until = period_end(self.period, self.period_start).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"{who} is over budget {self.budget_id}: spent {format_amount(self.unit, self.spent)} of "
            f"{format_amount(self.unit, self.limit)} ({format_pct(self.used_pct)}) {when} UTC; "
            f"routing refused until {until} (MANUAL mode)"
        )


def budget_event_id(budget: Budget, scope_id: str, start: dt.datetime, threshold_pct: int) -> str:
    """Deterministic from (budget, scope id, period start, threshold): a replay can only repeat the same id."""
    return str(uuid.uuid5(
        BUDGET_EVENT_NAMESPACE, f"{budget.budget_id}|{budget.scope}/{scope_id}|{start.isoformat()}|{threshold_pct}"
    ))


# -- the ledger ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Crossing:
    """One threshold of one budget crossed by one scope id in one period, and the line that crossed it."""

    event_id: str
    budget: Budget
    scope_id: str
    period_start: dt.datetime
    threshold_pct: int
    action: str
    limit: Decimal
    spent: Decimal
    at: dt.datetime
    line_id: str
    message: str

    @property
    def scope_key(self) -> str:
        return f"{self.budget.scope}/{self.scope_id}"

    def event_record(self) -> dict[str, Any]:
        """The budget_event Avro record (schemas/budget_event.v1.avsc)."""
        return {
            "event_id": self.event_id,
            "at": self.at,
            "budget_id": self.budget.budget_id,
            "scope": self.budget.scope,
            "scope_id": self.scope_id,
            "period": self.budget.period,
            "period_start": self.period_start,
            "unit": self.budget.unit,
            "threshold_pct": self.threshold_pct,
            "action": self.action,
            "limit": self.limit,
            "spent": self.spent,
            "message": self.message,
        }


@dataclass(frozen=True)
class LedgerOutcome:
    """What applying one line (`apply`) or one batch of lines (`apply_batch`) did.

    crossings: thresholds these lines crossed for the first time; over the ledger's life each (budget, scope
        id, period, threshold) appears here at most once. Those of one scope id come in the order of its lines.
    redelivered: for every scope the line or batch had already been applied to, the crossings its lines caused
        the first time, unchanged. Sending them again closes the crash window between the store's write and the
        event's publication (the consumers dedupe on the same event id); they are never new decisions.
    states: the budget_state row of every scope touched (re-sent on a replay too: rows are idempotent).
    duplicate: some scope had already applied the line or batch; duplicate_scopes says how many.
    too_late: some line was older than the retention horizon and not counted; too_late_lines says how many.
    """

    crossings: tuple[Crossing, ...] = ()
    redelivered: tuple[Crossing, ...] = ()
    states: tuple[dict[str, Any], ...] = ()
    duplicate: bool = False
    too_late: bool = False
    duplicate_scopes: int = 0
    too_late_lines: int = 0


class BudgetLedger:
    """Applies cost lines to the budgets of some scopes; all state lives in `store`, a mutable mapping of
    JSON-able values (a dict in tests, a Faust table in the worker).

    Store keys:
      scope|<scope>/<scope_id>            -> {"last_line", "shard", "origins": {"<origin>": [floor, *positions]},
                                              "periods": {"<budget>|<start>": {"spent",
                                              "crossed": {"<pct>": {"line_id", "at", "spent", "limit"}}}}}
      line|<scope>/<scope_id>|<line_id>   -> {"date", "shard"}: the single line was applied to this scope
    A single line's scope record is written before its line marker. A store that keeps writes in order (one
    Kafka changelog partition) and loses only a tail can therefore lose the marker of the last line alone, and
    `last_line` in the scope record recognizes that line: no interleaving double counts or drops a line. A
    batch writes the scope record alone (spend and origin position together), so it is applied to a scope
    entirely or not at all.
    """

    def __init__(
        self,
        book: BudgetBook,
        store: MutableMapping[str, Any],
        *,
        warn_pct: int = 80,
        block_pct: int = 100,
        mode: str = "manual",
        scopes: Sequence[str] = SCOPES,
    ):
        if not 0 < warn_pct < block_pct:
            raise BudgetDefinitionError(
                "budgets.warn_pct", "below_block", f"need 0 < warn_pct ({warn_pct}) < block_pct ({block_pct})"
            )
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown:
            raise ValueError(f"unknown budget scopes {unknown}")
        self.book = book
        self.store = store
        self.warn_pct = warn_pct
        self.block_pct = block_pct
        self.mode = mode
        self.scopes = tuple(scopes)
        self._thresholds = ((warn_pct, "warn"), (block_pct, "block"))

    @classmethod
    def from_settings(
        cls, settings: BudgetSettings, store: MutableMapping[str, Any], scopes: Sequence[str] = SCOPES,
        book: BudgetBook | None = None,
    ) -> "BudgetLedger":
        """`book`: the budgets already loaded from `settings` (several ledgers share one load)."""
        return cls(
            book or load_budget_book(settings), store, warn_pct=settings.warn_pct, block_pct=settings.block_pct,
            mode=settings.mode, scopes=scopes,
        )

    def governs(self, line: Mapping[str, Any], scope: str) -> bool:
        """Whether any budget governs the line's id in `scope` (e.g. whether to repartition it by team)."""
        return bool(self.book.for_scope(scope, line[scope]))

    def apply(self, line: Mapping[str, Any], now: dt.datetime, *, shard: int | None = None) -> LedgerOutcome:
        """Apply one decoded cost line (schemas/cost_line.v2.avsc) to every budget of its scopes.

        `now` decides which period is current for the state rows; `shard` tags what this call writes (the
        worker passes the source partition) so `prune` removes only entries of the shard it is called for.
        """
        event_time = as_utc(line["event_time"])
        if event_time < retention_start(now):
            return LedgerOutcome(too_late=True, too_late_lines=1)
        crossings: list[Crossing] = []
        redelivered: list[Crossing] = []
        states: list[dict[str, Any]] = []
        duplicate_scopes = 0
        for scope in self.scopes:
            scope_id = line[scope]
            budgets = self.book.for_scope(scope, scope_id)
            if not budgets:
                continue
            scope_key = f"{scope}/{scope_id}"
            record_key = _SCOPE_PREFIX + scope_key
            marker_key = f"{_LINE_PREFIX}{scope_key}|{line['line_id']}"
            record = _copy_record(self.store.get(record_key))
            if marker_key in self.store or record.get("last_line") == line["line_id"]:
                duplicate_scopes += 1
                redelivered.extend(self._crossings_of_line(budgets, scope_id, record, line["line_id"], event_time))
            else:
                crossings.extend(self._spend(budgets, scope_id, record, [(line, event_time)]))
                record["last_line"] = line["line_id"]
                record["shard"] = shard
                _forget_periods_before(record, retention_start(now))
                self.store[record_key] = record
                self.store[marker_key] = {"date": event_time.date().isoformat(), "shard": shard}
            states.append(self._state_row(scope, scope_id, budgets, record, now))
        return LedgerOutcome(
            tuple(crossings), tuple(redelivered), tuple(states), duplicate=duplicate_scopes > 0,
            duplicate_scopes=duplicate_scopes,
        )

    def apply_batch(
        self, lines: Iterable[Mapping[str, Any]], now: dt.datetime, *, shard: int | None = None, origin: str,
        position: int,
    ) -> LedgerOutcome:
        """Apply the lines of one batch record (schemas/cost_line_batch.v1.avsc) to every budget of their scopes.

        A replay repeats the whole batch, so a scope remembers the batch's (origin, position) instead of each
        line id: one store write per scope touched, whatever the batch's size, and nothing that grows with the
        line count. The lines of one scope id are spent in batch order, so each crossing names the exact line
        that crossed, as `apply` would. A line id repeated within the batch counts once, as `apply` would.
        `now` and `shard` mean what they mean for `apply`.
        """
        horizon = retention_start(now)
        touched: dict[tuple[str, str], dict[str, tuple[Mapping[str, Any], dt.datetime]]] = {}
        too_late_lines = 0
        for line in lines:
            event_time = as_utc(line["event_time"])
            if event_time < horizon:
                too_late_lines += 1
                continue
            for scope in self.scopes:
                touched.setdefault((scope, line[scope]), {}).setdefault(line["line_id"], (line, event_time))
        crossings: list[Crossing] = []
        redelivered: list[Crossing] = []
        states: list[dict[str, Any]] = []
        duplicate_scopes = 0
        for (scope, scope_id), scope_lines in touched.items():
            budgets = self.book.for_scope(scope, scope_id)
            if not budgets:
                continue
            record_key = f"{_SCOPE_PREFIX}{scope}/{scope_id}"
            record = _copy_record(self.store.get(record_key))
            if _position_applied(record["origins"].get(origin), position):
                duplicate_scopes += 1
                for line_id, (_line, event_time) in scope_lines.items():
                    redelivered.extend(self._crossings_of_line(budgets, scope_id, record, line_id, event_time))
            else:
                crossings.extend(self._spend(budgets, scope_id, record, list(scope_lines.values())))
                record["origins"][origin] = _with_position(record["origins"].get(origin), position)
                record["shard"] = shard
                _forget_periods_before(record, horizon)
                self.store[record_key] = record
            states.append(self._state_row(scope, scope_id, budgets, record, now))
        return LedgerOutcome(
            tuple(crossings), tuple(redelivered), tuple(states), duplicate=duplicate_scopes > 0,
            too_late=too_late_lines > 0, duplicate_scopes=duplicate_scopes, too_late_lines=too_late_lines,
        )

    def scope_ids(self, shard: int | None = None) -> list[tuple[str, str]]:
        """The (scope, scope id) pairs the store holds a record for; with `shard`, only those that shard wrote.

        A state row only changes when a line arrives, so a scope blocked yesterday would stay blocked in the
        router past midnight: a timer republishes `state_row` of each of these at every period boundary.
        """
        pairs = []
        for key in list(self.store.keys()):
            if not key.startswith(_SCOPE_PREFIX):
                continue
            if shard is not None and (self.store.get(key) or {}).get("shard") != shard:
                continue
            scope, _, scope_id = key[len(_SCOPE_PREFIX):].partition("/")
            pairs.append((scope, scope_id))
        return sorted(pairs)

    def state_row(self, scope: str, scope_id: str, now: dt.datetime) -> dict[str, Any] | None:
        """The budget_state row of one scope id as the store has it now (None when no budget governs it).

        Each budget counts only the period that contains `now`, so on the first call of a new day or month a
        scope blocked in the previous one reads as not blocked: the new period starts at zero.
        """
        budgets = self.book.for_scope(scope, scope_id)
        if not budgets:
            return None
        record = _copy_record(self.store.get(f"{_SCOPE_PREFIX}{scope}/{scope_id}"))
        return self._state_row(scope, scope_id, budgets, record, now)

    def prune(self, now: dt.datetime, *, shard: int | None = None) -> int:
        """Forget line markers (and empty scope records) from before the retention horizon; with `shard`,
        only those that shard wrote. Returns how many entries were removed.

        A scope record goes with its origin positions: every batch it applied held only lines that are now past
        the horizon, so a replay of one is not counted anyway (too late)."""
        horizon = retention_start(now)
        horizon_date = horizon.date().isoformat()
        doomed = []
        for key, value in list(self.store.items()):
            if shard is not None and (value or {}).get("shard") != shard:
                continue
            if key.startswith(_LINE_PREFIX) and value["date"] < horizon_date:
                doomed.append(key)
            elif key.startswith(_SCOPE_PREFIX):
                periods = value.get("periods") or {}
                if all(_parse_time(k.rsplit("|", 1)[1]) < horizon for k in periods):
                    doomed.append(key)
        for key in doomed:
            del self.store[key]
        return len(doomed)

    def _spend(
        self, budgets: Sequence[Budget], scope_id: str, record: dict[str, Any],
        lines: Sequence[tuple[Mapping[str, Any], dt.datetime]],
    ) -> list[Crossing]:
        """Spend `lines` (each with its UTC event time), in order, into each budget's periods. Per (budget, period)
        the lines are summed at once, and walked one by one only when the sum reaches a threshold not yet crossed,
        so every crossing names the exact line that crossed it and the crossings come in line order, as spending
        the lines one at a time would give (the sums are exact: same total, same text)."""
        found: list[tuple[int, int, int, Crossing]] = []
        periods = record["periods"]
        for budget_index, budget in enumerate(budgets):
            starts: dict[dt.date, dt.datetime] = {}
            groups: dict[dt.datetime, list[tuple[int, Decimal]]] = {}
            for index, (line, event_time) in enumerate(lines):
                day = event_time.date()
                start = starts.get(day)
                if start is None:
                    start = starts[day] = period_start(budget.period, event_time)
                groups.setdefault(start, []).append((index, line_amount(line, budget.unit)))
            for start, spends in groups.items():
                entry = periods.setdefault(_period_key(budget, start), {"spent": "0", "crossed": {}})
                crossed = entry["crossed"]
                before = total = Decimal(entry["spent"])
                for _index, amount in spends:
                    total = _EXACT.add(total, amount)
                reached = _EXACT.multiply(total, 100)
                if any(str(pct) not in crossed and reached >= _EXACT.multiply(budget.limit, pct)
                       for pct, _action in self._thresholds):
                    spent = before
                    for index, amount in spends:
                        spent = _EXACT.add(spent, amount)
                        for threshold_index, (pct, _action) in enumerate(self._thresholds):
                            if str(pct) in crossed or _EXACT.multiply(spent, 100) < _EXACT.multiply(budget.limit, pct):
                                continue
                            line, event_time = lines[index]
                            crossed[str(pct)] = {
                                "line_id": line["line_id"], "at": event_time.isoformat(), "spent": str(spent),
                                "limit": str(budget.limit),
                            }
                            found.append((index, budget_index, threshold_index,
                                          self._crossing(budget, scope_id, start, pct, crossed[str(pct)])))
                entry["spent"] = str(total)
        found.sort(key=lambda crossing: crossing[:3])
        return [crossing for *_order, crossing in found]

    def _crossings_of_line(
        self, budgets: Iterable[Budget], scope_id: str, record: Mapping[str, Any], line_id: str,
        event_time: dt.datetime,
    ) -> list[Crossing]:
        found = []
        for budget in budgets:
            start = period_start(budget.period, event_time)
            entry = record["periods"].get(_period_key(budget, start))
            for pct, _action in self._thresholds:
                crossed = (entry or {}).get("crossed", {}).get(str(pct))
                if crossed and crossed["line_id"] == line_id:
                    found.append(self._crossing(budget, scope_id, start, pct, crossed))
        return found

    def _crossing(
        self, budget: Budget, scope_id: str, start: dt.datetime, pct: int, crossed: Mapping[str, str]
    ) -> Crossing:
        action = "warn" if pct == self.warn_pct else "block"
        limit, spent = Decimal(crossed["limit"]), Decimal(crossed["spent"])
        return Crossing(
            event_id=budget_event_id(budget, scope_id, start, pct),
            budget=budget,
            scope_id=scope_id,
            period_start=start,
            threshold_pct=pct,
            action=action,
            limit=limit,
            spent=spent,
            at=_parse_time(crossed["at"]),
            line_id=crossed["line_id"],
            message=self._message(budget, scope_id, start, pct, action, limit, spent),
        )

    def _message(
        self, budget: Budget, scope_id: str, start: dt.datetime, pct: int, action: str, limit: Decimal, spent: Decimal,
    ) -> str:
        head = (
            f"{budget.scope} {scope_id} reached {pct}% of budget {budget.budget_id}: "
            f"{format_amount(budget.unit, spent)} of {format_amount(budget.unit, limit)} "
            f"({format_pct(used_pct(spent, limit))}) {'on' if budget.period == 'daily' else 'in'} "
            f"{period_label(budget.period, start)} UTC"
        )
        if action == "warn":
            return f"{head}; warning"
        until = period_end(budget.period, start).strftime("%Y-%m-%d %H:%M UTC")
        if self.mode == "manual":
            return f"{head}; routing is blocked until {until} (MANUAL mode)"
        return f"{head}; NOTIFY mode: routing continues"

    def _state_row(
        self, scope: str, scope_id: str, budgets: Iterable[Budget], record: Mapping[str, Any], now: dt.datetime
    ) -> dict[str, Any]:
        usages = []
        blocked_reason = None
        for budget in budgets:
            start = period_start(budget.period, now)
            entry = record["periods"].get(_period_key(budget, start)) or {}
            spent = Decimal(entry.get("spent", "0"))
            pct = used_pct(spent, budget.limit)
            if _EXACT.multiply(spent, 100) >= _EXACT.multiply(budget.limit, self.block_pct):
                status = "block"
            elif _EXACT.multiply(spent, 100) >= _EXACT.multiply(budget.limit, self.warn_pct):
                status = "warn"
            else:
                status = "ok"
            if status == "block" and blocked_reason is None:
                blocked_reason = (
                    f"budget {budget.budget_id}: {format_amount(budget.unit, spent)} of "
                    f"{format_amount(budget.unit, budget.limit)} ({format_pct(pct)}) "
                    f"{'on' if budget.period == 'daily' else 'in'} {period_label(budget.period, start)} UTC"
                )
            usages.append({
                "budget_id": budget.budget_id,
                "period": budget.period,
                "period_start": start,
                "unit": budget.unit,
                "limit": budget.limit,
                "spent": spent,
                "used_pct": pct,
                "status": status,
            })
        return {
            "scope": scope,
            "scope_id": scope_id,
            "blocked": blocked_reason is not None,
            "blocked_reason": blocked_reason,
            "budgets": usages,
            "updated_at": as_utc(now),
        }


def _period_key(budget: Budget, start: dt.datetime) -> str:
    return f"{budget.budget_id}|{_start_text(start)}"


@functools.lru_cache(maxsize=256)
def _start_text(start: dt.datetime) -> str:
    """A period start's ISO text, formatted once: every line spends into a period keyed by it."""
    return start.isoformat()


def _parse_time(text: str) -> dt.datetime:
    return as_utc(dt.datetime.fromisoformat(text))


RECENT_POSITIONS = 16
"""Positions of one origin a scope remembers having applied, besides the floor below which all count as applied."""


def _position_applied(seen: int | list[int] | None, position: int) -> bool:
    """Whether a scope already applied the batch at `position` of an origin. `seen` is [floor, *recent]: every
    position up to the floor counts as applied (it rose as older positions left the window), and the recent ones,
    ascending, were applied. Anything else was not, so a record the worker skipped and read again after the ones
    behind it (the repair in `streams.faust_app.ContiguousCommitConsumer`) is counted then, and a replay after a
    crash repeats positions the scope holds or has passed. An int is a record written before positions were kept:
    everything up to it was applied."""
    if seen is None:
        return False
    if isinstance(seen, int):
        return position <= seen
    return position <= seen[0] or position in seen[1:]


def _with_position(seen: int | list[int] | None, position: int) -> list[int]:
    floor, recent = (-1, []) if seen is None else (seen, []) if isinstance(seen, int) else (seen[0], list(seen[1:]))
    bisect.insort(recent, position)
    while len(recent) > RECENT_POSITIONS:
        floor = max(floor, recent.pop(0))
    return [floor, *recent]


def _copy_record(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """A private, mutable copy: a Faust table only records what is assigned back to it."""
    if not record:
        return {"last_line": None, "shard": None, "origins": {}, "periods": {}}
    return {
        "last_line": record.get("last_line"),
        "shard": record.get("shard"),
        "origins": dict(record.get("origins") or {}),
        "periods": {
            key: {"spent": entry["spent"], "crossed": {pct: dict(c) for pct, c in entry.get("crossed", {}).items()}}
            for key, entry in (record.get("periods") or {}).items()
        },
    }


def _forget_periods_before(record: dict[str, Any], horizon: dt.datetime) -> None:
    record["periods"] = {
        key: entry for key, entry in record["periods"].items() if _parse_time(key.rsplit("|", 1)[1]) >= horizon
    }
