"""The one settings object every PrismOps component takes.

Values come from `PRISMOPS_`-prefixed environment variables (nested with `__`, e.g.
`PRISMOPS_STACK__KAFKA_PORT=29092`) and, optionally, a YAML file named by `PRISMOPS_CONFIG`.
No other module reads the environment.
"""

from __future__ import annotations

import logging

import os
import socket
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource


KAFKA_CLIENT_LOGGER = "prismops.kafka"


class StackSettings(BaseModel):
    """Where and on which loopback ports the local stack (`prismops stack`) runs."""

    home: Path = Field(default=Path(".prismops"), description="state dir: caches, data, logs, pid files")
    cache_dir: Path | None = Field(
        default=None, description="Kafka jars and maven repo; default <home>/cache (tests share one between homes)"
    )
    kafka_version: str = "3.9.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_heap: str = "768m"
    clickhouse_tcp_port: int = 19000
    clickhouse_http_port: int = 18123
    clickhouse_interserver_port: int = 19009
    prometheus_port: int = 19090
    start_timeout_s: float = 90.0
    with_registry: bool = Field(default=False, description="`stack up` also starts the schema registry (Apicurio; "
                                "Confluent API at http://127.0.0.1:<registry_port>/apis/ccompat/v7)")
    registry_port: int = 18081
    apicurio_version: str = "2.4.2.Final"
    registry_heap: str = "384m"


class KafkaSettings(BaseModel):
    """How clients reach Kafka. Empty bootstrap means the local stack's broker."""

    bootstrap_servers: str = ""
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    topic_namespace: str = Field(default="", description="prefix for every topic name, e.g. 'staging.'")
    default_partitions: int = 4
    replication_factor: int = 1
    admin_timeout_s: float = Field(default=10.0, description="how long admin calls wait for the broker")
    changelog_segment_ms: int = Field(
        default=10_000, ge=1000, description="segment.ms of the worker's state changelogs (created by Faust): a rolled "
        "segment can be compacted, so a restarted worker reads about one record per key instead of every write (at "
        "60 s a restart with 10,000 tenants read up to 40,000 records of the open segment: 2 to 11 s of restore)")
    max_message_bytes: int = Field(
        default=1_000_000, description="largest record PrismOps produces (key + value + headers); at most the "
        "broker's message.max.bytes. State values and output records are checked against it before sending")
    session_timeout_s: float = Field(
        default=10.0, description="consumer group session timeout of the worker, sink and alerts: how long a "
        "crashed member holds its partitions (the broker's group.min.session.timeout.ms is 6 s by default)")
    static_membership: bool = Field(
        default=True, description="consumers join with group.instance.id, so a restarted member takes its "
        "partitions back at once, without a rebalance")
    schema_registry_url: str = Field(
        default="", description="Confluent-compatible schema registry, e.g. http://127.0.0.1:18081/apis/ccompat/v7. "
        "Set: SDK, worker and tools write Confluent wire format and readers accept it; empty: Avro single-object "
        "(Confluent-framed input is dead-lettered, wire_format); empty with stack.with_registry: the stack's registry")


class ClickHouseSettings(BaseModel):
    """How the sink and reports reach ClickHouse. Empty host/0 port means the local stack's server."""

    host: str = ""
    port: int = 0
    database: str = "prismops"
    user: str = "default"
    password: str = ""


