"""Length and character rules for every text field an event or a request carries.

A name (tenant, service, model, ...) becomes part of state keys, metric labels, topic keys and ClickHouse
rows, so it must be short and printable: at most `NAME_MAX_CHARS` characters, none of them a control,
format (bidi overrides, zero-width), surrogate, private-use or unassigned character. Free text (an error
code, a label value) may be longer but follows the same character rule except for plain spaces and tabs.
Each failure is a FieldRuleError naming the field and one of the rules below, so a poisonous value goes to
the dead-letter topic with its reason instead of into a key.

Rules: `max_length` (too many characters), `printable` (a forbidden character; the message gives its code
point, never the value, which may be huge or carry personal data).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

from prismops.errors import FieldRuleError

NAME_MAX_CHARS = 128
"""tenant, team, product, service, feature, provider, model, environment, customer, cluster, node, ..."""
ID_MAX_CHARS = 256
"""event_id, request_id, session_id, decision_id, deployment_id, user_id, job ids"""
TEXT_MAX_CHARS = 1024
"""error codes, label values, descriptions"""
LABELS_MAX = 64
"""entries in one labels map"""

# Cc control, Cf format (bidi embeddings/overrides/isolates, zero-width joiners), Cs surrogates, Co private
# use, Cn unassigned. Zl/Zp line and paragraph separators would split log lines.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def first_forbidden_char(value: str, *, allow_tabs: bool = False) -> str | None:
    """The first character the rule forbids, or None."""
    if value.isprintable():  # C-speed: every forbidden category is also unprintable to Python (a subset)
        return None
    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES and not (allow_tabs and char == "\t"):
            return char
    return None


def check_text(field: str, value: str | None, max_chars: int, *, allow_tabs: bool = False) -> None:
    """Raise FieldRuleError unless `value` (None or empty passes) is at most `max_chars` printable characters."""
    if not value:
        return
    if len(value) > max_chars:
        raise FieldRuleError(field, "max_length", f"must be at most {max_chars} characters, got {len(value)}")
    bad = first_forbidden_char(value, allow_tabs=allow_tabs)
    if bad is not None:
        name = unicodedata.name(bad, "unnamed")
        raise FieldRuleError(
            field, "printable",
            f"must hold printable characters only; found U+{ord(bad):04X} ({name}) at position {value.index(bad)}",
        )


def check_name(field: str, value: str | None) -> None:
    check_text(field, value, NAME_MAX_CHARS)


def check_id(field: str, value: str | None) -> None:
    check_text(field, value, ID_MAX_CHARS)


def check_labels(field: str, labels: Mapping[str, str] | None) -> None:
    """A labels map: at most LABELS_MAX entries, names as names, values as free text."""
    if not labels:
        return
    if len(labels) > LABELS_MAX:
        raise FieldRuleError(field, "max_entries", f"must have at most {LABELS_MAX} entries, got {len(labels)}")
    for key, value in labels.items():
        check_text(f"{field}.key", key, NAME_MAX_CHARS)
        check_text(f"{field}.{key}", value, TEXT_MAX_CHARS, allow_tabs=True)
