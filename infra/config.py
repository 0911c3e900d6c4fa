"""Where the local stack keeps its files and what its servers' config files say.

Pure functions of StackSettings (no processes, no I/O beyond reading the templates next to this file),
so the rendered configs can be unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape as xml_escape

from prismops.settings import StackSettings

INFRA_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class StackPaths:
    """Every file and directory of the stack, absolute, derived from StackSettings alone."""

    home: Path
    logs: Path
    run: Path
    maven_repo: Path
    kafka_dist: Path
    kafka_libs: Path
    kafka_dir: Path
    kafka_data: Path
    clickhouse_dir: Path

    @classmethod
    def from_settings(cls, stack: StackSettings) -> "StackPaths":
        home = stack.home.expanduser().resolve()
        cache = stack.cache_dir.expanduser().resolve() if stack.cache_dir else home / "cache"
        kafka_dist = cache / f"kafka-{stack.kafka_version}"
        return cls(
            home=home, logs=home / "logs", run=home / "run", maven_repo=cache / "m2",
            kafka_dist=kafka_dist, kafka_libs=kafka_dist / "libs", kafka_dir=home / "kafka",
            kafka_data=home / "kafka" / "data", clickhouse_dir=home / "clickhouse",
        )


def render_kafka_properties(stack: StackSettings, paths: StackPaths) -> str:
    template = Template((INFRA_DIR / "kafka" / "server.properties").read_text())
    return template.substitute(
        kafka_port=stack.kafka_port, controller_port=stack.kafka_controller_port, data_dir=paths.kafka_data
    )


def render_clickhouse_config(stack: StackSettings, paths: StackPaths) -> str:
    template = Template((INFRA_DIR / "clickhouse" / "config.xml").read_text())
    values = {
        "server_log": paths.logs / "clickhouse-server.log",
        "error_log": paths.logs / "clickhouse-error.log",
        "http_port": stack.clickhouse_http_port,
        "tcp_port": stack.clickhouse_tcp_port,
        "interserver_port": stack.clickhouse_interserver_port,
        "data_dir": paths.clickhouse_dir / "data",
        "tmp_dir": paths.clickhouse_dir / "tmp",
        "user_files_dir": paths.clickhouse_dir / "user_files",
        "format_schema_dir": paths.clickhouse_dir / "format_schemas",
    }
    return template.substitute({key: xml_escape(str(value)) for key, value in values.items()})
