"""Build hook: every wheel, sdist and editable install gets gRPC stubs generated from routing.proto.

Everything else about the package is in pyproject.toml. The generator is `gateway_grpc/codegen.py`, loaded
by path because the package is not importable while it is being built.
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent


def _codegen():
    spec = importlib.util.spec_from_file_location("prismops_codegen", ROOT / "gateway_grpc" / "codegen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithStubs(build_py):
    """Generates the stubs beside the .proto in an editable install, into the build folder otherwise."""

    def run(self):
        codegen = _codegen()
        if self.editable_mode:
            codegen.ensure_stubs()
        super().run()
        if not self.editable_mode:
            codegen.generate(Path(self.build_lib) / "prismops" / "gateway_grpc")

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        package_dir = Path(self.build_lib) / "prismops" / "gateway_grpc"
        return outputs + [str(path) for path in _codegen().generated_files(package_dir)]


class SdistWithStubs(sdist):
    """An sdist carries the generated stubs too, so it is usable without running the generator."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        _codegen().generate(Path(base_dir) / "gateway_grpc")


setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithStubs})
