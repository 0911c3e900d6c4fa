"""`prismops ui build`: npm ci into the cache (never the source tree), once per lockfile; clear errors without npm."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from prismops.cli.app import main
from prismops.settings import load_settings
from prismops.ui import assets


def fake_npm(tmp_path: Path, *, fails: bool = False) -> Path:
    script = tmp_path / "npm"
    body = "echo 'npm ERR! registry unreachable' >&2; exit 1" if fails else (
        'test -f package-lock.json || exit 3\n'
        'mkdir -p node_modules/chart.js/dist && echo "/* Chart */" > node_modules/chart.js/dist/chart.umd.js\n'
        'echo ran >> "$(dirname "$0")/calls"')
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_build_installs_into_the_cache_once_per_lockfile(tmp_path: Path) -> None:
    settings = load_settings().with_overrides(stack={"home": str(tmp_path / "home"), "cache_dir": None})
    assert assets.chart_library(settings) is None
    npm = fake_npm(tmp_path)
    path = assets.build(settings, npm=str(npm))
    assert path.read_text().startswith("/* Chart */")
    assert path.is_relative_to(tmp_path / "home" / "cache" / "ui-assets")
    assert assets.build(settings, npm=str(npm)) == path
    assert (tmp_path / "calls").read_text().count("ran") == 1
    assert not (assets.HERE / "node_modules").exists()


def test_a_failed_npm_says_so(tmp_path: Path) -> None:
    settings = load_settings().with_overrides(stack={"home": str(tmp_path / "home"), "cache_dir": None})
    with pytest.raises(assets.AssetError, match="registry unreachable"):
        assets.build(settings, npm=str(fake_npm(tmp_path, fails=True)))
    assert assets.chart_library(settings) is None


def test_ui_without_the_library_and_no_build_fails_clearly(tmp_path: Path) -> None:
    settings = load_settings().with_overrides(stack={"home": str(tmp_path / "home"), "cache_dir": None})
    result = CliRunner().invoke(main, ["ui", "--no-build", "--port", "0"], obj=settings)
    assert result.exit_code != 0 and "prismops ui build" in result.output


def test_the_lockfile_pins_the_chart_library() -> None:
    import json

    lock = json.loads((assets.HERE / "package-lock.json").read_text())
    manifest = json.loads((assets.HERE / "package.json").read_text())
    pinned = manifest["dependencies"]["chart.js"]
    assert lock["packages"]["node_modules/chart.js"]["version"] == pinned
    assert lock["packages"]["node_modules/chart.js"]["integrity"].startswith("sha512-")
