"""The folder tree is the architecture: layers import only downwards, nothing imports the CLI, no circles.

Every `import` counts, including those inside functions and `if TYPE_CHECKING:` blocks: a type-only circle
is still a circle for a reader. The module names are the installed ones (`prismops.<folder>...`), read from
pyproject's package-dir mapping, so the test sees the tree exactly as users import it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Lower numbers are nearer the ground; a module may import its own package or any lower layer.
LAYERS = {
    "prismops": 0, "prismops.settings": 0, "prismops.errors": 0,
    "prismops.schemas": 1,
    "prismops.streams": 2,
    "prismops.detectors": 3,
    "prismops.finops": 4,
    "prismops.agents": 5, "prismops.sinks": 5, "prismops.collectors": 5, "prismops.gateway_grpc": 5, "prismops.gateway_http": 5, "prismops.infra": 5,
    "prismops.testing": 6, "prismops.chaos": 6, "prismops.ui": 6,
    "prismops.cli": 7, "prismops.__main__": 8,
}
DOMAIN_CORE_FORBIDDEN = ("faust", "confluent_kafka", "aiokafka", "grpc", "clickhouse_driver")


def installed_modules() -> dict[str, Path]:
    """Installed module name -> source file, for every .py file of every mapped folder."""
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules: dict[str, Path] = {}
    for package, folder in package_dir.items():
        root = REPO / folder
        for path in root.rglob("*.py"):
            relative = path.relative_to(root).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            name = ".".join([package, *parts])
            # a mapped sub-folder (e.g. streams/ under prismops.streams) is owned by its own mapping
            if package == "prismops" and parts and f"prismops.{parts[0]}" in package_dir:
                continue
            modules[name] = path
    return modules


MODULES = installed_modules()


def imports_of(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def layer_of(module: str) -> tuple[str, int]:
    for length in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:length])
        if prefix in LAYERS:
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_imports_only_go_down_the_layers():
    upward = []
    for module, targets in GRAPH.items():
        package, rank = layer_of(module)
        for target in targets:
            target_package, target_rank = layer_of(target)
            if target_package != package and target_rank >= rank:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that run upward or sideways:\n" + "\n".join(sorted(upward))


def test_nothing_outside_the_cli_imports_the_cli():
    offenders = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if layer_of(module)[0] not in ("prismops.cli", "prismops.__main__")
        for target in targets
        if target == "prismops.cli" or target.startswith("prismops.cli.")
    ]
    assert not offenders, offenders


def test_there_is_no_import_circle():
    """Tarjan's strongly connected components: any component of two or more modules is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in GRAPH:
        if node not in index:
            visit(node)
    assert not circles, circles


def test_the_graph_sees_the_imports_it_should():
    """Guards the test itself: a known downward import and a known sibling import are in the graph."""
    assert "prismops.finops.pricing" in GRAPH["prismops.finops.llm_usage"]
    assert "prismops.agents.context" in GRAPH["prismops.agents.llm_agents"]
    assert "prismops.settings" in GRAPH["prismops.streams.topics"]


@pytest.mark.parametrize("forbidden", DOMAIN_CORE_FORBIDDEN)
def test_the_domain_core_imports_no_client_library(forbidden: str):
    """Importing every module of prismops.finops loads no Faust, Kafka, gRPC or ClickHouse client, even
    transitively (checked in a fresh interpreter, where nothing else has loaded them)."""
    core = sorted(m for m in MODULES if m == "prismops.finops" or m.startswith("prismops.finops."))
    script = (
        "import importlib, sys\n"
        f"for name in {core!r}:\n    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m == {forbidden!r} or m.startswith({forbidden + '.'!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", check=True)
    assert result.stdout.strip() == "[]", f"the domain core loads {forbidden}: {result.stdout.strip()}"
