"""The local stack's schema registry: Apicurio Registry, built from Maven Central, serving Confluent's API.

`prismops stack up --with-registry` starts it beside Kafka and ClickHouse. Clients (confluent-kafka's
SchemaRegistryClient, AvroSerializer/AvroDeserializer, kcat `-r`) use `registry_url(settings)`:
http://127.0.0.1:<port>/apis/ccompat/v7, Apicurio's Confluent-compatible API.

Install (first use, minutes; then cached): the POM in infra/apicurio/ is copied into
`<cache>/apicurio-registry-<version>/build`, the registry app's own application.properties is taken from its jar
(Quarkus reads that file from the application root only) with the app jar added to the bean index, and
`mvn package` runs the Quarkus build. The runnable jar and its lib/ are moved to `.../dist`; a marker file says
the build finished. Everything lives in the ignored cache (`stack.cache_dir`, default `<home>/cache`), next
to Kafka's jars, in the same local Maven repository.

Storage: Apicurio's SQL storage on an embedded H2 database kept in a file under `<home>/registry`, so schema
ids survive a registry restart (records on Kafka carry those ids) and are cleared with the stack's home.
Java 17 or later runs it (Quarkus 2.16); `java` is found or installed like Kafka's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from prismops.infra.config import INFRA_DIR, StackPaths
from prismops.infra.stack import JARS_COMPLETE_MARKER, LocalServer, LocalStack, Progress, StackError, find_or_install
from prismops.settings import Settings
from prismops.streams.schema_registry import CCOMPAT_PATH, LOCAL_REGISTRY_PORT, registry_url_from_settings

APICURIO_VERSION = "2.4.2.Final"
"""The newest Apicurio Registry whose whole dependency tree Maven Central serves here (see infra/apicurio/pom.xml)."""
DEFAULT_REGISTRY_PORT = LOCAL_REGISTRY_PORT
DEFAULT_REGISTRY_HEAP = "384m"
BUILD_TIMEOUT_S = 1800
APP_ARTIFACT = "io.apicurio:apicurio-registry-app"
INDEX_APP_JAR = (
    "\n# prismops: the registry app is a dependency of this build, not its root; index it so its beans are found\n"
    "quarkus.index-dependency.apicurio-app.group-id=io.apicurio\n"
    "quarkus.index-dependency.apicurio-app.artifact-id=apicurio-registry-app\n"
)


def registry_port(settings: Settings) -> int:
    return int(getattr(settings.stack, "registry_port", DEFAULT_REGISTRY_PORT))


def local_registry_url(settings: Settings) -> str:
    """The Confluent-compatible base URL of the stack's registry."""
    return f"http://127.0.0.1:{registry_port(settings)}{CCOMPAT_PATH}"


def registry_url(settings: Settings) -> str:
    """The registry clients use: `kafka.schema_registry_url` when set, else the stack's when it runs with one
    (`stack.with_registry`), else "" (no registry: Avro single-object)."""
    return registry_url_from_settings(settings)


