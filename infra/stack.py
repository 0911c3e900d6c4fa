"""Start, stop and inspect the local Kafka + ClickHouse (+ Prometheus, on request) that `prismops stack` runs.

Servers run detached (they outlive the CLI) with all state under `settings.stack.home`. A server counts
as ours only while its pid file exists and /proc/<pid>/cmdline still names our config file, so `down`
can never signal an unrelated process that reused the pid or a server somebody else started.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prismops.infra.config import (
    INFRA_DIR,
    PROMETHEUS_RULES,
    StackPaths,
    render_clickhouse_config,
    render_kafka_properties,
    render_prometheus_config,
)
from prismops.infra.processes import cmdline_matches, port_open, process_alive, read_cmdline, tail
from prismops.settings import Settings

STOP_TIMEOUT_S = 30.0
JARS_COMPLETE_MARKER = ".complete"

Progress = Callable[[str], None]


class StackError(RuntimeError):
    """A server could not be prepared, started or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class ServiceStatus:
    """One server as `prismops stack` reports it; `external` means its port answers but we did not start it."""

    name: str
    state: str  # running | stopped | external
    pid: int | None
    address: str
    log_path: Path
    started_by_us: bool

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def find_or_install(executable: str, debian_package: str, progress: Progress, extra_dirs: Sequence[str] = ()) -> str:
    """Path of a required tool; installed with apt-get when missing and we are root, else a clear error."""
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *extra_dirs])
    found = shutil.which(executable, path=search_path)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(f"`{executable}` not found; install it first, e.g. `sudo apt-get install -y {debian_package}`")
    progress(f"installing {debian_package} with apt-get…")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", debian_package]):
        result = subprocess.run(command, env=apt_env, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"`{' '.join(command)}` failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    found = shutil.which(executable, path=search_path)
    if not found:
        raise StackError(f"installed {debian_package} but `{executable}` is still not on PATH")
    return found


class LocalServer:
    """One detached server process: pid file, ownership check, start, readiness wait and stop."""

    name: str  # machine name: pid file, status rows
    title: str  # for people: progress and error messages
    port: int  # the one clients use; answering there means "up"
    ports: tuple[int, ...]  # every port the server binds
    log_path: Path  # the server's own log
    console_log: Path  # where its stdout/stderr go

    def __init__(self, settings: Settings, paths: StackPaths) -> None:
        self.settings = settings
        self.stack = settings.stack
        self.paths = paths
        self.pid_file = paths.run / f"{self.name}.pid"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ownership_args(self) -> list[str]:
        raise NotImplementedError

    def prepare(self, progress: Progress) -> list[str]:
        """Make config and data ready and return the command line to start the server."""
        raise NotImplementedError

    def answers(self, timeout_s: float) -> bool:
        raise NotImplementedError

    def our_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if process_alive(pid) and cmdline_matches(read_cmdline(pid), self.ownership_args()):
            return pid
        return None

    def status(self) -> ServiceStatus:
        pid = self.our_pid()
        if pid is not None:
            return self._status("running", pid, True)
        return self._status("external" if port_open(self.port) else "stopped", None, False)

    def _status(self, state: str, pid: int | None, started_by_us: bool) -> ServiceStatus:
        return ServiceStatus(self.name, state, pid, self.address, self.log_path, started_by_us)

    def start(self, progress: Progress) -> subprocess.Popen | None:
        """Start the server unless it is ours and running or the port is taken; returns the new process."""
        if self.our_pid() is not None:
            progress(f"{self.title} already running")
            return None
        self.pid_file.unlink(missing_ok=True)
        if port_open(self.port):
            progress(f"{self.title}: {self.address} answers but is not ours; leaving it alone")
            return None
        busy = [port for port in self.ports if port_open(port)]
        if busy:
            raise StackError(f"{self.title} cannot start: port(s) {busy} on 127.0.0.1 are taken by another process")
        command = self.prepare(progress)
        progress(f"starting {self.title}…")
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.console_log.open("ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.pid_file.parent, start_new_session=True,
            )
        self.pid_file.write_text(f"{process.pid}\n")
        settle_until = time.monotonic() + 2.0  # /proc/<pid>/cmdline reads empty for a moment after exec
        while process.poll() is None and read_cmdline(process.pid) is None and time.monotonic() < settle_until:
            time.sleep(0.01)
        return process

    def wait_ready(self, progress: Progress, process: subprocess.Popen | None) -> None:
        """Block until the server answers; raise with the tail of its log when it exits or times out."""
        progress(f"waiting for {self.title}…")
        deadline = time.monotonic() + self.stack.start_timeout_s
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{self.title} exited with code {process.returncode} while starting; {self._log_excerpt()}"
                )
            if self.answers(timeout_s=min(5.0, max(0.5, deadline - time.monotonic()))):
                return
            time.sleep(0.5)
        raise StackError(
            f"{self.title} did not answer on {self.address} within {self.stack.start_timeout_s:g}s; "
            f"{self._log_excerpt()}"
        )

    def _log_excerpt(self) -> str:
        logs = dict.fromkeys([self.log_path, self.console_log])
        return "\n".join(f"last lines of {path}:\n{tail(path)}" for path in logs)

    def stop(self) -> ServiceStatus:
        """SIGTERM our process, SIGKILL after STOP_TIMEOUT_S; anything not ours is never signalled."""
        pid = self.our_pid()
        if pid is not None:
            self._signal_and_wait(pid)
        self.pid_file.unlink(missing_ok=True)
        return self.status()

    def _signal_and_wait(self, pid: int) -> None:
        for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if not process_alive(pid):
                    return
                time.sleep(0.2)
        raise StackError(f"{self.title} (pid {pid}) survived SIGKILL")


