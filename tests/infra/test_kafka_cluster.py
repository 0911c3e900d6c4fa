"""The local 3-broker KRaft cluster of the `cluster` fault scenario: its rendered node configs (no Java needed),
then the real thing on free ports in a tmp home: acks=all keeps working with one broker SIGKILLed, the broker
comes back in sync, and every message is read exactly once."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from prismops.infra.config import StackPaths
from prismops.infra.kafka_cluster import KafkaCluster, plan_nodes, render_node_properties
from prismops.infra.processes import process_alive
from prismops.infra.stack import StackError
from prismops.settings import Settings, StackSettings
from prismops.streams.topics import create_topics

REPO_CACHE = Path(__file__).resolve().parents[2] / ".prismops" / "cache"
MAIN_STACK_PORTS = {19092, 19093, 19000, 18123, 19009, 19090}


def parse(properties: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in properties.splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def rendered(tmp_path: Path, base_port: int = 29100) -> list[dict[str, str]]:
    nodes = plan_nodes(tmp_path, base_port, 3)
    return [parse(render_node_properties(node, nodes)) for node in nodes]


def test_three_combined_nodes_with_their_own_ports_and_log_dirs(tmp_path):
    configs = rendered(tmp_path)
    assert [c["node.id"] for c in configs] == ["1", "2", "3"]
    assert {c["process.roles"] for c in configs} == {"broker,controller"}
    assert [c["listeners"] for c in configs] == [
        "PLAINTEXT://127.0.0.1:29100,CONTROLLER://127.0.0.1:29103",
        "PLAINTEXT://127.0.0.1:29101,CONTROLLER://127.0.0.1:29104",
        "PLAINTEXT://127.0.0.1:29102,CONTROLLER://127.0.0.1:29105",
    ]
    assert [c["advertised.listeners"] for c in configs] == [f"PLAINTEXT://127.0.0.1:{p}" for p in (29100, 29101, 29102)]
    assert [c["log.dirs"] for c in configs] == [str(tmp_path / f"node-{i}" / "data") for i in (1, 2, 3)]
    assert {c["controller.listener.names"] for c in configs} == {"CONTROLLER"}


def test_every_node_has_the_same_voters_line_naming_all_three_controllers(tmp_path):
    voters = {c["controller.quorum.voters"] for c in rendered(tmp_path)}
    assert voters == {"1@127.0.0.1:29103,2@127.0.0.1:29104,3@127.0.0.1:29105"}


def test_replication_three_with_min_isr_two_everywhere(tmp_path):
    for config in rendered(tmp_path):
        assert config["default.replication.factor"] == "3"
        assert config["min.insync.replicas"] == "2"
        assert config["offsets.topic.replication.factor"] == "3"
        assert config["transaction.state.log.replication.factor"] == "3"
        assert config["transaction.state.log.min.isr"] == "2"
        assert config["group.initial.rebalance.delay.ms"] == "0"
        assert config["num.partitions"] == "4"
        assert config["log.cleaner.backoff.ms"] == "1000"


def test_free_ports_are_picked_when_no_base_port_is_given(tmp_path):
    cluster = KafkaCluster(Settings(stack=StackSettings(home=tmp_path / "stack")), tmp_path / "cluster")
    ports = [port for node in cluster.nodes.values() for port in node.ports]
    assert len(set(ports)) == 6
    assert not set(ports) & MAIN_STACK_PORTS
    assert cluster.bootstrap == ",".join(f"127.0.0.1:{node.port}" for node in cluster.nodes.values())
    assert cluster.client_settings().kafka_bootstrap == cluster.bootstrap
    assert cluster.client_settings().kafka.replication_factor == 3


def test_jars_come_from_the_stacks_cache_and_node_files_live_under_home(tmp_path):
    settings = Settings(stack=StackSettings(home=tmp_path / "stack", cache_dir=tmp_path / "shared-cache"))
    cluster = KafkaCluster(settings, tmp_path / "cluster", base_port=29200)
    stack_paths = StackPaths.from_settings(settings.stack)
    assert cluster.jars.paths.kafka_libs == stack_paths.kafka_libs
    assert cluster.jars.paths.maven_repo == stack_paths.maven_repo
    node = cluster.nodes[2]
    assert node.console_log == tmp_path / "cluster" / "node-2" / "console.log"
    assert node.pid_file == tmp_path / "cluster" / "node-2" / "kafka.pid"
    command = cluster.jars.java_command("java", "kafka.Kafka", str(node.spec.properties), heap=cluster.heap)
    assert "-Xmx384m" in command and f"{stack_paths.kafka_libs}/*" in command


def test_a_taken_port_is_an_error_naming_it(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        cluster = KafkaCluster(Settings(stack=StackSettings(home=tmp_path)), tmp_path / "cluster", base_port=taken)
        with pytest.raises(StackError, match=rf"Kafka node 1 cannot start: port\(s\) \[{taken}\]"):
            cluster.start()


def test_kill_and_restart_refuse_what_makes_no_sense(tmp_path):
    cluster = KafkaCluster(Settings(stack=StackSettings(home=tmp_path)), tmp_path / "cluster")
    with pytest.raises(StackError, match="Kafka node 2: it is not running"):
        cluster.kill(2)
    with pytest.raises(StackError, match=r"has nodes \[1, 2, 3\], not 4"):
        cluster.restart(4)
    with pytest.raises(StackError, match="past 65535"):
        KafkaCluster(Settings(), tmp_path / "x", base_port=65532)


class FakeMetadata:
    """What `list_topics` returns, reduced to what the in-sync count reads: one topic, ISR per partition."""

    def __init__(self, brokers: set[int], isrs: list[list[int]]):
        from types import SimpleNamespace

        self.brokers = dict.fromkeys(brokers)
        partitions = {i: SimpleNamespace(error=None, leader=1, replicas=[1, 2, 3], isrs=isr)
                      for i, isr in enumerate(isrs)}
        self.topics = {"t": SimpleNamespace(partitions=partitions)}


def test_restart_waits_until_every_node_reports_in_sync_several_polls_in_a_row(tmp_path, monkeypatch):
    """A node that does not answer, or one answer that looks healed, is not enough: the wait needs every node
    to report nothing under-replicated IN_SYNC_POLLS times in a row."""
    from prismops.infra import kafka_cluster as module

    cluster = KafkaCluster(Settings(stack=StackSettings(home=tmp_path)), tmp_path / "cluster", timeout_s=60)
    healed, shrunk = FakeMetadata({1, 2, 3}, [[1, 2, 3]] * 2), FakeMetadata({1, 2, 3}, [[1, 3], [1, 2, 3]])
    # per poll: one answer per node for brokers_seen, then one per node for the in-sync count
    script = {1: [healed] * 20, 2: [healed] * 20,
              3: [healed, None, healed, shrunk, healed, healed, healed, healed, healed, healed]}
    asked: list[int] = []

    def metadata(via, timeout_s):
        asked.append(via)
        return script[via].pop(0)

    monkeypatch.setattr(cluster, "_metadata", metadata)
    monkeypatch.setattr(cluster, "_check_processes", lambda what: None)
    monkeypatch.setattr(module.time, "sleep", lambda s: None)
    cluster._wait("restarting Kafka node 3", [3], in_sync=True)
    # polls: (3 sees all, node 3 silent) -> (3 sees all, 3 shrunk) -> three healed polls in a row
    assert asked.count(3) == 2 * 5
    assert script[3] == []


# ------------------------------------------------------------------------------------------------- real cluster


def produce(cluster: KafkaCluster, topic: str, values: range) -> list[tuple[int, int]]:
    """acks=all, idempotent; returns (partition, offset) of every delivered record, fails on any error."""
    from confluent_kafka import Producer

    producer = Producer(cluster.client_config(**{"acks": "all", "enable.idempotence": True, "linger.ms": 5,
                                                 "delivery.timeout.ms": 60_000}))
    delivered: list[tuple[int, int]] = []
    errors: list[str] = []

    def on_delivery(error, message) -> None:
        if error is not None:
            errors.append(str(error))
        else:
            delivered.append((message.partition(), message.offset()))

    for value in values:
        producer.produce(topic, key=str(value).encode(), value=str(value).encode(), on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(60) == 0, "records still in flight after 60 s"
    assert errors == []
    assert len(delivered) == len(values)
    return delivered


def consume_all(cluster: KafkaCluster, topic: str, expected: int, timeout_s: float = 60.0) -> list[int]:
    from confluent_kafka import Consumer

    consumer = Consumer(cluster.client_config(**{
        "group.id": f"cluster-test-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }))
    consumer.subscribe([topic])
    values: list[int] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                if len(values) >= expected:
                    break  # a quiet poll after the last expected record: nothing extra is coming
                continue
            assert message.error() is None, message.error()
            values.append(int(message.value()))
    finally:
        consumer.close()
    return values


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout_s:g}s")


@pytest.mark.integration
def test_acks_all_survives_a_killed_broker_and_it_comes_back_in_sync(tmp_path):
    """Needs Java and the Kafka jars (resolved with maven into the repo cache when missing): no skip."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    settings = Settings(stack=StackSettings(home=tmp_path / "stack", cache_dir=REPO_CACHE))
    progress: list[str] = []
    with KafkaCluster(settings, tmp_path / "cluster") as cluster:
        assert not {port for node in cluster.nodes.values() for port in node.ports} & MAIN_STACK_PORTS
        cluster.start(progress.append)
        assert any("formatting Kafka storage" in line for line in progress)
        pids = cluster.pids()
        assert all(pids.values()) and len(set(pids.values())) == 3

        topic = "cluster-fault"
        admin = AdminClient(cluster.client_config())
        assert create_topics(admin, [NewTopic(topic, num_partitions=4, replication_factor=3)], 30) == [topic]

        def topic_min_isr() -> str | None:  # None until the broker asked has the new topic's metadata
            try:
                configs = admin.describe_configs([ConfigResource("topic", topic)])
                return next(iter(configs.values())).result(10)["min.insync.replicas"].value
            except KafkaException:
                return None

        assert wait_for(topic_min_isr, 15, "the new topic's config was not readable") == "2"

        first = produce(cluster, topic, range(0, 1000))

        killed_pid = cluster.kill(2)
        assert not process_alive(killed_pid)
        assert cluster.pids()[2] is None
        second = produce(cluster, topic, range(1000, 2000))  # 2 of 3 replicas in sync: enough for acks=all
        assert len(set(first + second)) == 2000  # no (partition, offset) written twice

        wait_for(lambda: cluster.brokers_seen() == {1, 3}, 30, "node 2 was not fenced")

        def isrs() -> list[list[int]] | None:  # None while the node asked cannot answer (it may be the one killed)
            try:
                metadata = admin.list_topics(topic, timeout=10).topics[topic]
            except KafkaException:
                return None
            return sorted(sorted(p.isrs) for p in metadata.partitions.values())

        wait_for(lambda: isrs() == [[1, 3]] * 4, 30, "node 2 was not dropped from every ISR")
        assert cluster.under_replicated() >= 4

        cluster.restart(2, progress.append)
        assert cluster.under_replicated() == 0
        assert cluster.brokers_seen() == {1, 2, 3}
        assert cluster.pids()[2] not in (None, killed_pid)

        values = consume_all(cluster, topic, 2000)
        assert len(values) == 2000
        assert sorted(values) == list(range(2000))  # every record exactly once

        node_pids = list(cluster.pids().values())
    assert all(not process_alive(pid) for pid in node_pids)
    assert all(state.state == "stopped" for state in cluster.status())
