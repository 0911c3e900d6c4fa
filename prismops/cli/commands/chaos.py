"""`prismops chaos list|run`: named fault scenarios against a stack of the harness's own."""

from __future__ import annotations

import click
from rich.markup import escape

from prismops.cli.output import FORMAT_OPTION, emit, fail, stderr_console
from prismops.settings import Settings

TABLE_COLUMNS = ["scenario", "events_sent", "rows", "lost", "duplicated_raw", "duplicated_final", "cost_exact",
                 "budgets_exact", "dlq", "pii_found", "recovery_s", "worker_alive", "seconds", "passed"]


def _progress(message: str) -> None:
    stderr_console.print(escape(message), style="dim", highlight=False)


@click.group(name="chaos")
def command() -> None:
    """Break the pipeline on purpose (kill -9, a stopped broker, a frozen ClickHouse, malformed input) and check
    that nothing is lost, duplicated, mispriced or stored with personal data."""


@command.command(name="list")
@FORMAT_OPTION
def list_scenarios(fmt: str) -> None:
    """The scenarios `chaos run` knows."""
    from prismops.chaos.scenarios import DESCRIPTIONS, SCENARIOS

    rows = [{"scenario": name, "what": DESCRIPTIONS[name]} for name in SCENARIOS]
    emit(rows, fmt, title="chaos scenarios")


@command.command()
@click.option("--scenario", "names", multiple=True, help="a scenario to run (repeatable); default: all")
@click.option("--events", type=click.IntRange(min=10), default=20_000, show_default=True,
              help="events each scenario sends (fuzz: malformed records, plus a tenth as many valid ones)")
@click.option("--kills", type=click.IntRange(min=1), default=3, show_default=True,
              help="kill -9 rounds of the kill-* scenarios")
@click.option("--outage", "outage_s", type=click.FloatRange(min=1), default=20.0, show_default=True,
              help="seconds the broker stays down and ClickHouse stays frozen")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=10), default=600.0, show_default=True,
              help="how long a scenario may take to settle")
@click.option("--keep", is_flag=True, help="keep the chaos stack's data and logs even when every scenario passes")
@FORMAT_OPTION
@click.pass_obj
def run(settings: Settings, names: tuple[str, ...], events: int, kills: int, outage_s: float, timeout_s: float,
        keep: bool, fmt: str) -> None:
    """Run scenarios on a fresh Kafka + ClickHouse of their own (own home, ports and namespaces); exit 1 when
    any fails."""
    from prismops.chaos import SCENARIOS, ChaosOptions, run_scenarios

    chosen = list(names) or list(SCENARIOS)
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        fail(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}", exit_code=2)
    repeated = sorted({name for name in chosen if chosen.count(name) > 1})
    if repeated:
        fail(f"scenario(s) named twice: {', '.join(repeated)}; a scenario's namespace keeps its topics for the whole "
             "chaos run, so a second run would count the first one's budgets too: run the command again instead",
             exit_code=2)
    options = ChaosOptions(events=events, kills=kills, outage_s=outage_s, settle_timeout_s=timeout_s)
    results = run_scenarios(settings, chosen, options, _progress, keep=keep)
    emit([result.as_row() for result in results], fmt, title="chaos", columns=TABLE_COLUMNS)
    failed = [result.name for result in results if not result.passed]
    if failed:
        fail(f"{len(failed)} of {len(results)} scenario(s) failed: {', '.join(failed)}")