class RegistryServer(LocalServer):
    """Apicurio Registry on `stack.registry_port` (loopback), run from the build in the cache."""

    name = "registry"
    title = "Schema registry (Apicurio)"

    def __init__(self, settings: Settings, paths: StackPaths) -> None:
        super().__init__(settings, paths)
        self.version = str(getattr(self.stack, "apicurio_version", APICURIO_VERSION))
        self.port = registry_port(settings)
        self.ports = (self.port,)
        self.heap = str(getattr(self.stack, "registry_heap", DEFAULT_REGISTRY_HEAP))
        self.root = paths.maven_repo.parent / f"apicurio-registry-{self.version}"
        self.build_dir = self.root / "build"
        self.dist = self.root / "dist"
        self.data_dir = paths.home / "registry"
        self.log_path = self.console_log = paths.logs / "registry.log"

    @property
    def url(self) -> str:
        return f"http://{self.address}{CCOMPAT_PATH}"

    def ownership_args(self) -> list[str]:
        return [f"-Dquarkus.http.port={self.port}", f"-Dprismops.registry.home={self.data_dir}"]

    def runner(self) -> Path:
        """The built application's entry jar (fast-jar or legacy layout, whichever Quarkus wrote)."""
        for candidate in (self.dist / "quarkus-app" / "quarkus-run.jar", *sorted(self.dist.glob("*-runner.jar"))):
            if candidate.is_file():
                return candidate
        raise StackError(f"no runnable registry jar under {self.dist}; remove {self.root} and run `prismops stack up "
                         "--with-registry` again to rebuild it")

    def prepare(self, progress: Progress) -> list[str]:
        java = find_or_install("java", "default-jre-headless", progress)
        self.install(progress)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        database = f"jdbc:h2:file:{self.data_dir / 'registry'};DB_CLOSE_ON_EXIT=FALSE"
        return [
            java, f"-Xmx{self.heap}", "-Djava.awt.headless=true", *self.ownership_args(),
            "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.datasource.jdbc.url={database}",
            "-Dquarkus.datasource.jdbc.min-size=1", "-Dquarkus.datasource.jdbc.initial-size=1",
            "-Dquarkus.datasource.jdbc.max-size=20",
            "-Dquarkus.log.console.color=false",
            "-jar", str(self.runner()),
        ]

    def installed(self) -> bool:
        return (self.dist / JARS_COMPLETE_MARKER).exists()

    def install(self, progress: Progress) -> None:
        """Build the registry into the cache once (minutes; Maven downloads about 200 MB the first time)."""
        if self.installed():
            return
        mvn = find_or_install("mvn", "maven", progress)
        progress(f"building Apicurio Registry {self.version} from Maven Central (first use: a few minutes)…")
        shutil.rmtree(self.build_dir, ignore_errors=True)
        resources = self.build_dir / "src" / "main" / "resources"
        resources.mkdir(parents=True)
        pom = (INFRA_DIR / "apicurio" / "pom.xml").read_text()
        (self.build_dir / "pom.xml").write_text(pom.replace(
            f"<apicurio.version>{APICURIO_VERSION}</apicurio.version>", f"<apicurio.version>{self.version}</apicurio.version>"))
        repo = f"-Dmaven.repo.local={self.paths.maven_repo}"
        self._mvn([mvn, "-q", "-B", "dependency:copy", f"-Dartifact={APP_ARTIFACT}:{self.version}",
                   f"-DoutputDirectory={self.build_dir / 'app'}", "-Dmdep.stripVersion=true", repo], "fetching the registry app")
        (resources / "application.properties").write_text(self.application_properties(self.build_dir / "app"))
        self._mvn([mvn, "-B", "package", "-DskipTests", repo], "building the registry (Quarkus)")
        target = self.build_dir / "target"
        staging = self.root / "dist.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if (target / "quarkus-app").is_dir():
            shutil.move(str(target / "quarkus-app"), staging / "quarkus-app")
        else:
            for runner in target.glob("*-runner.jar"):
                shutil.move(str(runner), staging / runner.name)
            shutil.move(str(target / "lib"), staging / "lib")
        shutil.rmtree(self.dist, ignore_errors=True)
        staging.rename(self.dist)
        (self.dist / JARS_COMPLETE_MARKER).write_text(f"{self.version}\n")
        shutil.rmtree(self.build_dir, ignore_errors=True)

    @staticmethod
    def application_properties(app_dir: Path) -> str:
        """The app jar's own application.properties (its storage, REST and profile settings) plus the bean index
        entry; the packaging type is left to Quarkus."""
        jars = sorted(app_dir.glob("apicurio-registry-app*.jar"))
        if not jars:
            raise StackError(f"maven did not copy the registry app jar into {app_dir}")
        with zipfile.ZipFile(jars[0]) as jar:
            text = jar.read("application.properties").decode()
        kept = [line for line in text.splitlines() if "quarkus.package.type" not in line]
        return "\n".join(kept) + "\n" + INDEX_APP_JAR

    def _mvn(self, command: list[str], what: str) -> None:
        try:
            result = subprocess.run(command, cwd=self.build_dir, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"{what} took longer than {BUILD_TIMEOUT_S} s") from exc
        if result.returncode != 0:
            errors = [line for line in result.stdout.splitlines() if "ERROR" in line][:8]
            raise StackError(f"{what} with maven failed:\n" + ("\n".join(errors) or result.stdout[-3000:])
                             + result.stderr[-2000:])

    def answers(self, timeout_s: float) -> bool:
        """Ready: Quarkus's readiness check is UP and the Confluent-compatible API lists subjects."""
        try:
            for path in ("/health/ready", f"{CCOMPAT_PATH}/subjects"):
                with urllib.request.urlopen(f"http://{self.address}{path}", timeout=timeout_s) as response:
                    if response.status != 200:
                        return False
        except (urllib.error.URLError, OSError):
            return False
        return True

    def clear(self) -> None:
        """Forget every registered schema (the H2 files); only while stopped, since ids on Kafka refer to them."""
        if self.our_pid() is not None:
            raise StackError("stop the schema registry before clearing its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)


def attach_registry(stack: LocalStack, start: bool) -> RegistryServer:
    """Put the registry into a LocalStack: started by `up` when `start` (`--with-registry` or
    `stack.with_registry`), and covered by `down`/`status` whenever ours runs, as Prometheus is. Kept here so
    infra.stack need not import this module (which builds on its LocalServer)."""
    server = RegistryServer(stack.settings, stack.paths)
    if start or server.our_pid() is not None:
        stack.servers.append(server)
    return server


KCAT_BUILD_PACKAGES = ("build-essential", "pkg-config", "libavro-dev", "libjansson-dev", "libcurl4-openssl-dev",
                       "librdkafka-dev")
LIBSERDES_SOURCE = "https://github.com/confluentinc/libserdes/archive/refs/tags/v8.0.0.tar.gz"
KCAT_SOURCE = "https://github.com/edenhill/kcat/archive/refs/tags/1.7.1.tar.gz"


def kcat_has_avro(kcat: str) -> bool:
    """Whether a kcat binary was built with Avro/Schema-Registry support (`-s value=avro -r URL`)."""
    try:
        version = subprocess.run([kcat, "-V"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Avro" in version


def ensure_kcat(settings: Settings, progress: Progress, *, avro: bool = True) -> str:
    """A kcat for our topics: the Avro-capable one built into `<cache>/bin` (see `build_kcat_with_avro`) when there
    is one, else Debian's `kcat` package (installed like the stack's other Debian tools). Debian's kcat 1.7.1 is
    built without Avro (Debian does not package libserdes), so with `avro` and no cached build this raises."""
    cached = StackPaths.from_settings(settings.stack).maven_repo.parent / "bin" / "kcat"
    if cached.is_file() and kcat_has_avro(str(cached)):
        return str(cached)
    debian = find_or_install("kcat", "kcat", progress, extra_dirs=["/usr/bin"])
    if avro and not kcat_has_avro(debian):
        raise StackError(f"{debian} is built without Avro/Schema-Registry support (Debian does not package "
                         "libserdes); build one into the cache with "
                         "`python -m prismops.infra.registry build-kcat [LIBSERDES_SRC KCAT_SRC]`")
    return debian


def build_kcat_with_avro(settings: Settings, progress: Progress, libserdes_src: Path | None = None,
                         kcat_src: Path | None = None) -> str:
    """Build libserdes (Confluent's C serdes) and kcat with Avro into the cache: `<cache>/kcat-avro/prefix` and
    `<cache>/bin/kcat` (rpath to the prefix; nothing installed system-wide but the Debian build dependencies).
    Sources: the given checkouts, else GitHub release tarballs (libserdes v8.0.0, kcat 1.7.1)."""
    cache = StackPaths.from_settings(settings.stack).maven_repo.parent
    work, prefix, target = cache / "kcat-avro", cache / "kcat-avro" / "prefix", cache / "bin" / "kcat"
    _apt_install(KCAT_BUILD_PACKAGES, progress)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sources = {}
    for name, given, url in (("libserdes", libserdes_src, LIBSERDES_SOURCE), ("kcat", kcat_src, KCAT_SOURCE)):
        source = work / name
        if given is not None:
            shutil.copytree(given, source, ignore=shutil.ignore_patterns(".git"))
        else:
            progress(f"downloading {url}…")
            archive = work / f"{name}.tar.gz"
            try:
                urllib.request.urlretrieve(url, archive)
            except (urllib.error.URLError, OSError) as exc:
                raise StackError(f"cannot download {url} ({exc}); pass a local checkout of {name} instead") from exc
            subprocess.run(["tar", "xzf", str(archive), "-C", str(work)], check=True)
            [unpacked] = [p for p in work.iterdir() if p.is_dir() and p.name.startswith(name) and p != source]
            unpacked.rename(source)
        sources[name] = source
    env = {**os.environ, "CPPFLAGS": f"-I{prefix / 'include'}",
           "LDFLAGS": f"-L{prefix / 'lib'} -Wl,-rpath,{prefix / 'lib'}"}
    steps = [
        (sources["libserdes"], ["./configure", f"--prefix={prefix}"]), (sources["libserdes"], ["make"]),
        (sources["libserdes"], ["make", "install"]),
        (sources["kcat"], ["./configure", f"--prefix={prefix}", "--enable-avro"]), (sources["kcat"], ["make"]),
    ]
    progress("building libserdes and kcat with Avro…")
    for cwd, command in steps:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            raise StackError(f"`{' '.join(command)}` in {cwd} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sources["kcat"] / "kcat", target)
    if not kcat_has_avro(str(target)):
        raise StackError(f"built {target}, but it reports no Avro support")
    return str(target)


def _apt_install(packages: tuple[str, ...], progress: Progress) -> None:
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(f"install first: sudo apt-get install -y {' '.join(missing)}")
    progress(f"installing {' '.join(missing)} with apt-get…")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *missing]):
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"`{' '.join(command)}` failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


if __name__ == "__main__":  # python -m prismops.infra.registry build-kcat [LIBSERDES_SRC KCAT_SRC]
    import sys

    from prismops.settings import load_settings

    if sys.argv[1:2] != ["build-kcat"] or len(sys.argv) not in (2, 4):
        raise SystemExit("usage: python -m prismops.infra.registry build-kcat [LIBSERDES_SRC KCAT_SRC]")
    given = [Path(arg) for arg in sys.argv[2:4]] or [None, None]
    print(build_kcat_with_avro(load_settings(), print, *given))
