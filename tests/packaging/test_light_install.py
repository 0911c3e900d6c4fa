"""What a service gets from `pip install prismops`: one namespace, the SDK, working gRPC stubs, nothing heavy.

The wheel is built from a clean copy of the checkout (the files `git clone` would give: tracked plus
untracked-but-not-ignored, so no generated stub or cache can leak in), installed without extras into a new
virtualenv, and used there. Then the OpenAI Agents SDK goes into the same virtualenv: its `agents` package
must work beside ours. This needs PyPI (as `make test` does to install anything) and takes about a minute.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("faust-streaming", "river", "clickhouse-driver", "numpy", "scipy", "grpcio-tools", "aiokafka")
STUBS = ("routing_pb2.py", "routing_pb2_grpc.py", "routing_pb2.pyi")


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def clean_checkout(target: Path) -> Path:
    listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=REPO).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is not part of the checkout
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    assert not list(target.rglob("*_pb2*.py")), "the clean checkout must not contain generated stubs"
    return target


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the base wheel installed; returns its python."""
    root = tmp_path_factory.mktemp("light-install")
    source = clean_checkout(root / "src")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", root / "dist", source)
    run(sys.executable, "-m", "build", "--sdist", "--outdir", root / "dist", source)
    venv = root / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    (wheel,) = (root / "dist").glob("prismops-*.whl")
    run(python, "-m", "pip", "install", "--quiet", wheel)
    return python


def artifact(python: Path, pattern: str) -> Path:
    (found,) = (python.parents[2] / "dist").glob(pattern)
    return found


def test_the_wheel_and_sdist_carry_generated_stubs_and_only_the_prismops_namespace(light_venv: Path):
    names = zipfile.ZipFile(artifact(light_venv, "prismops-*.whl")).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"prismops"}, top_level
    for stub in STUBS:
        assert f"prismops/gateway_grpc/routing/v1/{stub}" in names
    sdist_names = tarfile.open(artifact(light_venv, "prismops-*.tar.gz")).getnames()
    for stub in STUBS:
        assert any(name.endswith(f"/gateway_grpc/routing/v1/{stub}") for name in sdist_names), stub


def test_the_sdk_and_the_router_client_import_without_the_platform(light_venv: Path):
    script = (
        "from prismops.streams.producer import UsageProducer, new_llm_usage_event\n"
        "from prismops.gateway_grpc.client import RouterClient\n"
        "from prismops.gateway_grpc.routing.v1 import routing_pb2\n"
        "print(routing_pb2.DecideRequest(tenant='acme').tenant)\n"
    )
    assert run(light_venv, "-c", script, cwd=light_venv.parent).stdout.strip() == "acme"
    installed = {line.split("==")[0].lower() for line in run(light_venv, "-m", "pip", "freeze").stdout.splitlines()}
    assert not installed & set(HEAVY), installed & set(HEAVY)
    missing = subprocess.run([light_venv, "-c", "import agents"], capture_output=True, text=True, cwd=light_venv.parent)
    assert missing.returncode != 0 and "ModuleNotFoundError" in missing.stderr


def test_a_platform_command_in_the_light_install_names_the_extra(light_venv: Path):
    result = subprocess.run([light_venv.parent / "prismops", "report", "spend"], capture_output=True, text=True,
                            cwd=light_venv.parent)
    assert result.returncode == 2
    assert "pip install 'prismops[platform]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_openai_agents_lives_beside_prismops(light_venv: Path):
    run(light_venv, "-m", "pip", "install", "--quiet", "openai-agents")
    script = (
        "from agents import Agent\n"
        "from prismops.streams.producer import UsageProducer\n"
        "from prismops.gateway_grpc.client import RouterClient\n"
        "print(Agent(name='helper', instructions='be brief').name)\n"
    )
    assert run(light_venv, "-c", script, cwd=light_venv.parent).stdout.strip() == "helper"
