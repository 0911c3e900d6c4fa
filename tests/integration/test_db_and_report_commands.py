"""The `prismops db`, `report` and `export` commands on the real server, as a person or a script runs them."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from prismops.finops.focus_billing import read_focus_file
from prismops.cli.app import main
from prismops.settings import Settings
from prismops.testing import clickhouse
from prismops.sinks.base import SinkRecord
from prismops.sinks.clickhouse import AnomalySink, CostLineSink
from prismops.testing.synthetic_month import synthetic_month, totals_by


def test_db_report_and_export_commands(isolated_settings: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    migrated = runner.invoke(main, ["db", "migrate", "--format", "json"], obj=isolated_settings)
    assert migrated.exit_code == 0, migrated.output
    assert {row["state"] for row in json.loads(migrated.output)} == {"applied_now"}
    status = runner.invoke(main, ["db", "status", "--format", "json"], obj=isolated_settings)
    assert {row["state"] for row in json.loads(status.output)} == {"applied"}
    alias = runner.invoke(main, ["migrate", "--status", "--format", "json"], obj=isolated_settings)
    assert json.loads(alias.output) == json.loads(status.output)

    data = synthetic_month(dt.date(2025, 6, 1), llm_calls_per_day=8)
    client = clickhouse(isolated_settings)
    for sink_class, records in ((CostLineSink, data.cost_lines), (AnomalySink, data.anomalies)):
        sink_class(client, isolated_settings.clickhouse.database).write(
            [SinkRecord("topic", 0, n, None, record) for n, record in enumerate(records)])
    client.disconnect()
    by_team = {k[0]: v["cost_usd"] for k, v in totals_by(data.cost_lines, ("team",)).items()}
    total = sum(by_team.values(), Decimal(0))

    settled = runner.invoke(main, ["db", "settle", "--to", "2025-06-15", "--format", "json"], obj=isolated_settings)
    assert settled.exit_code == 0, settled.output
    assert [row["day"] for row in json.loads(settled.output)["days"]] == [f"2025-06-{d:02d}" for d in range(1, 15)]

    chart = tmp_path / "showback.svg"
    shown = runner.invoke(main, ["report", "showback", "--by", "team", "--month", "2025-06", "--format", "json",
                                 "--chart", str(chart)], obj=isolated_settings)
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert {row["team"]: Decimal(row["cost_usd"]) for row in report["rows"]} == by_team
    assert Decimal(report["total"]["cost_usd"]) == total
    bars = ET.parse(chart).getroot().findall("{http://www.w3.org/2000/svg}rect")
    assert len(bars) == len(by_team) + 1  # the background and one bar per team

    as_csv = runner.invoke(main, ["report", "showback", "--by", "tenant", "--from", "2025-06-01", "--to",
                                  "2025-07-01", "--format", "csv"], obj=isolated_settings)
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert rows[-1]["tenant"] == "TOTAL" and Decimal(rows[-1]["cost_usd"]) == total
    assert sum(Decimal(r["cost_usd"]) for r in rows[:-1]) == total

    units = runner.invoke(main, ["report", "unit-economics", "--by", "model", "--month", "2025-06", "--format", "json"],
                          obj=isolated_settings)
    assert Decimal(json.loads(units.output)["total"]["cost_usd"]) == total
    monthly = runner.invoke(main, ["report", "monthly", "--month", "2025-06", "--format", "json"], obj=isolated_settings)
    assert Decimal(json.loads(monthly.output)["total"]["cost_usd"]) == total
    found = runner.invoke(main, ["report", "anomalies", "--month", "2025-06", "--severity", "critical", "--format",
                                 "json"], obj=isolated_settings)
    assert json.loads(found.output)["total"]["anomalies"] == sum(1 for a in data.anomalies if a["severity"] == "critical")
    table = runner.invoke(main, ["report", "monthly", "--month", "2025-06"], obj=isolated_settings)
    assert table.exit_code == 0 and "TOTAL" in table.output

    focus_file = tmp_path / "focus.csv"
    exported = runner.invoke(main, ["export", "focus", "--month", "2025-06", str(focus_file), "--format", "json"],
                             obj=isolated_settings)
    assert exported.exit_code == 0, exported.output
    llm_and_gpu = sum((line["cost_usd"] for line in data.cost_lines if line["source"] != "cloud"), Decimal(0))
    assert Decimal(json.loads(exported.output)["effective_cost_usd"]) == llm_and_gpu
    assert read_focus_file(focus_file).totals.total.EffectiveCost == llm_and_gpu


def test_report_commands_refuse_bad_arguments_with_a_reason(isolated_settings: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    both = runner.invoke(main, ["report", "showback", "--month", "2025-06", "--from", "2025-06-01"],
                         obj=isolated_settings)
    assert both.exit_code == 1 and "--month or --since/--until" in both.output
    png = runner.invoke(main, ["report", "showback", "--chart", str(tmp_path / "x.png")], obj=isolated_settings)
    assert png.exit_code == 1 and "SVG" in png.output
    month = runner.invoke(main, ["report", "monthly", "--month", "June"], obj=isolated_settings)
    assert month.exit_code == 1 and "YYYY-MM" in month.output
    unmigrated = runner.invoke(main, ["report", "showback", "--month", "2025-06"], obj=isolated_settings)
    assert unmigrated.exit_code == 1 and "prismops db migrate" in unmigrated.output
