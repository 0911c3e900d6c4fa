from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_prismops_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read PRISMOPS_* variables: keep the developer's environment out of these tests."""
    for name in list(os.environ):
        if name.startswith("PRISMOPS_"):
            monkeypatch.delenv(name)
