"""`prismops alerts`: deliver budget alerts and anomalies to a Slack-compatible webhook, each once."""

from __future__ import annotations

import click
from rich.markup import escape

from prismops.cli.commands.foreground import run_until_signalled
from prismops.cli.output import FORMAT_OPTION, emit, stderr_console
from prismops.settings import Settings


@click.command(name="alerts")
@click.option("--until-idle", "idle_s", type=float, default=None,
              help="stop after this many seconds without events instead of running until SIGINT/SIGTERM")
@FORMAT_OPTION
@click.pass_obj
def command(settings: Settings, idle_s: float | None, fmt: str) -> None:
    """POST each budget warn/block event and each anomaly to budgets.webhook_url (Slack-compatible JSON, retried, never repeated
    once recorded in ClickHouse `alert_deliveries`); prints the totals at exit.

    Without a webhook_url nothing is delivered: the command says so and waits for SIGINT/SIGTERM (or exits at
    once with --until-idle), so a supervisor may start it whether or not alerts are configured.
    """
    from prismops.sinks.webhook import AlertConsumer, AlertCounters, DeliveryOutcome, WebhookPoster, clickhouse_ledger

    with run_until_signalled(settings) as stop:
        if not settings.budgets.webhook_url:
            stderr_console.print("budgets.webhook_url is not set: no alerts are delivered"
                                 + ("" if idle_s is not None else "; idling until SIGINT/SIGTERM"), highlight=False)
            if idle_s is None:
                stop.wait()
            counters = AlertCounters()
        else:
            def progress(outcome: DeliveryOutcome) -> None:
                stderr_console.print(f"alert {outcome.event_id}: {outcome.status} after {outcome.attempts} attempt(s)"
                                     + (f" ({outcome.error})" if outcome.error else ""), style="dim", highlight=False)

            ledger = clickhouse_ledger(settings)
            try:
                poster = WebhookPoster.from_settings(settings, sleep=stop.wait)
                consumer = AlertConsumer(settings, ledger, poster, on_outcome=progress)
                stderr_console.print(f"delivering {consumer.topic} to {escape(poster.target)} "
                                     f"(group {settings.alerts_group_id}); Ctrl-C stops", highlight=False)
                counters = consumer.run(stop) if idle_s is None else consumer.run_until_idle(idle_s)
            finally:
                ledger.close()
    emit([counters.as_dict()], fmt, title="alert totals")
