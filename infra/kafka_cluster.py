"""A local multi-broker KRaft Kafka cluster for fault scenarios (`prismops chaos` scenario `cluster`).

Every node is a combined broker+controller (node ids 1..N, all of them voters) started from the same jars as
the local stack's single broker (`KafkaServer.resolve_jars`, cached under the settings' cache dir, so nothing
is downloaded twice). Each node keeps its config, data, pid file and console log under `home/node-<id>`;
all nodes share one cluster id. Topics default to replication factor N and min.insync.replicas N-1, so with
three nodes one broker can be SIGKILLed and acks=all producers keep going.

    with KafkaCluster(settings, tmp_path / "cluster", base_port=0) as cluster:
        cluster.start(print)
        ...produce to cluster.bootstrap...
        cluster.kill(2)
        cluster.restart(2, print)   # back, and no under-replicated partitions

A node counts as ours only while its pid file exists and /proc/<pid>/cmdline names its own config file
(the `LocalServer` rule), so `kill` and `stop` never signal anything else.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from prismops.infra.config import INFRA_DIR, StackPaths
from prismops.infra.processes import port_open, process_alive, tail
from prismops.infra.stack import KafkaServer, LocalServer, Progress, ServiceStatus, StackError, find_or_install
from prismops.settings import KAFKA_CLIENT_LOGGER, Settings

CLUSTER_TEMPLATE = INFRA_DIR / "kafka" / "cluster-server.properties"
NODE_HEAP = "384m"
DEFAULT_TIMEOUT_S = 90.0
KILL_WAIT_S = 5.0
# A rejoined node counts as in sync once every node reports no under-replicated partition this many polls in a
# row (0.5 s apart): one answer can come from a node whose metadata still lags.
IN_SYNC_POLLS = 3
CLUSTER_ID = re.compile(r"^[A-Za-z0-9_-]{22}$", re.MULTILINE)


def _quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class NodeSpec:
    """Where one node listens and keeps its files."""

    node_id: int
    kafka_port: int
    controller_port: int
    directory: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def voter(self) -> str:
        return f"{self.node_id}@127.0.0.1:{self.controller_port}"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def properties(self) -> Path:
        return self.directory / "server.properties"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "kafka.pid"


def replication_for(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of `brokers`: every broker holds a replica and
    one of them may be down."""
    return brokers, max(1, brokers - 1)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago (all bound at once, so never repeated)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def plan_nodes(home: Path, base_port: int, brokers: int) -> list[NodeSpec]:
    """Node i (1-based) listens on base_port+i-1 (PLAINTEXT) and base_port+brokers+i-1 (CONTROLLER);
    base_port 0 picks free ports instead."""
    if brokers < 1:
        raise StackError(f"a Kafka cluster needs at least one broker, not {brokers}")
    if base_port:
        ports = list(range(base_port, base_port + 2 * brokers))
        if ports[-1] > 65535:
            raise StackError(f"Kafka cluster ports {ports[0]}..{ports[-1]} run past 65535; pick a lower base_port")
    else:
        ports = free_ports(2 * brokers)
    return [
        NodeSpec(node_id=i, kafka_port=ports[i - 1], controller_port=ports[brokers + i - 1],
                 directory=home / f"node-{i}")
        for i in range(1, brokers + 1)
    ]


def render_node_properties(node: NodeSpec, nodes: Sequence[NodeSpec]) -> str:
    """server.properties of one node: its own ports and log dir, the voters line and replication of them all."""
    replication_factor, min_isr = replication_for(len(nodes))
    return Template(CLUSTER_TEMPLATE.read_text()).substitute(
        node_id=node.node_id,
        kafka_port=node.kafka_port,
        controller_port=node.controller_port,
        voters=",".join(n.voter for n in nodes),
        data_dir=node.data_dir,
        replication_factor=replication_factor,
        min_insync_replicas=min_isr,
    )


class KafkaNode(LocalServer):
    """One broker+controller process of the cluster, with LocalServer's pid file, ownership check and stop."""

    def __init__(self, settings: Settings, paths: StackPaths, spec: NodeSpec, command: Callable[[], list[str]]):
        self.name = f"kafka-node-{spec.node_id}"
        self.title = f"Kafka node {spec.node_id}"
        super().__init__(settings, paths)
        self.spec = spec
        self.pid_file = spec.pid_file
        self.port = spec.kafka_port
        self.ports = (spec.kafka_port, spec.controller_port)
        self.log_path = self.console_log = spec.console_log
        self._command = command

    def ownership_args(self) -> list[str]:
        return ["kafka.Kafka", str(self.spec.properties)]

    def prepare(self, progress: Progress) -> list[str]:
        return self._command()

    def answers(self, timeout_s: float) -> bool:
        return port_open(self.port)


