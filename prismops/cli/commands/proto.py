"""`prismops proto`: regenerate the gRPC stubs of routing.v1 from its .proto."""

from __future__ import annotations

import click
from rich.markup import escape

from prismops.cli.output import FORMAT_OPTION, emit, fail


@click.command(name="proto")
@FORMAT_OPTION
def command(fmt: str) -> None:
    """Generate routing_pb2.py, routing_pb2_grpc.py and routing_pb2.pyi next to routing.proto."""
    from prismops.gateway_grpc import codegen

    try:
        written = codegen.generate()
    except codegen.CodegenError as error:
        fail(escape(str(error)))
    rows = [{"file": str(path.relative_to(codegen.SOURCE_DIR.parent)), "bytes": path.stat().st_size} for path in written]
    emit(rows, fmt, title="generated stubs", columns=["file", "bytes"])