class KafkaServer(LocalServer):
    name = "kafka"
    title = "Kafka"

    def __init__(self, settings: Settings, paths: StackPaths) -> None:
        super().__init__(settings, paths)
        self.port = self.stack.kafka_port
        self.ports = (self.stack.kafka_port, self.stack.kafka_controller_port)
        self.log_path = self.console_log = paths.logs / "kafka.log"
        self.properties = paths.kafka_dir / "server.properties"
        self.log4j = paths.kafka_dir / "log4j.properties"

    def ownership_args(self) -> list[str]:
        return ["kafka.Kafka", str(self.properties)]

    def java_command(self, java: str, main_class: str, *args: str, heap: str | None = None) -> list[str]:
        heap_args = [f"-Xmx{heap}"] if heap else []
        return [
            java, *heap_args, "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{self.log4j}",
            "-cp", f"{self.paths.kafka_libs}/*", main_class, *args,
        ]

    def prepare(self, progress: Progress) -> list[str]:
        java = find_or_install("java", "default-jre-headless", progress)
        self.resolve_jars(progress)
        self.paths.kafka_dir.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(render_kafka_properties(self.stack, self.paths))
        shutil.copyfile(INFRA_DIR / "kafka" / "log4j.properties", self.log4j)
        if not (self.paths.kafka_data / "meta.properties").exists():
            progress("formatting Kafka storage (KRaft)…")
            output = self._run_java(java, "kafka.tools.StorageTool", "random-uuid")
            cluster_id = re.findall(r"^[A-Za-z0-9_-]{22}$", output, re.MULTILINE)[-1]  # skip any log lines
            self._run_java(java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.properties))
        return self.java_command(java, "kafka.Kafka", str(self.properties), heap=self.stack.kafka_heap)

    def _run_java(self, java: str, main_class: str, *args: str) -> str:
        result = subprocess.run(self.java_command(java, main_class, *args), capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"{main_class} {' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return result.stdout

    def resolve_jars(self, progress: Progress) -> None:
        """Copy Kafka's jars from Maven Central into the cache once; the marker file says the copy finished."""
        libs = self.paths.kafka_libs
        if (libs / JARS_COMPLETE_MARKER).exists():
            return
        mvn = find_or_install("mvn", "maven", progress)
        progress(f"resolving Kafka {self.stack.kafka_version} jars…")
        dist = self.paths.kafka_dist
        dist.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(INFRA_DIR / "kafka" / "pom.xml", dist / "pom.xml")
        staging = dist / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(dist / "pom.xml"), "dependency:copy-dependencies",
             f"-Dkafka.version={self.stack.kafka_version}", f"-DoutputDirectory={staging}",
             f"-Dmaven.repo.local={self.paths.maven_repo}"],
            cwd=dist, capture_output=True, text=True,
        )
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            raise StackError(f"resolving Kafka jars with maven failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        (libs / JARS_COMPLETE_MARKER).write_text(f"{self.stack.kafka_version}\n")

    def answers(self, timeout_s: float) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        if not port_open(self.port):  # librdkafka would log "connection refused" to stderr
            return False
        try:
            AdminClient(self._client_config()).list_topics(timeout=timeout_s)
        except KafkaException:
            return False
        return True

    def _client_config(self) -> dict[str, Any]:
        """The app's client config when it points at this broker; a plain loopback one when it points elsewhere."""
        if self.settings.kafka_bootstrap == self.address:
            return self.settings.kafka_client_config()
        return {"bootstrap.servers": self.address}


class ClickHouseServer(LocalServer):
    name = "clickhouse"
    title = "ClickHouse"

    def __init__(self, settings: Settings, paths: StackPaths) -> None:
        super().__init__(settings, paths)
        self.port = self.stack.clickhouse_tcp_port
        self.ports = (self.port, self.stack.clickhouse_http_port, self.stack.clickhouse_interserver_port)
        self.log_path = paths.logs / "clickhouse-server.log"
        self.console_log = paths.logs / "clickhouse-console.log"
        self.config = paths.clickhouse_dir / "config.xml"

    def ownership_args(self) -> list[str]:
        return [f"--config-file={self.config}"]

    def prepare(self, progress: Progress) -> list[str]:
        binary = find_or_install(
            "clickhouse-server", "clickhouse-server", progress, extra_dirs=["/usr/sbin", "/usr/bin"]
        )
        for sub in ("data", "tmp", "user_files", "format_schemas"):
            (self.paths.clickhouse_dir / sub).mkdir(parents=True, exist_ok=True)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.config.write_text(render_clickhouse_config(self.stack, self.paths))
        shutil.copyfile(INFRA_DIR / "clickhouse" / "users.xml", self.paths.clickhouse_dir / "users.xml")
        return [binary, f"--config-file={self.config}"]

    def answers(self, timeout_s: float) -> bool:
        from clickhouse_driver import Client

        if not port_open(self.port):  # the driver would log each refused connection with a traceback
            return False
        client = Client("127.0.0.1", port=self.port, connect_timeout=timeout_s, send_receive_timeout=timeout_s)
        try:
            return client.execute("SELECT 1") == [(1,)]
        except Exception:  # any driver/network error just means "not ready yet"
            return False
        finally:
            client.disconnect()


class PrometheusServer(LocalServer):
    """Debian's `prometheus` on `stack.prometheus_port`, scraping the components at the settings' ports.

    The package's own service (port 9090) is never used: we run our binary with our config and data dir.
    """

    name = "prometheus"
    title = "Prometheus"
    retention = "7d"

    def __init__(self, settings: Settings, paths: StackPaths) -> None:
        super().__init__(settings, paths)
        self.port = self.stack.prometheus_port
        self.ports = (self.port,)
        self.log_path = self.console_log = paths.logs / "prometheus.log"
        self.config = paths.prometheus_dir / "prometheus.yml"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def ownership_args(self) -> list[str]:
        return [f"--config.file={self.config}"]

    def write_config(self) -> None:
        """The rendered scrape config and the alert rules it loads, side by side."""
        self.paths.prometheus_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(render_prometheus_config(self.settings))
        shutil.copyfile(PROMETHEUS_RULES, self.paths.prometheus_dir / PROMETHEUS_RULES.name)

    def prepare(self, progress: Progress) -> list[str]:
        binary = find_or_install("prometheus", "prometheus", progress, extra_dirs=["/usr/bin"])
        self.paths.prometheus_data.mkdir(parents=True, exist_ok=True)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.write_config()
        return [
            binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.paths.prometheus_data}",
            f"--storage.tsdb.retention.time={self.retention}", f"--web.listen-address={self.address}",
        ]

    def start(self, progress: Progress) -> subprocess.Popen | None:
        """As LocalServer.start; a Prometheus of ours that is already running re-reads a changed config."""
        pid = self.our_pid()
        if pid is not None:
            before = self._written_config()
            self.write_config()
            if self._written_config() != before:
                progress("Prometheus config changed; reloading it (SIGHUP)")
                os.kill(pid, signal.SIGHUP)
        return super().start(progress)

    def _written_config(self) -> tuple[str, ...]:
        files = (self.config, self.paths.prometheus_dir / PROMETHEUS_RULES.name)
        return tuple(path.read_text() if path.is_file() else "" for path in files)

    def answers(self, timeout_s: float) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=timeout_s) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