class KafkaCluster:
    """`brokers` combined broker+controller KRaft nodes on loopback with state under `home`.

    `start` formats each node's storage once and waits until every node serves metadata listing all brokers;
    `kill` SIGKILLs one node, `restart` starts it again and waits for it (and, by default, for every partition
    to be fully in sync); `stop` (also on leaving the `with` block) SIGTERMs all, SIGKILL after 30 s.
    """

    def __init__(
        self, settings: Settings, home: Path, base_port: int = 0, brokers: int = 3, *,
        heap: str = NODE_HEAP, timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.home = Path(home).expanduser().resolve()
        self.heap = heap
        self.timeout_s = timeout_s
        self.specs = plan_nodes(self.home, base_port, brokers)
        self.replication_factor, self.min_insync_replicas = replication_for(brokers)
        # Jars, maven repo and java command line exactly as the stack's own broker; only the log4j file
        # (home/log4j.properties) and the pid/log locations are the cluster's.
        stack_paths = StackPaths.from_settings(settings.stack)
        self.paths = dataclasses.replace(
            stack_paths, home=self.home, logs=self.home, run=self.home, kafka_dir=self.home,
            kafka_data=self.home / "unused",
        )
        self.jars = KafkaServer(settings, self.paths)
        self._java: str | None = None
        self.nodes = {
            spec.node_id: KafkaNode(settings, self.paths, spec, self._command_for(spec)) for spec in self.specs
        }
        self.processes: dict[int, subprocess.Popen | None] = {}

    # ----------------------------------------------------------------------------------------- addresses

    @property
    def bootstrap(self) -> str:
        return ",".join(spec.address for spec in self.specs)

    @property
    def node_ids(self) -> list[int]:
        return [spec.node_id for spec in self.specs]

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka config for this cluster (plain loopback, librdkafka's log lines through Python logging)."""
        return {"bootstrap.servers": self.bootstrap, "logger": logging.getLogger(KAFKA_CLIENT_LOGGER), **extra}

    def client_settings(self) -> Settings:
        """The settings pointed at this cluster: its bootstrap, PLAINTEXT, topics created with its replication."""
        return self.settings.with_overrides(kafka={
            "bootstrap_servers": self.bootstrap, "security_protocol": "PLAINTEXT", "sasl_mechanism": None,
            "sasl_username": None, "sasl_password": None, "ssl_ca_location": None,
            "replication_factor": self.replication_factor,
        })

    def pids(self) -> dict[int, int | None]:
        return {node_id: node.our_pid() for node_id, node in self.nodes.items()}

    def status(self) -> list[ServiceStatus]:
        return [node.status() for node in self.nodes.values()]

    # ----------------------------------------------------------------------------------------- lifecycle

    def start(self, progress: Progress | None = None) -> None:
        """Format storage where it is not yet, start every node not running, wait until all serve the cluster.
        On failure the nodes this call started are stopped again."""
        report = progress or _quiet
        started: list[int] = []
        try:
            to_start = [node_id for node_id, node in self.nodes.items() if node.our_pid() is None]
            for node_id in to_start:
                self._check_ports_free(node_id)
            if to_start:
                self._prepare(report, [self.nodes[node_id].spec for node_id in to_start])
            for node_id in to_start:
                self.processes[node_id] = self._launch(node_id, report)
                started.append(node_id)
            report(f"waiting for the {len(self.nodes)}-node Kafka cluster…")
            self._wait(f"starting the {len(self.nodes)}-node Kafka cluster", self.node_ids, in_sync=False)
        except BaseException:
            self._stop_nodes(started)
            raise
        report(f"Kafka cluster up: {self.bootstrap}")

    def kill(self, node_id: int) -> int:
        """SIGKILL one node (no controlled shutdown); returns its pid."""
        node = self._node(node_id)
        pid = node.our_pid()
        if pid is None:
            raise StackError(
                f"cannot kill {node.title}: it is not running (no live process of ours in {node.pid_file})"
            )
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        while process_alive(pid):
            if time.monotonic() > deadline:
                raise StackError(f"{node.title} (pid {pid}) survived SIGKILL for {KILL_WAIT_S:g}s")
            time.sleep(0.05)
        node.pid_file.unlink(missing_ok=True)
        self._forget(node_id)
        return pid

    def restart(self, node_id: int, progress: Progress | None = None, wait_in_sync: bool = True) -> None:
        """Start a node that is down again; wait until it serves metadata listing every broker and, with
        `wait_in_sync`, until no partition is under-replicated."""
        report = progress or _quiet
        node = self._node(node_id)
        if node.our_pid() is not None:
            raise StackError(f"cannot restart {node.title}: it is still running (pid {node.our_pid()}); kill it first")
        self._check_ports_free(node_id)
        self._prepare(report, [node.spec])
        self.processes[node_id] = self._launch(node_id, report)
        report(f"waiting for {node.title} to rejoin{' and every partition to be in sync' if wait_in_sync else ''}…")
        self._wait(f"restarting {node.title}", [node_id], in_sync=wait_in_sync)
        report(f"{node.title} is back")

    def stop(self) -> list[ServiceStatus]:
        """SIGTERM every node of ours at once, SIGKILL those still alive after 30 s."""
        self._stop_nodes(self.node_ids)
        return self.status()

    def __enter__(self) -> "KafkaCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------- health

    def brokers_seen(self, via: int | None = None, timeout_s: float = 5.0) -> set[int]:
        """Broker ids in a metadata response, asked of one node (`via`) or of the whole bootstrap list;
        empty when nobody answers in time."""
        metadata = self._metadata(via, timeout_s)
        return set() if metadata is None else set(metadata.brokers)

    def under_replicated(self, timeout_s: float = 10.0) -> int:
        """Partitions (internal topics included) whose ISR is smaller than their replica set, or that have no
        leader, as the most lagging node reports them: each broker serves metadata from its own copy of the
        metadata log, so one node may still show a shrunk ISR that another already shows healed. Nodes that
        do not answer are skipped; a cluster where none answers is an error."""
        counts = [
            self._count_under_replicated(metadata)
            for metadata in (self._metadata(node_id, timeout_s) for node_id in self.node_ids)
            if metadata is not None
        ]
        if not counts:
            raise StackError(
                f"the Kafka cluster ({self.bootstrap}) did not answer a metadata request within {timeout_s:g}s"
            )
        return max(counts)

    def _under_replicated_all_answering(self, timeout_s: float) -> int:
        """Like `under_replicated`, but -1 unless every node answers: a silent node may be the one that still
        shows a shrunk ISR."""
        metadata = [self._metadata(node_id, timeout_s) for node_id in self.node_ids]
        if any(answer is None for answer in metadata):
            return -1
        return max(self._count_under_replicated(answer) for answer in metadata)

    @staticmethod
    def _count_under_replicated(metadata: Any) -> int:
        count = 0
        for topic in metadata.topics.values():
            for partition in topic.partitions.values():
                leaderless = partition.error is not None or partition.leader < 0
                if leaderless or set(partition.isrs) != set(partition.replicas):
                    count += 1
        return count

    # ----------------------------------------------------------------------------------------- internals

    def _node(self, node_id: int) -> KafkaNode:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise StackError(f"the Kafka cluster has nodes {self.node_ids}, not {node_id}") from None

    def _command_for(self, spec: NodeSpec) -> Callable[[], list[str]]:
        def command() -> list[str]:
            assert self._java is not None, "_prepare runs before any node starts"
            return self.jars.java_command(self._java, "kafka.Kafka", str(spec.properties), heap=self.heap)

        return command

    def _check_ports_free(self, node_id: int) -> None:
        node = self.nodes[node_id]
        busy = [port for port in node.ports if port_open(port)]
        if busy:
            raise StackError(
                f"{node.title} cannot start: port(s) {busy} on 127.0.0.1 are taken by another process "
                f"(the cluster uses {[p for n in self.nodes.values() for p in n.ports]}; pick another base_port)"
            )

    def _prepare(self, progress: Progress, specs: Sequence[NodeSpec]) -> None:
        """Java and the jars, log4j and every node's properties written, storage formatted where missing."""
        self._java = find_or_install("java", "default-jre-headless", progress)
        self.jars.resolve_jars(progress)
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(INFRA_DIR / "kafka" / "log4j.properties", self.jars.log4j)
        for spec in specs:
            spec.directory.mkdir(parents=True, exist_ok=True)
            spec.properties.write_text(render_node_properties(spec, self.specs))
        unformatted = [spec for spec in specs if not (spec.data_dir / "meta.properties").exists()]
        if not unformatted:
            return
        cluster_id = self._cluster_id()
        node_ids = [spec.node_id for spec in unformatted]
        progress(f"formatting Kafka storage (KRaft) of node(s) {node_ids}, cluster {cluster_id}…")
        with ThreadPoolExecutor(max_workers=len(unformatted)) as pool:
            list(pool.map(
                lambda spec: self._run_java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                                            "-c", str(spec.properties)),
                unformatted,
            ))

    def _cluster_id(self) -> str:
        """The id already in some node's meta.properties (a node re-formatted after losing its disk must join
        the same cluster), else a new one from `kafka-storage random-uuid`."""
        for spec in self.specs:
            meta = spec.data_dir / "meta.properties"
            if meta.exists():
                found = re.search(r"^cluster\.id=(\S+)$", meta.read_text(), re.MULTILINE)
                if found:
                    return found.group(1)
        output = self._run_java("kafka.tools.StorageTool", "random-uuid")
        ids = CLUSTER_ID.findall(output)
        if not ids:
            raise StackError(f"kafka.tools.StorageTool random-uuid printed no cluster id:\n{output[-2000:]}")
        return ids[-1]  # skip any log lines

    def _run_java(self, main_class: str, *args: str) -> str:
        assert self._java is not None
        result = subprocess.run(self.jars.java_command(self._java, main_class, *args), capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"{main_class} {' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return result.stdout

    def _launch(self, node_id: int, progress: Progress) -> subprocess.Popen:
        node = self.nodes[node_id]
        process = node.start(progress)
        if process is None:  # LocalServer.start found the port answering between our check and now
            raise StackError(f"{node.title} cannot start: {node.address} already answers and is not ours")
        return process

    def _wait(self, what: str, nodes: Sequence[int], in_sync: bool) -> None:
        """Until each of `nodes` serves metadata listing every broker (and, with `in_sync`, nothing is
        under-replicated); a node process that exits, or the timeout, is an error with the logs' tails."""
        expected = set(self.node_ids)
        deadline = time.monotonic() + self.timeout_s
        last_seen: dict[int, set[int]] = {}
        under = -1
        in_sync_polls = 0
        while True:
            self._check_processes(what)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            per_call = min(5.0, max(0.5, remaining))
            last_seen = {node_id: self.brokers_seen(via=node_id, timeout_s=per_call) for node_id in nodes}
            if all(seen == expected for seen in last_seen.values()):
                if not in_sync:
                    return
                under = self._under_replicated_all_answering(per_call)
                in_sync_polls = in_sync_polls + 1 if under == 0 else 0
                if in_sync_polls >= IN_SYNC_POLLS:
                    return
            time.sleep(0.5)
        seen = "; ".join(f"node {n} sees brokers {sorted(s) or 'none (no answer)'}" for n, s in last_seen.items())
        why = f"under-replicated partitions: {under}" if in_sync and under > 0 else seen or "no node answered"
        raise StackError(
            f"{what} timed out after {self.timeout_s:g}s: expected brokers {sorted(expected)}; {why}\n"
            f"{self._log_excerpt(nodes)}"
        )

    def _check_processes(self, what: str) -> None:
        for node_id, process in self.processes.items():
            if process is not None and process.poll() is not None:
                node = self.nodes[node_id]
                node.pid_file.unlink(missing_ok=True)
                self.processes[node_id] = None
                raise StackError(
                    f"{node.title} exited with code {process.returncode} while {what}; {self._log_excerpt([node_id])}"
                )

    def _log_excerpt(self, nodes: Sequence[int]) -> str:
        logs = [self.nodes[node_id].console_log for node_id in nodes]
        return "\n".join(f"last lines of {log}:\n{tail(log)}" for log in logs)

    def _metadata(self, via: int | None, timeout_s: float) -> Any:
        """A fresh metadata response, or None when no node answers. With `via`, the client knows only that
        node, so the answer is that node's own (a node serves requests only once it is unfenced)."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        specs = [self.nodes[via].spec] if via is not None else self.specs
        if not any(port_open(spec.kafka_port) for spec in specs):  # librdkafka would log each refused connection
            return None
        config = self.client_config()
        config["bootstrap.servers"] = ",".join(spec.address for spec in specs)
        try:
            return AdminClient(config).list_topics(timeout=timeout_s)
        except KafkaException:
            return None

    def _stop_nodes(self, node_ids: Sequence[int]) -> None:
        nodes = [self.nodes[node_id] for node_id in node_ids]
        if not nodes:
            return
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            list(pool.map(lambda node: node.stop(), nodes))  # StackError from one (survived SIGKILL) propagates
        for node_id in node_ids:
            self._forget(node_id)

    def _forget(self, node_id: int) -> None:
        """Drop the Popen of a node that is gone (already reaped by process_alive; poll just marks it done)."""
        process = self.processes.pop(node_id, None)
        if process is not None:
            process.poll()
