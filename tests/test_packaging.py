"""Packaging: generated code matches proto/, the wheel works with the declared minimum versions,
and the client stands without server dependencies.

The generated modules (``labelwatch_proto``) come from the build (setup.py), with the generator
versions pinned in pyproject.toml ``[build-system]``. Two drift checks:

* fast: every ``.proto`` regenerated here with this venv's tools gives the same descriptor,
  the same service interface and the same type stubs as the code this suite imports;
* slow: a wheel built with the pinned generators holds byte-for-byte the code this suite imports
  (the editable tree, or the installed copy), and installs and talks to a real server in a fresh
  venv that has exactly the protobuf and grpcio floors of ``[project] dependencies``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import labelwatch_proto
from support_server import CLASS_NAMES, running_server, target_of, write_artifact

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROTO_ROOT = REPO / "proto"
PROTOS = sorted((PROTO_ROOT / "labelwatch_proto").rglob("*.proto"))
KINDS = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
IMPORTED_ROOT = Path(labelwatch_proto.__file__).resolve().parent.parent
"""Where the ``labelwatch_proto`` this suite imports lives (``proto/`` when editable)."""


def _generated_names() -> list[str]:
    """Paths (relative to the package root's parent) of every module the build generates."""
    names = []
    for proto in PROTOS:
        stem = proto.relative_to(PROTO_ROOT).with_suffix("").as_posix()
        names.extend(stem + kind for kind in KINDS)
    return names


def _floors() -> dict[str, Version]:
    """Lowest version of each ``[project] dependencies`` entry, from its ``>=`` bound."""
    floors: dict[str, Version] = {}
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
        assert lows, f"dependency {line!r} declares no minimum version"
        floors[req.name] = max(lows)
    return floors


def _build_requirement(name: str) -> Requirement:
    [req] = [Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith(name)]
    return req


# --- fast drift check ----------------------------------------------------------------------------


def _serialized_descriptor(source: str) -> bytes:
    """The FileDescriptorProto bytes a ``_pb2.py`` registers (version-independent content)."""
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
        ):
            [arg] = node.args
            assert isinstance(arg, ast.Constant) and isinstance(arg.value, bytes)
            return arg.value
    raise AssertionError("no AddSerializedFile(...) in generated module")


def _grpc_interface(source: str) -> list[str]:
    """What a ``_pb2_grpc.py`` offers, free of its generator's version and formatting.

    Class names with their methods, top-level functions, method paths (``/pkg.Service/Rpc``),
    call kinds (``unary_stream``, ...) and the message types they (de)serialize.
    """
    items: list[str] = []
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = [n.name for n in node.body if isinstance(n, ast.FunctionDef)]
            items.append(f"class {node.name}: {', '.join(methods)}")
        elif isinstance(node, ast.FunctionDef):
            items.append(f"def {node.name}")
    call_kinds = {"unary_unary", "unary_stream", "stream_unary", "stream_stream"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"/[\w.]+/\w+", node.value):
                items.append(f"path {node.value}")
        elif isinstance(node, ast.Attribute):
            if node.attr in call_kinds or node.attr.endswith("_rpc_method_handler"):
                items.append(f"call {node.attr}")
            elif node.attr in ("SerializeToString", "FromString"):
                items.append(f"codec {ast.unparse(node)}")
    return sorted(items)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every .proto compiled now, by setup.py's generator with this venv's tools."""
    out = tmp_path_factory.mktemp("regenerated")
    done = subprocess.run(
        [sys.executable, str(REPO / "setup.py"), "gen", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_every_proto_is_compiled_into_all_four_kinds_of_module() -> None:
    assert {"flags.proto", "labelwatch.proto"} <= {p.name for p in PROTOS}  # found them all
    package = IMPORTED_ROOT / "labelwatch_proto"
    present = sorted(
        p.relative_to(IMPORTED_ROOT).as_posix()
        for p in package.rglob("*")
        if p.name.endswith(KINDS)
    )
    assert present == sorted(_generated_names()), (
        "generated modules do not match proto/: reinstall (make install-test)"
    )


@pytest.mark.parametrize("name", _generated_names())
def test_generated_module_matches_its_proto(name: str, regenerated: Path) -> None:
    fresh = (regenerated / name).read_text()
    used = (IMPORTED_ROOT / name).read_text()
    stale = f"{name} is stale against proto/: reinstall (make install-test)"
    if name.endswith("_pb2.py"):
        assert _serialized_descriptor(used) == _serialized_descriptor(fresh), stale
    elif name.endswith("_pb2_grpc.py"):
        assert _grpc_interface(used) == _grpc_interface(fresh), stale
        assert _grpc_interface(used), "found no service in the generated gRPC module"
    else:  # mypy-protobuf stubs: the same pinned version here and in the build
        assert used == fresh, stale


def test_generator_pins_stamp_no_newer_runtime_than_the_declared_floors() -> None:
    floors = _floors()
    for name in _generated_names():
        text = (IMPORTED_ROOT / name).read_text()
        if name.endswith("_pb2.py"):
            [stamp] = re.findall(r"# Protobuf Python Version: (\S+)", text)
            assert Version(stamp) <= floors["protobuf"], (name, stamp)
        elif name.endswith("_pb2_grpc.py"):
            [stamp] = re.findall(r"GRPC_GENERATED_VERSION = '([^']+)'", text)
            assert Version(stamp) <= floors["grpcio"], (name, stamp)


def test_generators_are_pinned_and_the_stub_generator_matches_the_test_extra() -> None:
    for name in ("grpcio-tools", "mypy-protobuf"):
        [spec] = _build_requirement(name).specifier
        assert spec.operator == "==", f"[build-system] must pin {name} exactly"
    in_test_extra = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]]
    [stubs] = [r for r in in_test_extra if r.name == "mypy-protobuf"]
    assert stubs.specifier == _build_requirement("mypy-protobuf").specifier


def test_generated_modules_are_not_committed() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*_pb2*.py", "*_pb2*.pyi", "proto/"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if tracked.returncode != 0:  # not a git checkout (e.g. an sdist): nothing to check
        return
    files = tracked.stdout.split()
    assert files, "git listed nothing under proto/"
    assert [f for f in files if not f.endswith(".proto")] == []


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


# --- slow: the built wheel -----------------------------------------------------------------------


def _run(cmd: list[str], *, timeout: float = 600, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip install .`` would build (isolated, with the pinned generators)."""
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(REPO)])
    [built] = out.glob("labelwatch-*.whl")
    return built


