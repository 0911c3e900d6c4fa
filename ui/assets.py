"""The chart library of the page: Chart.js from npm, pinned by package.json and package-lock.json (beside this
module), installed with `npm ci` into a cache folder (never into the source tree) and served from there.

The folder is <stack cache dir>/ui-assets/<first 12 hex of the lockfile's sha256>, so a changed lockfile installs
afresh and an unchanged one is never installed twice. `prismops ui build` runs it; `prismops ui` runs it when the
library is missing.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from prismops.settings import Settings

HERE = Path(__file__).resolve().parent
MANIFESTS = ("package.json", "package-lock.json")
CHART_JS = Path("node_modules") / "chart.js" / "dist" / "chart.umd.js"
NPM_TIMEOUT_S = 300


class AssetError(RuntimeError):
    """The chart library could not be installed (no npm, no registry)."""


def cache_root(settings: Settings) -> Path:
    base = settings.stack.cache_dir or settings.stack.home / "cache"
    return Path(base) / "ui-assets"


def asset_dir(settings: Settings) -> Path:
    digest = hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()[:12]
    return cache_root(settings) / digest


def chart_library(settings: Settings) -> Path | None:
    """The installed chart.umd.js, or None when `prismops ui build` has not run for this lockfile."""
    path = asset_dir(settings) / CHART_JS
    return path if path.is_file() else None


def build(settings: Settings, *, npm: str | None = None) -> Path:
    """Install the pinned chart library with `npm ci` (exactly the lockfile) and return chart.umd.js."""
    found = chart_library(settings)
    if found:
        return found
    npm = npm or shutil.which("npm")
    if not npm:
        raise AssetError("`npm` not found: install Node.js and npm (Debian: apt-get install -y npm), "
                         "then run `prismops ui build`")
    target = asset_dir(settings)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in MANIFESTS:
        shutil.copyfile(HERE / name, staging / name)
    try:
        result = subprocess.run(
            [npm, "ci", "--omit=dev", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=staging, capture_output=True, text=True, timeout=NPM_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise AssetError(f"`npm ci` did not finish within {NPM_TIMEOUT_S} s (is the npm registry reachable?)") from None
    if result.returncode != 0 or not (staging / CHART_JS).is_file():
        raise AssetError(f"`npm ci` failed in {staging}:\n{(result.stdout + result.stderr)[-2000:]}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target / CHART_JS
