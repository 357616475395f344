"""Build hook: generate the gRPC/protobuf Python modules from proto/ at build time.

The generated modules (package ``labelwatch_proto``) are never committed:

* a wheel (``pip install .``) gets them written into its build directory;
* an editable install (``pip install -e .``) writes them in place, beside the ``.proto``
  files in ``proto/labelwatch_proto/`` (git-ignored), which is where the editable
  ``labelwatch_proto`` package points, so the suite runs against the working tree.

``proto/`` is the include root, so the modules are named
``labelwatch_proto.labelwatch.v1.labelwatch_pb2`` and cannot collide with the ``labelwatch``
package. The generator versions are pinned in pyproject.toml ``[build-system]``: the
protobuf/grpcio versions they stamp into the code must not exceed the floors the package
declares (tests/test_packaging.py installs the wheel with those floors to prove it).
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
PROTO_PACKAGE = "labelwatch_proto"
#: file name endings of everything protoc and its plugins write for one ``.proto``
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
_INIT_TEXT = '"""Generated from proto/ at build time."""\n'


def _plugin(name: str) -> str:
    """Locate a protoc plugin script of the build environment (PATH first, as pip sets it)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (folder / name).exists():
            return str(folder / name)
    raise RuntimeError(f"protoc plugin {name!r} not found; install mypy-protobuf")


def proto_files() -> list[Path]:
    """Every ``.proto`` of the contract, sorted: the sources under ``proto/labelwatch_proto``."""
    return sorted((PROTO_ROOT / PROTO_PACKAGE).rglob("*.proto"))


def _remove_generated(package_root: Path) -> None:
    """Delete generated modules under ``package_root`` (a removed .proto leaves none behind)."""
    if not package_root.is_dir():
        return
    for path in package_root.rglob("*"):
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES):
            path.unlink()


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto under proto/ into ``out_dir``; return the files written.

    ``out_dir`` receives ``labelwatch_proto/...``: for each ``.proto`` its ``_pb2.py``,
    ``_pb2_grpc.py`` and their ``.pyi`` stubs, plus ``__init__.py`` files, ``py.typed`` and a
    copy of the ``.proto``. ``out_dir`` may be ``proto/`` itself (the editable install).
    """
    from grpc_tools import protoc  # build-time dependency only

    protos = proto_files()
    include = Path(protoc.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_generated(out_dir / PROTO_PACKAGE)
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
                init.write_text(_INIT_TEXT)
            written.append(init)
        stem = proto.name.removesuffix(".proto")
        written.extend(package_dir / (stem + suffix) for suffix in GENERATED_SUFFIXES)
        copy = package_dir / proto.name
        if copy.resolve() != proto.resolve():
            shutil.copy2(proto, copy)
    typed = out_dir / PROTO_PACKAGE / "py.typed"
    typed.write_text("")
    written.append(typed)
    missing = [str(p) for p in written if not p.is_file()]
    if missing:
        raise RuntimeError("protoc did not write " + ", ".join(missing))
    return sorted(set(written))


class BuildPyWithProtos(build_py):
    """``build_py`` that also emits the generated ``labelwatch_proto`` package.

    In editable mode the modules go into the source tree (``proto/``), which the editable
    install maps ``labelwatch_proto`` to; otherwise into the build directory.
    """

    def run(self) -> None:
        super().run()
        generate(PROTO_ROOT if self.editable_mode else Path(self.build_lib))


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "gen":
    # python setup.py gen OUT_DIR: generate into a directory (for development/CI drift checks)
    generate(Path(sys.argv[2]))
    raise SystemExit(0)

setup(cmdclass={"build_py": BuildPyWithProtos})
