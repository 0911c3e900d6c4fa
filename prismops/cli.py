"""The `prismops` console command."""

from __future__ import annotations

import importlib

import click

from prismops.settings import load_settings

# Each module under prismops.commands exposes `command`; the order is the order of `prismops --help`.
COMMAND_MODULES = ["stack", "topics", "migrate", "db", "price", "worker", "sink", "gateway", "simulate", "report", "export", "demo", "bench", "proto", "ingest", "alerts", "budgets", "detectors", "top"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prismops")
@click.pass_context
def main(ctx: click.Context) -> None:
    """PrismOps: real-time AI FinOps on Kafka, Faust, gRPC and ClickHouse."""
    if ctx.obj is None:  # tests pass their own Settings as obj
        ctx.obj = load_settings()


for _name in COMMAND_MODULES:
    main.add_command(importlib.import_module(f"prismops.commands.{_name}").command)