class WorkerSettings(BaseModel):
    app_id: str = Field(default="prismops-worker", description="Faust app id; the topic namespace prefixes it")
    instance_id: str = Field(default="", description="static group member id; default <app id>-<host>-<web port>")
    web_port: int = 16066
    live_window_s: float = 300.0
    live_window_max_samples: int = 5000
    live_publish_interval_s: float = 1.0
    metrics_top_tenants: int = Field(default=20, description="tenants with their own metric label; the rest: other")
    producer_batch_bytes: int = Field(
        default=512 * 1024, ge=16384, description="bytes per partition in one produce request (Faust's default of 16 KiB "
        "holds ~16 changelog records: with one request in flight per broker, the worker's own output was its ceiling)")
    commit_interval_s: float = Field(
        default=0.25, gt=0, description="how often the worker commits what it processed; its output is published "
        "at the commit (publish on commit), so this is the worker's share of a row's and a budget's delay")
    produced_kept_items: int = Field(
        default=20_000, ge=0, description="cost lines of the cost-line batches this worker wrote, kept for its own "
        "budget and anomaly agents to read without decoding (streams.produced); 0: always decode")
    output_path: Literal["faust", "librdkafka"] = Field(
        default="librdkafka", description="how agent outputs and table changelogs reach Kafka: 'librdkafka' (one "
        "confluent-kafka producer, streams.outputs, acknowledged before each commit) or 'faust' (event.send, "
        "published at commit). With 10,000 tenants librdkafka caught a killed worker up in 20-30 s against 30-52 s; "
        "with the fetch wait at 100 ms its budget reaction p99 at 300 ev/s was 0.12-0.27 s against 0.74-2.1 s "
        "(docs/performance.md, sixth pass)")
    producer_linger_ms: float = Field(
        default=5.0, ge=0, description="how long the worker's producer waits to fill a produce request (Faust's "
        "default 0 sent a request per few changelog records: a tenth of the loaded worker was socket writes)")
    producer_buffer_messages: int = Field(
        default=10_000, ge=100, description="table changelog records queued for the producer before the worker "
        "stops reading to let them out (Faust's bound is 100, and every message past it was waited for one by one: "
        "with 10,000 tenants each event writes a ledger record, and the worker spent its time in those waits)")
    gc_gen0_threshold: int = Field(
        default=10_000, ge=100, description="allocations between two runs of Python's cycle collector in the worker "
        "(Python's default is 700: the collector then ran every few events and took a quarter of the worker's Python "
        "time; streams.garbage_collector)")
    fetch_max_wait_ms: int = Field(
        default=100, ge=1, le=1500, description="how long the broker may hold the worker's fetch while none of its "
        "partitions has a record (Faust fixes 1,500 ms). aiokafka keeps one fetch per broker in flight and leaves "
        "out the partitions whose records are still being handed over, so a fetch of only quiet topics held every "
        "busy partition for up to 1.5 s per stage")


class PricingSettings(BaseModel):
    """Where prices come from: our YAML catalog or LiteLLM's model_prices_and_context_window.json."""

    catalog: Path | None = Field(default=None, description="price catalog file; default: the bundled catalog")
    tenant_overrides: Path | None = Field(default=None, description="YAML of negotiated per-tenant prices")
    max_tokens_per_call: int = Field(
        default=10**9, ge=1, description="most tokens one call may count, per token field; more is rejected "
        "(rule max_tokens: dead-lettered by the worker, an error line from `prismops price`)")


class TaggingSettings(BaseModel):
    service_registry: Path | None = Field(default=None, description="service → team/product YAML; default: bundled")


class PiiSettings(BaseModel):
    """User ids are stored only as HMAC-SHA256(hash_key, id); set a real secret in production."""

    hash_key: SecretStr = SecretStr("prismops-development-key")
    dead_letter_redaction: Literal["strict", "verbatim"] = Field(
        default="strict",
        description="strict: dead letters keep original bytes only with content fields removed at any depth and "
        "emails/phones masked, and unparsable bytes as length, hash and a masked prefix; verbatim: as received "
        "(synthetic data only)",
    )


class GpuSettings(BaseModel):
    price_table: Path | None = Field(default=None, description="GPU $/hour by model and capacity type; default: bundled")
    window_s: int = Field(default=3600, description="event-time window of GPU cost attribution")
    grace_s: int = Field(default=600, description="how late a GPU usage event may arrive and still count")
    idle_policy: str = Field(default="proportional", description="proportional, even or bucket (__idle__)")
    inference_pools: Path | None = Field(default=None, description="YAML of self-hosted inference pools")
    inference_node_wait_s: int = Field(
        default=600, description="after the grace period, how long an inference pool window waits for a node that "
                                 "has not reported before it is split with the nodes it has")


class BudgetSettings(BaseModel):
    definitions: Path | None = Field(default=None, description="budgets YAML; default: the seeds' tenant defaults")
    default_tenant_daily_usd: Decimal = Decimal("30")
    default_tenant_daily_tokens: int = 1_000_000
    warn_pct: int = 80
    block_pct: int = 100
    webhook_url: str | None = Field(default=None, description="Slack-compatible incoming webhook for budget alerts")
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 6
    webhook_backoff_first_s: float = Field(default=0.5, description="first retry delay; doubles per attempt, max 30 s")
    mode: Literal["manual", "notify"] = Field(
        default="manual", description="manual: the router refuses blocked tenants; notify: alerts only"
    )
    alerts_group_id: str = Field(default="prismops-alerts-webhook", description="consumer group of `prismops alerts`")


class DetectorSettings(BaseModel):
    """Online anomaly detection over cost lines (prismops.agents.anomaly_agents, detectors/)."""

    enabled: bool = True
    window_s: int = Field(default=60, description="event-time tumbling window of every series")
    grace_s: int = Field(default=30, description="how late an event may arrive and still count in its window")
    warmup_windows: int = Field(default=120, description="windows a series learns before it may alert")
    baseline_windows: int = Field(default=60, description="quiet windows the root-cause analysis compares with")
    min_severity: Literal["info", "warning", "critical"] = Field(
        default="warning", description="anomalies below it are not published")
    idle_close_s: float = Field(
        default=30.0, description="after this long without events, event time is assumed to move with the clock")
    save_interval_s: float = Field(default=2.0, description="how often open-window state is saved to the changelog")
    promote_after_windows: int = Field(
        default=3, ge=1, description="windows with traffic a series needs before it is watched on its own; until "
                                     "then it counts in its grouping's '(other)' series (1: at first sight)")
    max_series_per_partition: int = Field(
        default=5000, ge=1, description="series of one grouping (e.g. tenant x model) a cost-line partition watches on "
                                        "their own; traffic of later series is watched as one '(other)' series")


