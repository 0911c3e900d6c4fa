"""`prismops ui`: the built-in dashboard page; `prismops ui build`: install its chart library from npm."""

from __future__ import annotations

import click
from rich.markup import escape

from prismops.cli.output import fail, stdout_console
from prismops.settings import Settings


@click.group(name="ui", invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8710, show_default=True, help="port (0: a free one)")
@click.option("--poll", "poll_s", type=click.IntRange(1, 3600), default=5, show_default=True,
              help="seconds between the page's refreshes of the real-time charts")
@click.option("--no-kafka", is_flag=True, help="do not follow the router's live tables (Kafka); ClickHouse only")
@click.option("--no-build", is_flag=True, help="do not run npm when the chart library is missing; fail instead")
@click.pass_context
def command(ctx: click.Context, host: str, port: int, poll_s: int, no_kafka: bool, no_build: bool) -> None:
    """Serve the dashboard page (real-time TPS, latency, errors and cost; spend, budgets and their forecast,
    anomalies, routing, GPU pools) from the settings' ClickHouse database, and the router's live model and budget
    tables from Kafka, until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from prismops.ui.assets import AssetError, build, chart_library
    from prismops.ui.server import DashboardServer

    settings: Settings = ctx.obj
    if chart_library(settings) is None:
        if no_build:
            fail("the chart library is not installed: run `prismops ui build` (needs npm)")
        try:
            build(settings)
        except AssetError as error:
            fail(escape(str(error)))
    try:
        server = DashboardServer(settings, host=host, port=port, poll_s=poll_s, follow_kafka=not no_kafka)
    except OSError as error:
        fail(escape(f"cannot listen on {host}:{port}: {error}"))
    stdout_console.print(
        f"PrismOps dashboard on {server.url} (database {settings.clickhouse.database}); Ctrl-C stops it",
        highlight=False, soft_wrap=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        if server.gateway is not None:
            server.gateway.close()


@command.command(name="build")
@click.pass_obj
def build_assets(settings: Settings) -> None:
    """Install the page's chart library (Chart.js, pinned by ui/package-lock.json) with `npm ci` into the cache."""
    from prismops.ui.assets import AssetError, asset_dir, build

    try:
        path = build(settings)
    except AssetError as error:
        fail(escape(str(error)))
    stdout_console.print(f"chart library ready: {path} (cache {asset_dir(settings)})", highlight=False, soft_wrap=True)
