"""Command-line tools the stack's users reach for, built from source into the cache on first use.

grpcurl is how people outside Python poke a gRPC service; the tests use it to prove the router can be listed
and called through server reflection alone. It is built with the machine's Go toolchain from the Go module
proxy into `<cache>/bin` (nothing is committed, nothing installed system-wide).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from prismops.infra.config import StackPaths
from prismops.settings import Settings

GRPCURL_MODULE = "github.com/fullstorydev/grpcurl/cmd/grpcurl"
GRPCURL_VERSION = "v1.9.3"
BUILD_TIMEOUT_S = 900


class ToolError(RuntimeError):
    """A tool cannot be found or built; the message says what to install."""


def tools_dir(settings: Settings) -> Path:
    return StackPaths.from_settings(settings.stack).maven_repo.parent / "bin"


def ensure_grpcurl(settings: Settings) -> Path:
    """The grpcurl binary in the cache, built with `go install` when missing."""
    target = tools_dir(settings) / "grpcurl"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = shutil.which("go") or next((p for p in ("/usr/local/go/bin/go",) if Path(p).is_file()), None)
    if go is None:
        raise ToolError("grpcurl is not built yet and Go is not installed; install Go (golang-go) or grpcurl itself")
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(target.parent), "CGO_ENABLED": "0",
           "GOPATH": str(target.parent.parent / "go"), "GOFLAGS": "-modcacherw"}
    try:
        subprocess.run(
            [go, "install", f"{GRPCURL_MODULE}@{GRPCURL_VERSION}"], env=env, check=True, capture_output=True,
            text=True, timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.CalledProcessError as exc:
        raise ToolError(f"`go install {GRPCURL_MODULE}@{GRPCURL_VERSION}` failed: {exc.stderr.strip()[-2000:]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"building grpcurl took longer than {BUILD_TIMEOUT_S} s") from exc
    return target
