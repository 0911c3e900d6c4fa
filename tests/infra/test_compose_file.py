"""infra/compose: the compose client accepts the file, the mounts and build exist, the PrismOps settings it sets
are real settings, and its Prometheus config is the one the local stack renders for the default ports."""

from __future__ import annotations

import re
import tomllib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from prismops.infra.config import INFRA_DIR, render_prometheus_config
from prismops.infra.stack import StackError, find_or_install
from prismops.settings import GatewaySettings, Settings, SinkSettings, StackSettings, WorkerSettings

COMPOSE_DIR = INFRA_DIR / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
REPO = INFRA_DIR.parent
SERVICES = {"kafka", "clickhouse", "prismops-init", "worker", "sink", "gateway", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """`docker compose` when the plugin works, else Debian's `docker-compose` (installed when missing)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    try:
        return [find_or_install("docker-compose", "docker-compose", progress=print)]
    except StackError as error:
        pytest.fail(f"no compose client: `docker compose` does not work here and docker-compose is missing: {error}")


def compose_config(compose: list[str], compose_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*compose, "-f", str(compose_file), "--project-directory", str(COMPOSE_DIR), "config"],
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture(scope="module")
def resolved(compose) -> dict:
    result = compose_config(compose, COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_config_accepts_the_file_with_every_service(resolved):
    assert set(resolved["services"]) == SERVICES


def test_compose_config_rejects_a_broken_file(compose, tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace('network_mode: "service:worker"', 'network_mode: "service:nowhere"', 1))
    result = compose_config(compose, broken)
    assert result.returncode != 0
    assert "nowhere" in result.stdout + result.stderr


def test_bind_mounts_and_the_build_exist(resolved):
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts {source}, which does not exist"
        if "build" in service:
            assert Path(service["build"]["context"]).resolve() == REPO
            assert (REPO / service["build"]["dockerfile"]).is_file()


def test_components_and_prometheus_share_the_worker_network_namespace(resolved):
    services = resolved["services"]
    for name in ("sink", "gateway", "prometheus"):
        assert services[name]["network_mode"] == "service:worker", name
    assert "prometheus" in services["worker"]["networks"]["default"]["aliases"]
    assert services["grafana"]["environment"]["PROMETHEUS_URL"] == "http://prometheus:19090"


def test_prismops_environment_names_real_settings(resolved):
    for name in ("prismops-init", "worker", "sink", "gateway"):
        for variable in resolved["services"][name]["environment"]:
            section, field = re.fullmatch(r"PRISMOPS_([A-Z]+)__([A-Z_]+)", variable).groups()
            model = Settings.model_fields[section.lower()].annotation
            assert field.lower() in model.model_fields, variable


def test_compose_prometheus_config_is_what_the_local_stack_renders_for_default_ports():
    defaults = Settings(stack=StackSettings(), worker=WorkerSettings(), sink=SinkSettings(), gateway=GatewaySettings())
    assert yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text()) == yaml.safe_load(
        render_prometheus_config(defaults)
    )


def test_the_image_copies_every_package():
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, re.MULTILINE))
    pyproject = (REPO / "pyproject.toml").read_text()
    folders = set(tomllib.loads(pyproject)["tool"]["setuptools"]["package-dir"].values())
    assert folders <= copied, folders - copied
    for package in copied:
        assert (REPO / package / "__init__.py").is_file(), package
