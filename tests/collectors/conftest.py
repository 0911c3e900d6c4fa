from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from prismops.finops.gpu_pricing import GpuCatalog, load_gpu_catalog
from prismops.finops.gpu_windows import validate_gpu_usage
from prismops.streams.codecs import codec_for
from prismops.streams.topics import GPU_USAGE

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
UTC = dt.timezone.utc


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def catalog() -> GpuCatalog:
    return load_gpu_catalog()


@pytest.fixture(scope="session")
def accept() -> Callable[[Iterable[dict[str, Any]]], None]:
    """Every event must encode with the usage.gpu.v1 schema and pass the worker's own rules."""
    codec = codec_for(GPU_USAGE.schema)
    catalog = load_gpu_catalog()

    def check(events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            decoded = codec.decode(codec.encode(event))
            validate_gpu_usage(decoded, key=f"{event['cluster']}/{event['node']}".encode(),
                               now=event["window_end"] + dt.timedelta(hours=1), catalog=catalog, window_s=3600)

    return check