class TelemetrySettings(BaseModel):
    """Where spans go (prismops.streams.telemetry): none, console (stderr), file (JSON lines) or otlp (OTLP/HTTP)."""

    exporter: Literal["none", "console", "file", "otlp"] = "none"
    spans_file: Path | None = Field(default=None, description="JSON-lines span file for exporter=file")
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"


class SinkSettings(BaseModel):
    group_id: str = Field(default="prismops-sink-clickhouse", description="consumer group; the topic namespace prefixes it")
    instance_id: str = Field(default="", description="static group member id; default <group>-<host>-<metrics port>")
    metrics_port: int = Field(default=16067, description="HTTP /metrics of `prismops sink`; 0: off")
    batch_max_rows: int = Field(default=5000, description="records (a batch record counts once) per poll, at most")
    batch_max_wait_s: float = Field(
        default=0.25, gt=0, description="longest a poll waits for batch_max_rows records before writing what it has: "
        "the sink's share of a row's delay at moderate rates (batch records rarely fill a poll)")
    gc_gen0_threshold: int = Field(
        default=10_000, ge=100, description="allocations between two runs of Python's cycle collector in the sink "
        "(Python's default is 700: decoding a 500-line batch keeps its lines alive until the insert, and the collector "
        "then ran ten times a batch for 8-10 µs a line; streams.garbage_collector)")


class SdkSettings(BaseModel):
    """How the producer SDK groups LLM usage events into batch records (one Kafka record, many events)."""

    batch_max_events: int = Field(default=500, ge=1, description="events per batch record at most; 1: single records")
    batch_linger_ms: float = Field(default=20.0, ge=0, description="how long a batch waits for more events")
    batch_max_bytes: int = Field(default=512 * 1024, ge=1024, description="Avro bytes per batch record at most")


class GatewaySettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 15051
    metrics_port: int = Field(default=15052, description="HTTP /metrics of the gateway; 0: off")
    max_workers: int | None = Field(
        default=None, ge=1, description="threads answering RPCs; default: the machine's cores (at least 2) with "
        "limits counted in process, 16 with limits_store redis (gateway_grpc.server.rpc_threads)",
    )
    max_concurrent_rpcs: int = Field(default=256, description="beyond this the gateway answers RESOURCE_EXHAUSTED")
    max_request_bytes: int = Field(default=65536, description="largest request message the gateway accepts")
    max_candidates: int = Field(default=64, description="most candidate models one Decide may name")
    default_input_tokens: int = 1000
    default_output_tokens: int = 500
    policy_file: Path | None = Field(default=None, description="routing policy YAML; default: the bundled example")
    policy_reload_interval_s: float = Field(default=1.0, description="how often the policy file is checked for changes")
    tokens_file: Path | None = Field(
        default=None, description="YAML list of {name, role, token_sha256 | token}; without it every caller is an "
        "anonymous `service` (Decide, ReportOutcome, reads) and nobody may change the policy",
    )
    tls_cert_file: Path | None = Field(default=None, description="PEM certificate chain; with tls_key_file: TLS on")
    tls_key_file: Path | None = None
    limits_store: Literal["local", "share", "redis"] = Field(
        default="local", description="where rate limits, quotas and leases count: local (exact with one gateway), "
        "share (each of `replicas` gateways enforces 1/replicas of every limit) or redis (shared, exact; see redis)",
    )
    replicas: int = Field(default=1, ge=1, le=1000, description="gateways sharing the limits in `share` mode")


class HttpIngestSettings(BaseModel):
    """`prismops ingest serve`: LLM usage over HTTP (CloudEvents 1.0 or plain JSON) for services in any language."""

    host: str = "127.0.0.1"
    port: int = 15080
    tokens_file: Path | None = Field(
        default=None, description="YAML list of {tenant, token_sha256 | token}; a token writes only its tenant's events",
    )
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024, description="larger bodies get 413")
    max_events_per_request: int = Field(default=5000, ge=1)
    rate_events_per_s: float = Field(default=5000.0, gt=0, description="sustained events per second per token")
    rate_burst_events: int = Field(default=10000, ge=1, description="events a token may send at once")
    delivery_timeout_s: float = Field(default=30.0, gt=0, description="how long a request waits for Kafka's acks")


