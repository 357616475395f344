"""Build-time generated code matches proto/, and the client stands without server deps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from grpc_tools import protoc

import labelwatch_proto.labelwatch.v1.labelwatch_pb2 as installed_pb2

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "proto" / "labelwatch_proto" / "labelwatch" / "v1" / "labelwatch.proto"


def test_installed_generated_code_matches_the_proto_in_the_tree(tmp_path: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        ["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={tmp_path}", str(PROTO)]
    )
    assert code == 0
    fresh = tmp_path / "labelwatch_proto" / "labelwatch" / "v1" / "labelwatch_pb2.py"
    installed = Path(installed_pb2.__file__)
    assert fresh.read_text() == installed.read_text(), (
        "generated code is stale: reinstall the package (make install-test)"
    )


def test_generated_modules_are_not_committed() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*_pb2*.py", "*_pb2*.pyi"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if tracked.returncode != 0:  # not a git checkout (e.g. an sdist): nothing to check
        return
    assert tracked.stdout.strip() == ""


def test_client_imports_without_server_dependencies() -> None:
    blocked = ["numpy", "onnxruntime", "prometheus_client", "labelwatch"]
    script = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import labelwatch_client\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
