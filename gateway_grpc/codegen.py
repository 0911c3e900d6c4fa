"""Generates the Python stubs of routing.v1 from its .proto with grpc_tools.protoc.

The stubs (`routing_pb2.py`, `routing_pb2_grpc.py`, `routing_pb2.pyi`) are build outputs, never committed
and never edited by hand: every wheel, sdist and editable install generates them (setup.py calls
`generate`), and `prismops proto` regenerates them in a checkout after a .proto edit.

protoc runs on a copy of the .proto placed at `prismops/gateway_grpc/routing/v1/` inside a temporary
include root, so the generated imports read `prismops.gateway_grpc.routing.v1.routing_pb2` although the
repository keeps the file under `gateway_grpc/`. This module imports nothing of PrismOps: the build loads
it by path before the package exists.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent  # the gateway_grpc folder
PROTO_FILES = ("routing/v1/routing.proto",)  # relative to SOURCE_DIR
IMPORT_PREFIX = Path("prismops/gateway_grpc")  # where the package sits in an installed tree
STUB_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


class CodegenError(RuntimeError):
    """protoc rejected a .proto file or could not write the stubs."""


def stub_paths(proto: str, package_dir: Path = SOURCE_DIR) -> list[Path]:
    stem = (package_dir / proto).with_suffix("")
    return [stem.with_name(stem.name + suffix) for suffix in STUB_SUFFIXES]


def generated_files(package_dir: Path = SOURCE_DIR) -> list[Path]:
    return [path for proto in PROTO_FILES for path in stub_paths(proto, package_dir)]


def stubs_are_current(package_dir: Path = SOURCE_DIR) -> bool:
    """True when every stub exists, is newer than its .proto (a stale stub would hide a proto edit) and was
    generated for the `prismops.` import path (stubs of an older layout import modules that are gone)."""
    for proto in PROTO_FILES:
        proto_mtime = (package_dir / proto).stat().st_mtime
        for stub in stub_paths(proto, package_dir):
            if not stub.is_file() or stub.stat().st_mtime < proto_mtime:
                return False
        message_stub = stub_paths(proto, package_dir)[0]
        if f"# source: {(IMPORT_PREFIX / proto).as_posix()}\n" not in message_stub.read_text():
            return False
    return True


def generate(package_dir: Path = SOURCE_DIR) -> list[Path]:
    """Run protoc on every .proto under `package_dir` (the source folder by default, a build folder's
    `prismops/gateway_grpc` when building) and write the stubs beside it; return the files written."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise CodegenError("grpcio-tools is not installed: pip install 'prismops[dev]'") from None

    well_known_protos = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="prismops-protoc-") as scratch:
        include_root = Path(scratch)
        for proto in PROTO_FILES:
            placed = include_root / IMPORT_PREFIX / proto
            placed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(package_dir / proto, placed)
            args = [
                "grpc_tools.protoc", f"-I{include_root}", f"-I{well_known_protos}",
                f"--python_out={include_root}", f"--grpc_python_out={include_root}", f"--pyi_out={include_root}",
                str(IMPORT_PREFIX / proto),
            ]
            exit_code = protoc.main(args)
            if exit_code != 0:
                raise CodegenError(f"protoc failed on {proto} with exit code {exit_code} (its message is above)")
            for built, target in zip(stub_paths(proto, include_root / IMPORT_PREFIX), stub_paths(proto, package_dir)):
                if not built.is_file():
                    raise CodegenError(f"protoc reported success but did not write {built.name}")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(built, target)
    return generated_files(package_dir)


def ensure_stubs(package_dir: Path = SOURCE_DIR) -> None:
    """Regenerate the stubs when missing or older than the .proto; cheap when they are current."""
    if not stubs_are_current(package_dir):
        generate(package_dir)


def main() -> int:
    try:
        written = generate()
    except CodegenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path.relative_to(SOURCE_DIR.parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