class RedisSettings(BaseModel):
    """Redis (Debian's `redis-server`): the shared store of rate limits and leases across gateways and of the
    response cache. `prismops stack up` starts one on `port` only when `enabled`."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 16379
    db: int = Field(default=0, ge=0)
    password: str | None = None
    key_prefix: str = Field(default="prismops:", description="every key PrismOps writes starts with it")
    maxmemory_mb: int = Field(default=256, ge=8, description="the stack's server evicts LRU keys beyond this")
    timeout_s: float = Field(default=0.5, gt=0, description="socket timeout of each call")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRISMOPS_", env_nested_delimiter="__", extra="ignore")

    stack: StackSettings = StackSettings()
    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    worker: WorkerSettings = WorkerSettings()
    pricing: PricingSettings = PricingSettings()
    tagging: TaggingSettings = TaggingSettings()
    pii: PiiSettings = PiiSettings()
    gpu: GpuSettings = GpuSettings()
    budgets: BudgetSettings = BudgetSettings()
    detectors: DetectorSettings = DetectorSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    sink: SinkSettings = SinkSettings()
    sdk: SdkSettings = SdkSettings()
    gateway: GatewaySettings = GatewaySettings()
    redis: RedisSettings = RedisSettings()
    http_ingest: HttpIngestSettings = HttpIngestSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("PRISMOPS_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"PRISMOPS_CONFIG points to {config_file!r}, which is not a file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap_servers or f"127.0.0.1:{self.stack.kafka_port}"

    @property
    def clickhouse_host(self) -> str:
        return self.clickhouse.host or "127.0.0.1"

    @property
    def clickhouse_port(self) -> int:
        return self.clickhouse.port or self.stack.clickhouse_tcp_port

    def namespaced(self, name: str) -> str:
        """A topic, app id or consumer group inside this deployment's namespace: two namespaces share nothing."""
        return f"{self.kafka.topic_namespace}{name}"

    @property
    def worker_app_id(self) -> str:
        """The worker's Faust app id: its consumer group and the prefix of its changelog and assignor topics."""
        return self.namespaced(self.worker.app_id)

    @property
    def sink_group_id(self) -> str:
        return self.namespaced(self.sink.group_id)

    @property
    def alerts_group_id(self) -> str:
        return self.namespaced(self.budgets.alerts_group_id)

    def group_instance_id(self, group: str, instance: str, port: int) -> str | None:
        """The static member id of one consumer (None when static membership is off): stable across restarts of
        the same process slot, distinct between processes on one host (their ports differ)."""
        if not self.kafka.static_membership:
            return None
        return instance or f"{group}-{socket.gethostname()}-{port}"

    def consumer_group_config(self, group: str, *, instance: str = "", port: int = 0, static: bool = True) -> dict[str, Any]:
        """librdkafka settings of a group member: short session and, with `static`, static membership (see
        group_instance_id; a one-process service such as the alerts relay leaves it off)."""
        conf: dict[str, Any] = {
            "group.id": group,
            "session.timeout.ms": int(self.kafka.session_timeout_s * 1000),
            "heartbeat.interval.ms": max(500, int(self.kafka.session_timeout_s * 1000 / 4)),
        }
        instance_id = self.group_instance_id(group, instance, port) if static else None
        if instance_id:
            conf["group.instance.id"] = instance_id
        return conf

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) connection settings shared by every producer/consumer/admin."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka.security_protocol,
            # librdkafka's own log lines go through Python logging, where each command decides what to show
            "logger": logging.getLogger(KAFKA_CLIENT_LOGGER),
        }
        if self.kafka.sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka.sasl_mechanism
            conf["sasl.username"] = self.kafka.sasl_username or ""
            conf["sasl.password"] = self.kafka.sasl_password or ""
        if self.kafka.ssl_ca_location:
            conf["ssl.ca.location"] = self.kafka.ssl_ca_location
        return conf

    def with_overrides(self, **sections: dict[str, Any]) -> "Settings":
        """A copy with some fields of some sections replaced (tests and the demo use this)."""
        data = self.model_dump()
        for section, values in sections.items():
            data[section].update(values)
        return Settings(**data)


def load_settings() -> Settings:
    return Settings()


def settings_as_env(settings: Settings) -> dict[str, str]:
    """The environment variables that recreate `settings` in a child process."""
    env: dict[str, str] = {}
    for section, values in settings.model_dump(mode="json").items():
        for name, value in values.items():
            if isinstance(getattr(getattr(settings, section), name), SecretStr):
                value = getattr(getattr(settings, section), name).get_secret_value()
            if value is not None:
                env[f"PRISMOPS_{section.upper()}__{name.upper()}"] = str(value)
    return env