@pytest.mark.slow
def test_wheel_holds_exactly_the_generated_code_this_suite_imports(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {n for n in archive.namelist() if n.startswith("labelwatch_proto/")}
        for name in _generated_names():
            assert name in in_wheel
            assert archive.read(name).decode() == (IMPORTED_ROOT / name).read_text(), (
                f"{name} differs from a fresh build: reinstall (make install-test)"
            )
    protos = {p.relative_to(PROTO_ROOT).as_posix() for p in PROTOS}
    assert protos <= in_wheel
    assert "labelwatch_proto/py.typed" in in_wheel


@pytest.mark.slow
def test_wheel_carries_everything_the_demo_needs_and_stays_small(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    for name in ("default_model.onnx", "default_thresholds.json", "debtags_test.jsonl.gz"):
        assert f"labelwatch/data/{name}" in sizes, name
    assert sizes["labelwatch/data/debtags_test.jsonl.gz"] < 1_000_000
    assert wheel.stat().st_size < 12_000_000  # the model is 8.3 MB of it


@pytest.fixture(scope="module")
def minimum_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and exactly the declared floor of every dependency."""
    where = tmp_path_factory.mktemp("min-venv") / "venv"
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    pins = [f"{name}=={version}" for name, version in _floors().items()]
    _run([str(python), "-m", "pip", "install", "--quiet", "--only-binary=:all:", str(wheel), *pins])
    _run([str(python), "-m", "pip", "check"])
    return python


@pytest.fixture(scope="module")
def server_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    artifact = write_artifact(tmp_path_factory.mktemp("art") / "thresholds.json")
    with running_server(thresholds=artifact) as server:
        yield target_of(server)


_MINIMUM_CLIENT = textwrap.dedent(
    """
    import json, sys
    from importlib.metadata import version

    import labelwatch_client
    from labelwatch_client import Example, LabelwatchClient
    from labelwatch_proto.labelwatch.v1 import flags_pb2, flags_pb2_grpc
    from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb, labelwatch_pb2_grpc

    request = pb.ScoreRequest(examples=[pb.Example(id="a", label_indices=[1])])
    assert pb.ScoreRequest.FromString(request.SerializeToString()) == request
    ack = flags_pb2.AckFlagsRequest(consumer="c", up_to=7, flag_ids=["f1"])
    assert flags_pb2.AckFlagsRequest.FromString(ack.SerializeToString()) == ack
    assert flags_pb2_grpc.FlagFeedStub and labelwatch_pb2_grpc.LabelQualityStub
    k = int(sys.argv[2])
    with LabelwatchClient(sys.argv[1]) as client:
        info = client.model_info()
        [result] = client.score([Example("all-missing", probabilities=[0.99] * k)])
    print(json.dumps({
        "protobuf": version("protobuf"),
        "grpcio": version("grpcio"),
        "classes": list(info.class_names),
        "issue": result.is_issue,
        "suggested": sorted(result.suggested_labels),
        "client_from": labelwatch_client.__file__.rsplit("/labelwatch_client/", 1)[0],
    }))
    """
)


@pytest.mark.slow
def test_wheel_works_with_the_declared_minimum_protobuf_and_grpcio(
    minimum_venv: Path, server_target: str
) -> None:
    out = _run(
        [str(minimum_venv), "-c", _MINIMUM_CLIENT, server_target, str(len(CLASS_NAMES))],
        timeout=120,
        cwd=minimum_venv.parent,  # not the repo: import only what the wheel installed
    )
    seen = json.loads(out)
    floors = _floors()
    assert Version(seen["protobuf"]) == floors["protobuf"]
    assert Version(seen["grpcio"]) == floors["grpcio"]
    assert seen["classes"] == list(CLASS_NAMES)
    assert seen["issue"] is True
    assert seen["suggested"] == sorted(CLASS_NAMES)
    assert Path(seen["client_from"]).is_relative_to(minimum_venv.parent.parent)
