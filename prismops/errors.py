"""The error every PrismOps check raises: which field, which rule, and a sentence for people."""

from __future__ import annotations


class FieldRuleError(ValueError):
    """`field` (None when no single field is to blame) broke `rule`; dead letters and gRPC errors carry all three."""

    def __init__(self, field: str | None, rule: str, message: str):
        super().__init__(f"{field}: {message} [{rule}]" if field else f"{message} [{rule}]")
        self.field = field
        self.rule = rule
        self.message = message
