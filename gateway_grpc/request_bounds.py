"""What one gateway request may carry, and how much one gateway error may say.

Every string field of every `routing.v1` request is checked with the shared text rules
(`prismops.finops.text_rules`): names (tenant, service, feature, customer, region, task type, hints,
provider and model names, outcome status) at most NAME_MAX_CHARS characters, ids (request, session and
decision ids) at most ID_MAX_CHARS, free text (a SetPolicy comment) at most TEXT_MAX_CHARS, all of them
printable (no control, bidi, zero-width, surrogate, private-use or unassigned characters). Every repeated
field has a ceiling too, checked *before* anything reads its items, so no error and no decision is ever built
from an unbounded list. Each failure is a FieldRuleError the server answers with INVALID_ARGUMENT.

A whole request larger than `gateway.max_request_bytes` never reaches this module: grpc refuses it with
RESOURCE_EXHAUSTED ("Received message larger than max"), gRPC's standard code for an oversized message.

`cap_detail` bounds the status message of every error the server sends. gRPC carries that message in the
`grpc-message` trailer, percent-encoded (up to three bytes on the wire per UTF-8 byte); past the peer's
metadata soft limit (8 KiB by default) grpc starts to drop the call *at random* with RESOURCE_EXHAUSTED
"metadata size exceeds hard limit" instead of the status the server meant. A capped message (at most
ERROR_DETAIL_MAX_CHARS characters and ERROR_DETAIL_MAX_BYTES UTF-8 bytes, so at most about 3 KiB encoded)
always arrives as sent.
"""

from __future__ import annotations

import re
from collections.abc import Sized

from prismops.errors import FieldRuleError
from prismops.finops.text_rules import ID_MAX_CHARS, NAME_MAX_CHARS, TEXT_MAX_CHARS, check_id, check_name, check_text
from prismops.gateway_grpc.routing.v1 import routing_pb2

MAX_RESPONSE_BYTES = 4 * 1024 * 1024
"""Largest message the gateway sends: grpc's default receive limit, so every stock client can read it."""
MAX_HINTS = 32
"""Entries in DecideRequest.hints."""
ERROR_DETAIL_MAX_CHARS = 512
ERROR_DETAIL_MAX_BYTES = 1024
"""UTF-8 bytes of one error message (non-ASCII text counts up to four bytes a character)."""
LIST_ITEMS_SHOWN = 5
"""Items an over-long error message keeps of each list it names, before "… (N more)"."""

_BOM = "\ufeff"
_LINE_BREAKS = str.maketrans({"\n": " ", "\r": " "})


def check_count(field: str, items: Sized, limit: int) -> None:
    """Raise FieldRuleError(field, "max_items") when the repeated field holds more than `limit` items."""
    if len(items) > limit:
        raise FieldRuleError(field, "max_items", f"must have at most {limit} items, got {len(items)}")


def check_model_ref(field: str, ref: routing_pb2.ModelRef) -> None:
    check_name(f"{field}.provider", ref.provider)
    check_name(f"{field}.model", ref.model)


def check_decide(request: routing_pb2.DecideRequest, max_candidates: int) -> None:
    """Every bound of a DecideRequest: list sizes first, then each string. The common request (every string
    short and printable) is settled in C: `isprintable` is False for every category the text rules forbid
    (and for a few they allow, such as a no-break space); any other request takes the field-by-field check,
    which names the first bad field."""
    check_count("allowed_models", request.allowed_models, max_candidates)
    check_count("hints", request.hints, MAX_HINTS)
    names = [request.tenant, request.service, request.feature, request.task_type, request.region, request.customer]
    for ref in request.allowed_models:
        names += (ref.provider, ref.model)
    names.extend(request.hints)
    ids = (request.request_id, request.session_id)
    if max(map(len, names)) <= NAME_MAX_CHARS and max(map(len, ids)) <= ID_MAX_CHARS and \
            "".join(names).isprintable() and "".join(ids).isprintable():
        return
    for name in ("tenant", "service", "feature", "task_type", "region", "customer"):
        check_name(name, getattr(request, name))
    for name in ("request_id", "session_id"):
        check_id(name, getattr(request, name))
    for index, ref in enumerate(request.allowed_models):
        check_model_ref(f"allowed_models[{index}]", ref)
    for index, hint in enumerate(request.hints):
        check_name(f"hints[{index}]", hint)


def check_report_outcome(request: routing_pb2.ReportOutcomeRequest) -> None:
    check_id("decision_id", request.decision_id)
    check_model_ref("model", request.model)
    check_name("status", request.status)
    check_id("lease_id", request.lease_id)
    for name in ("retry_after_ms", "input_tokens", "output_tokens"):
        value = getattr(request, name)
        if value < 0:
            raise FieldRuleError(name, "non_negative", f"must be >= 0, got {value}")


def check_set_policy(request: routing_pb2.SetPolicyRequest, max_document_chars: int) -> None:
    """The YAML is a document: line breaks and tabs (and a leading byte-order mark) are fine, other control,
    bidi and zero-width characters are not. The comment goes into the audit record as one line of text."""
    document = request.yaml[1:] if request.yaml.startswith(_BOM) else request.yaml
    # line breaks become spaces one for one, so a reported position is still the document's
    check_text("yaml", document.translate(_LINE_BREAKS), max_document_chars, allow_tabs=True)
    check_text("comment", request.comment, TEXT_MAX_CHARS, allow_tabs=True)


# a comma-separated run of at least LIST_ITEMS_SHOWN + 2 items without spaces, e.g. "openai/a, openai/b, …";
# each item starts after a space, a comma or the start and is matched possessively, so the scan is linear
# (a plain `[^\s,]+` backtracks quadratically through one long word)
_LIST_RUN = re.compile(r"(?<![^\s,])(?:[^\s,]++, ){%d,}[^\s,]++" % (LIST_ITEMS_SHOWN + 1))
_RULE_SUFFIX = re.compile(r" \[[A-Za-z0-9_.-]{1,64}\]$")


def _fits(text: str, max_chars: int, max_bytes: int) -> bool:
    return len(text) <= max_chars and len(text.encode("utf-8", "surrogatepass")) <= max_bytes


def _shorten_list(match: re.Match[str]) -> str:
    items = match.group(0).split(", ")
    hidden = len(items) - LIST_ITEMS_SHOWN - 1
    return ", ".join(items[:LIST_ITEMS_SHOWN]) + f", … ({hidden} more), " + items[-1]


def cap_detail(text: str, max_chars: int = ERROR_DETAIL_MAX_CHARS, max_bytes: int = ERROR_DETAIL_MAX_BYTES) -> str:
    """`text` as it fits one error message. A short text is returned unchanged. A long one first has each list
    it names cut to its first items, "… (N more)" and its last item; if that is still too long, the middle is
    cut ("… (N more characters)"), keeping the start (the field) and a trailing "[rule]"."""
    if _fits(text, max_chars, max_bytes):
        return text
    text = _LIST_RUN.sub(_shorten_list, text)
    if _fits(text, max_chars, max_bytes):
        return text
    rule = _RULE_SUFFIX.search(text)
    suffix = rule.group(0) if rule else ""
    body = text[: len(text) - len(suffix)]
    widest_marker = f"… ({len(body)} more characters)"
    keep = max(0, max_chars - len(suffix) - len(widest_marker))
    byte_budget = max(0, max_bytes - len((suffix + widest_marker).encode("utf-8")))
    head = body[:keep].encode("utf-8", "surrogatepass")[:byte_budget].decode("utf-8", "ignore")
    return f"{head}… ({len(body) - len(head)} more characters){suffix}"
