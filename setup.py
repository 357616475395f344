"""Build hook: generate the gRPC/protobuf Python modules from proto/ at build time.

The generated modules (package ``labelwatch_proto``) are written into the build
directory only; they are never committed. ``proto/`` is the include root, so the
modules are named ``labelwatch_proto.labelwatch.v1.labelwatch_pb2`` and cannot
collide with the ``labelwatch`` package.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"


def _plugin(name: str) -> str:
    """Locate a protoc plugin script installed beside the build's Python."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.exists():
        return str(candidate)
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    raise RuntimeError(f"protoc plugin {name!r} not found; install mypy-protobuf")


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto under proto/ into ``out_dir``; return the files written."""
    from grpc_tools import protoc  # build-time dependency only

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(str(p) for p in protos))
    written: list[Path] = []
    for proto in protos:
        package_dir = out_dir / proto.parent.relative_to(PROTO_ROOT)
        # every directory from the top package down needs an __init__.py
        rel_parts = package_dir.relative_to(out_dir).parts
        for depth in range(1, len(rel_parts) + 1):
            init = out_dir.joinpath(*rel_parts[:depth], "__init__.py")
            if not init.exists():
                init.write_text('"""Generated from proto/ at build time."""\n')
            written.append(init)
        written.extend(package_dir.glob("*_pb2*.py*"))
        shutil.copy2(proto, package_dir / proto.name)
    top = out_dir / "labelwatch_proto"
    (top / "py.typed").write_text("")
    return written


class BuildPyWithProtos(build_py):
    """``build_py`` that also emits the generated ``labelwatch_proto`` package."""

    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "gen":
    # python setup.py gen OUT_DIR: generate into a directory (for development/CI drift checks)
    generate(Path(sys.argv[2]))
    raise SystemExit(0)

setup(cmdclass={"build_py": BuildPyWithProtos})
