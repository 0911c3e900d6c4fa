"""pyproject lists packages explicitly (the package-dir mapping needs it): every folder must be listed."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def folder_packages() -> set[str]:
    found = set()
    for package, folder in CONFIG["package-dir"].items():
        root = REPO / folder
        for directory in [root, *(d for d in root.rglob("*") if d.is_dir())]:
            relative = directory.relative_to(root)
            if "__pycache__" in relative.parts:
                continue
            if package == "prismops" and relative.parts and f"prismops.{relative.parts[0]}" in CONFIG["package-dir"]:
                continue
            found.add(".".join([package, *relative.parts]))
    return found


def test_every_folder_of_the_tree_is_a_listed_package():
    assert folder_packages() == set(CONFIG["packages"])


def test_only_the_prismops_namespace_is_mapped():
    assert all(name == "prismops" or name.startswith("prismops.") for name in CONFIG["package-dir"])
