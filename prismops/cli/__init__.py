"""The `prismops` console command.

The command belongs to the platform (`pip install 'prismops[platform]'`); a service's light install has
only the SDK. `main` imports the command group lazily so that, there, it says which extra is missing
instead of failing with an import traceback.
"""

from __future__ import annotations

import sys

PLATFORM_EXTRA_MODULES = frozenset({
    "click", "rich", "faust", "mode", "aiokafka", "clickhouse_driver", "river", "prometheus_client",
    "grpc_reflection", "opentelemetry.sdk", "opentelemetry.exporter",
})


def missing_platform_module(error: ModuleNotFoundError) -> str | None:
    """The platform-extra module whose absence caused `error`, or None when it is something else."""
    name = error.name or ""
    for module in PLATFORM_EXTRA_MODULES:
        if name == module or name.startswith(module + "."):
            return name
    return None


def main() -> None:
    try:
        from prismops.cli.app import main as command_group
    except ModuleNotFoundError as error:
        missing = missing_platform_module(error)
        if missing is None:
            raise
        print(
            f"error: the prismops command needs the platform extra (module {missing!r} is not installed); "
            "install it with: pip install 'prismops[platform]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    command_group()
