"""prismops/settings.py: defaults, PRISMOPS_ environment variables, the YAML file, derived values."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from prismops.settings import KAFKA_CLIENT_LOGGER, KafkaSettings, Settings, StackSettings, load_settings, settings_as_env


def test_defaults_without_environment():
    settings = Settings()
    assert settings == Settings(stack=StackSettings(), kafka=KafkaSettings())
    assert settings.kafka.bootstrap_servers == ""
    assert settings.kafka.topic_namespace == ""


def test_prefixed_nested_environment_variables_override_defaults(monkeypatch):
    monkeypatch.setenv("PRISMOPS_STACK__KAFKA_PORT", "29092")
    monkeypatch.setenv("PRISMOPS_KAFKA__TOPIC_NAMESPACE", "ci.")
    monkeypatch.setenv("PRISMOPS_WORKER__LIVE_WINDOW_S", "42.5")
    monkeypatch.setenv("PRISMOPS_GATEWAY__HOST", "0.0.0.0")
    settings = load_settings()
    assert settings.stack.kafka_port == 29092
    assert settings.kafka.topic_namespace == "ci."
    assert settings.worker.live_window_s == 42.5
    assert settings.gateway.host == "0.0.0.0"
    # untouched fields keep their defaults
    assert settings.stack.clickhouse_tcp_port == StackSettings().clickhouse_tcp_port


def test_unprefixed_variables_are_ignored(monkeypatch):
    monkeypatch.setenv("STACK__KAFKA_PORT", "29092")
    monkeypatch.setenv("KAFKA__TOPIC_NAMESPACE", "nope.")
    settings = Settings()
    assert settings.stack.kafka_port == StackSettings().kafka_port
    assert settings.kafka.topic_namespace == ""


def test_invalid_environment_value_is_an_error(monkeypatch):
    monkeypatch.setenv("PRISMOPS_STACK__KAFKA_PORT", "not-a-port")
    with pytest.raises(ValueError, match="kafka_port"):
        Settings()


def test_kafka_bootstrap_derives_from_the_stack_port_when_unset(monkeypatch):
    monkeypatch.setenv("PRISMOPS_STACK__KAFKA_PORT", "29092")
    assert Settings().kafka_bootstrap == "127.0.0.1:29092"
    monkeypatch.setenv("PRISMOPS_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    assert Settings().kafka_bootstrap == "kafka-1:9092,kafka-2:9092"


def test_clickhouse_host_and_port_derive_from_the_stack_when_unset(monkeypatch):
    monkeypatch.setenv("PRISMOPS_STACK__CLICKHOUSE_TCP_PORT", "29000")
    settings = Settings()
    assert (settings.clickhouse_host, settings.clickhouse_port) == ("127.0.0.1", 29000)
    monkeypatch.setenv("PRISMOPS_CLICKHOUSE__HOST", "ch.internal")
    monkeypatch.setenv("PRISMOPS_CLICKHOUSE__PORT", "9440")
    settings = Settings()
    assert (settings.clickhouse_host, settings.clickhouse_port) == ("ch.internal", 9440)


def _write_yaml(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "prismops.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_yaml_file_named_by_prismops_config(monkeypatch, tmp_path):
    path = _write_yaml(tmp_path, {
        "kafka": {"topic_namespace": "staging.", "default_partitions": 12},
        "worker": {"live_window_s": 60},
    })
    monkeypatch.setenv("PRISMOPS_CONFIG", str(path))
    settings = Settings()
    assert settings.kafka.topic_namespace == "staging."
    assert settings.kafka.default_partitions == 12
    assert settings.worker.live_window_s == 60
    assert settings.kafka.replication_factor == KafkaSettings().replication_factor


def test_environment_wins_over_the_yaml_file(monkeypatch, tmp_path):
    path = _write_yaml(tmp_path, {"kafka": {"topic_namespace": "from-yaml."}, "stack": {"kafka_port": 1111}})
    monkeypatch.setenv("PRISMOPS_CONFIG", str(path))
    monkeypatch.setenv("PRISMOPS_KAFKA__TOPIC_NAMESPACE", "from-env.")
    settings = Settings()
    assert settings.kafka.topic_namespace == "from-env."
    assert settings.stack.kafka_port == 1111


def test_missing_config_file_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("PRISMOPS_CONFIG", str(tmp_path / "does-not-exist.yaml"))
    with pytest.raises(FileNotFoundError, match="does-not-exist.yaml"):
        Settings()


def test_config_pointing_at_a_directory_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("PRISMOPS_CONFIG", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        Settings()


def test_with_overrides_replaces_only_the_named_fields():
    base = Settings(kafka=KafkaSettings(bootstrap_servers="b:9092", default_partitions=8))
    changed = base.with_overrides(kafka={"topic_namespace": "t1."}, worker={"app_id": "w-1"})
    assert changed.kafka.topic_namespace == "t1."
    assert changed.worker.app_id == "w-1"
    assert changed.kafka.bootstrap_servers == "b:9092"
    assert changed.kafka.default_partitions == 8
    assert changed.stack == base.stack
    # the original is untouched
    assert base.kafka.topic_namespace == ""
    assert base.worker.app_id != "w-1"


def test_with_overrides_validates():
    with pytest.raises(ValueError):
        Settings().with_overrides(stack={"kafka_port": "not-a-port"})


def _non_default_settings(tmp_path: Path) -> Settings:
    return Settings().with_overrides(
        stack={"home": tmp_path / "home", "cache_dir": tmp_path / "cache", "kafka_port": 29092,
               "start_timeout_s": 12.5},
        kafka={"bootstrap_servers": "k1:9093,k2:9093", "security_protocol": "SASL_SSL",
               "sasl_mechanism": "PLAIN", "sasl_username": "svc", "sasl_password": "p@ss word",
               "topic_namespace": "staging."},
        clickhouse={"host": "ch", "port": 9440, "password": ""},
        worker={"price_table": tmp_path / "prices.yaml", "live_window_s": 90.0},
        sink={"batch_max_rows": 10},
        gateway={"port": 25051},
    )


def test_settings_as_env_round_trips(monkeypatch, tmp_path):
    original = _non_default_settings(tmp_path)
    env = settings_as_env(original)
    assert all(name.startswith("PRISMOPS_") for name in env)
    assert all(isinstance(value, str) for value in env.values())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_settings_as_env_round_trips_defaults(monkeypatch):
    original = Settings()
    for name, value in settings_as_env(original).items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_settings_as_env_names_follow_the_documented_scheme(tmp_path):
    env = settings_as_env(_non_default_settings(tmp_path))
    assert env["PRISMOPS_STACK__KAFKA_PORT"] == "29092"
    assert env["PRISMOPS_KAFKA__TOPIC_NAMESPACE"] == "staging."
    assert "PRISMOPS_CLICKHOUSE__PASSWORD" in env
    # unset optional values are left out rather than written as "None"
    assert "None" not in env.values()
    assert "PRISMOPS_KAFKA__SSL_CA_LOCATION" not in env


def test_kafka_client_config_carries_security_settings():
    settings = Settings(kafka=KafkaSettings(
        bootstrap_servers="k:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256",
        sasl_username="u", sasl_password="p", ssl_ca_location="/ca.pem",
    ))
    config = settings.kafka_client_config()
    assert config.pop("logger") is logging.getLogger(KAFKA_CLIENT_LOGGER)  # librdkafka logs via Python logging
    assert config == {
        "bootstrap.servers": "k:9093", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "u", "sasl.password": "p", "ssl.ca.location": "/ca.pem",
    }


def test_no_prismops_variables_leak_from_the_host():
    assert not [name for name in os.environ if name.startswith("PRISMOPS_")]


def test_the_namespace_prefixes_the_worker_app_id_and_every_consumer_group():
    settings = Settings().with_overrides(kafka={"topic_namespace": "staging."})
    assert settings.worker_app_id == "staging.prismops-worker"
    assert settings.sink_group_id == "staging.prismops-sink-clickhouse"
    assert settings.alerts_group_id == "staging.prismops-alerts-webhook"
    assert settings.consumer_group_config(settings.alerts_group_id, static=False)["group.id"] == settings.alerts_group_id
    assert "group.instance.id" not in settings.consumer_group_config("g", static=False)