class RedisServer(LocalServer):
    """Debian's `redis-server` on `redis.port`, loopback only, in memory (no snapshots, no AOF), LRU beyond
    `redis.maxmemory_mb`: the shared store of gateway rate limits and leases and of the response cache.
    Started by the stack only when `redis.enabled`. The package's own service (port 6379) is never used."""

    name = "redis"
    title = "Redis"

    def __init__(self, settings: Settings, paths: StackPaths) -> None:
        super().__init__(settings, paths)
        self.redis = settings.redis
        self.port = self.redis.port
        self.ports = (self.port,)
        self.dir = paths.home / "redis"
        self.config = self.dir / "redis.conf"
        self.log_path = paths.logs / "redis.log"
        self.console_log = paths.logs / "redis-console.log"

    def ownership_args(self) -> list[str]:
        return [str(self.config)]

    def render_config(self) -> str:
        lines = [
            "bind 127.0.0.1", "protected-mode yes", f"port {self.port}", f"dir {self.dir}",
            f"logfile {self.log_path}", 'save ""', "appendonly no", "daemonize no",
            # keep our argv (the config path) visible in /proc, so `down` can tell this server is ours
            "set-proc-title no",
            f"maxmemory {self.redis.maxmemory_mb}mb", "maxmemory-policy allkeys-lru",
        ]
        if self.redis.password:
            lines.append(f"requirepass {self.redis.password}")
        return "\n".join(lines) + "\n"

    def prepare(self, progress: Progress) -> list[str]:
        binary = find_or_install("redis-server", "redis-server", progress, extra_dirs=["/usr/bin", "/usr/sbin"])
        self.dir.mkdir(parents=True, exist_ok=True)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.render_config())
        self.config.chmod(0o600)  # may hold the password
        return [binary, str(self.config)]

    def answers(self, timeout_s: float) -> bool:
        if not port_open(self.port):
            return False
        try:
            import redis
        except ImportError as exc:  # the platform extra brings it
            raise StackError("the `redis` Python package is missing: pip install 'prismops[platform]'") from exc
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.redis.password,
                             socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class LocalStack:
    """The local Kafka + ClickHouse pair, plus Prometheus with `with_prometheus` and Redis when
    `redis.enabled`: `up`, `down` and `status` are all idempotent. `down` and `status` always cover a
    Prometheus or Redis of ours that is running."""

    def __init__(self, settings: Settings, with_prometheus: bool = False) -> None:
        self.settings = settings
        self.paths = StackPaths.from_settings(settings.stack)
        self.prometheus = PrometheusServer(settings, self.paths)
        self.redis = RedisServer(settings, self.paths)
        self.servers: list[LocalServer] = [KafkaServer(settings, self.paths), ClickHouseServer(settings, self.paths)]
        if with_prometheus:
            self.servers.append(self.prometheus)
        if settings.redis.enabled:
            self.servers.append(self.redis)

    def _covered(self) -> list[LocalServer]:
        """The servers asked for, plus our Prometheus or Redis when it runs though this stack was built without it."""
        extra = [s for s in (self.prometheus, self.redis) if s not in self.servers and s.our_pid() is not None]
        return [*self.servers, *extra]

    def up(self, progress: Progress | None = None) -> list[ServiceStatus]:
        """Start what is not running and wait for it; on failure, stop what this call started."""
        report = progress or (lambda message: None)
        self.paths.home.mkdir(parents=True, exist_ok=True)
        started: list[tuple[LocalServer, subprocess.Popen | None]] = []
        try:
            for server in self.servers:
                started.append((server, server.start(report)))
            for server, process in started:
                if process is not None or server.our_pid() is not None:
                    server.wait_ready(report, process)
        except BaseException:
            for server, process in started:
                if process is not None:
                    server.stop()
            raise
        return self.status()

    def down(self) -> list[ServiceStatus]:
        return [server.stop() for server in self._covered()]

    def status(self) -> list[ServiceStatus]:
        return [server.status() for server in self._covered()]
