"""The README works as written: every block, in order, on one machine; and its quotes hold.

``test_readme_runs_top_to_bottom_in_one_shell`` runs the README's ``sh`` and ``python``
blocks in order in one bash shell, as a newcomer following it would, with the services they
start (the server, nats-server, Label Studio when its venv exists). It runs in private
network, mount and PID namespaces (``unshare``): the README's fixed ports (50051, 4222, ...)
and ``/tmp/lw-*`` files cannot meet anything else on the machine, and every process it
started ends with it. A block is marked by an HTML comment on the line before its fence:

* ``<!-- readme-test: skip: REASON -->``: not run, for the reason given;
* ``<!-- readme-test: needs label-studio -->``: run when the Label Studio venv exists
  (``$LABELWATCH_LS_VENV``, linked as ``./ls-venv``), else skipped (a failure under CI);
* ``<!-- readme-test: output -->`` before a ``text`` block: what the block before it prints.

No grpcurl here: the grpcurl tests do what grpcurl does with the README's command, against
the default server (the embedded debtags text model). They read the request type from the
server's reflection, parse the README's JSON body into it, and call the method the command
names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_delivery import LS_VENV, in_ci, missing_dependency
from support_server import ServerProcess, server_process

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_TARGET = "127.0.0.1:50051"


def _blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``, in order."""
    return [b.code for b in readme_blocks(README.read_text()) if b.language == language]


def _grpcurl_command() -> str:
    commands = [block for block in _blocks("sh") if block.lstrip().startswith("grpcurl ")]
    assert len(commands) == 1, "expected one grpcurl example in the README"
    return commands[0]


@pytest.fixture(scope="module")
def default_server() -> Iterator[ServerProcess]:
    with server_process([]) as proc:  # no --model/--thresholds: the embedded default
        yield proc


def test_readme_grpcurl_command_is_plaintext_against_the_quickstart_address() -> None:
    command = _grpcurl_command()
    assert command.split()[:2] == ["grpcurl", "-plaintext"]
    assert command.split()[-2:] == [README_TARGET, "labelwatch.v1.LabelQuality/Score"]
    match = re.search(r"-d '([^']*)'", command)
    assert match is not None, "the request body must be given inline with -d '...'"
    json.loads(match.group(1))


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _call_like_grpcurl(target: str, command: str) -> dict[str, Any]:
    """Resolve ``SERVICE/METHOD`` and its types by reflection, send ``-d``'s JSON, return JSON."""
    body = re.search(r"-d '([^']*)'", command)
    assert body is not None
    service, method_name = command.split()[-1].split("/")
    with grpc.insecure_channel(target) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(service).FindMethodByName(method_name)
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(body.group(1), request_type())
        call = channel.unary_unary(
            f"/{service}/{method_name}",
            request_serializer=_serialize,
            response_deserializer=response_type.FromString,
        )
        response = call(request, timeout=30)
    return json_format.MessageToDict(response)


def test_readme_grpcurl_request_scores_on_the_default_server(
    default_server: ServerProcess,
) -> None:
    command = _grpcurl_command()
    reply = _call_like_grpcurl(default_server.target, command)
    [result] = reply["results"]
    # what the README says the reply holds
    issues = {(issue["kind"], issue["label"]) for issue in result["issues"]}
    assert issues == {("ISSUE_KIND_SPURIOUS", "game::arcade")}
    [issue] = result["issues"]
    assert issue["errorProbability"] == 0.999  # the calibrator's cap, as the README says
    assert result["labelQuality"] == pytest.approx(0.03, abs=0.005)
    assert result["isIssue"] is True


def test_readme_grpcurl_body_is_a_valid_score_request_for_the_default_model(
    default_server: ServerProcess,
) -> None:
    body = re.search(r"-d '([^']*)'", _grpcurl_command())
    assert body is not None
    request = json_format.Parse(body.group(1), pb.ScoreRequest())
    with grpc.insecure_channel(default_server.target) as channel:
        stub = pb_grpc.LabelQualityStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        assert info.input_kind == pb.INPUT_KIND_TEXT
        for example in request.examples:
            assert example.WhichOneof("input") == "text"
            assert set(example.labels) <= set(info.class_names)
        response = stub.Score(request, timeout=30)
    assert [r.id for r in response.results] == [e.id for e in request.examples]


# --- the README's quotes ------------------------------------------------------------------------


def test_readme_error_example_is_what_the_server_says(default_server: ServerProcess) -> None:
    quoted = re.search(
        r"e\.g\.\s+`(example 'x3': field 'probabilities\[1\]': [^`]*)`", README.read_text()
    )
    assert quoted is not None, "the Errors section quotes an out-of-range probability"
    with grpc.insecure_channel(default_server.target) as channel:
        stub = pb_grpc.LabelQualityStub(channel)
        n = len(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).class_names)
        values = [0.5] * n
        values[1] = 1.5
        example = pb.Example(id="x3", probabilities=pb.Probabilities(values=values))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Score(pb.ScoreRequest(examples=[example]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == quoted.group(1)


# --- the whole README, in order ------------------------------------------------------------------

MARKER = re.compile(r"^<!-- readme-test: (skip|needs label-studio|output)(?::\s*(.*?))?\s*-->$")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced block of the README: ``line`` (1-based, of its fence), ``language``, ``code``,
    the ``marker`` before it (``None``, ``skip``, ``needs label-studio``, ``output``), the
    marker's ``reason``, and the ``output`` the README shows for it (the next ``text`` block
    marked ``output``)."""

    line: int
    language: str
    code: str
    marker: str | None
    reason: str | None
    output: str | None = None


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of ``text``, in order, with its marker and shown output."""
    lines = text.splitlines()
    blocks: list[Block] = []
    marker: tuple[str, str | None] | None = None
    i = 0
    while i < len(lines):
        found = MARKER.match(lines[i].strip())
        fence = FENCE.match(lines[i])
        if found:
            marker = (found.group(1), found.group(2))
        elif fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            code = "\n".join(lines[i + 1 : end]) + "\n"
            kind, reason = marker if marker else (None, None)
            if kind == "output":
                runnable = [b for b in blocks if b.language in ("sh", "python")]
                assert runnable, f"README line {i + 1}: output marker before any code"
                last = runnable[-1]
                blocks[blocks.index(last)] = Block(
                    last.line, last.language, last.code, last.marker, last.reason, code
                )
            else:
                blocks.append(Block(i + 1, fence.group(1), code, kind, reason))
            marker = None
            i = end
        elif lines[i].strip():
            marker = None  # a marker applies to the fence right after it only
        i += 1
    return blocks


def _runnable(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.language in ("sh", "python")]


def test_every_readme_block_that_is_not_run_says_why() -> None:
    blocks = _runnable(readme_blocks(README.read_text()))
    assert len(blocks) >= 15
    for block in blocks:
        if block.marker == "skip":
            assert block.reason and len(block.reason) > 20, f"README line {block.line}: no reason"
    skipped = [b for b in blocks if b.marker == "skip"]
    assert len(skipped) <= 4, [b.line for b in skipped]
    # no job control: it works only in an interactive shell
    for block in blocks:
        assert not re.search(r"%\d", block.code), f"README line {block.line}: uses kill %N"


def _script(blocks: list[Block], state: Path, with_label_studio: bool) -> str:
    """One bash script that runs ``blocks`` in order, each one's stdout/stderr to ``state``."""
    parts = ["set -o pipefail", "trap 'tail -n 40 /tmp/lw-*.log > \"$LW_STATE/logs\" 2>&1' EXIT"]
    for n, block in enumerate(blocks):
        if block.marker == "skip" or (
            block.marker == "needs label-studio" and not with_label_studio
        ):
            continue
        code = block.code
        if block.language == "python":
            code = f".venv/bin/python - <<'LW_README_PY'\n{code}LW_README_PY\n"
        parts.append(f'echo {n} > "$LW_STATE/current"')
        parts.append(f'{{ set -e\n{code}set +e; }} > "$LW_STATE/{n}.out" 2> "$LW_STATE/{n}.err"')
        parts.append(f'echo {n} >> "$LW_STATE/done"')
    # the README's stop commands work: nothing it started is left running (drains take a while)
    parts.append(
        "for _ in $(seq 300); do\n"
        f"    pgrep -af '{LEFTOVERS}' > \"$LW_STATE/left\" || break\n"
        "    sleep 0.2\n"
        "done"
    )
    return "\n".join(parts) + "\n"


LEFTOVERS = "labelwatch (serve|consume)|nats-server|label-studio start"
"""What the README starts in the background and must stop again."""


NAMESPACE_SETUP = r"""
set -e
ip link set lo up
# a private /tmp: a fresh tmpfs, with the paths the run needs from the real /tmp bound into it
mount -t tmpfs -o mode=1777 tmpfs "$LW_STAGE"
for keep in $LW_KEEP; do
    mkdir -p "$LW_STAGE/${keep#/tmp/}"
    mount --bind "$keep" "$LW_STAGE/${keep#/tmp/}"
done
mount --rbind "$LW_STAGE" /tmp
mkdir -p "$LW_ROOT" && cd "$LW_ROOT"
for entry in "$LW_REPO"/* "$LW_REPO"/.ci; do
    case "$(basename "$entry")" in .venv|labelwatch-data) continue;; esac
    ln -s "$entry" .
done
ln -s "$LW_VENV" .venv
if [ -n "$LW_LS_VENV" ]; then ln -s "$LW_LS_VENV" ls-venv; fi
export HOME="$LW_ROOT" PATH="$PATH:/usr/sbin:/sbin"
set +e
exec bash "$LW_STATE/readme.sh"
"""


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_runs_top_to_bottom_in_one_shell(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or not shutil.which("ip"):
        missing_dependency("unshare and ip (util-linux, iproute2) are needed to run the README")
    blocks = _runnable(readme_blocks(README.read_text()))
    ls_venv = LS_VENV if (LS_VENV / "bin" / "label-studio").exists() else None
    needs_ls = [b for b in blocks if b.marker == "needs label-studio"]
    if needs_ls and ls_venv is None and in_ci():
        pytest.fail(f"Label Studio venv not found at {LS_VENV} (CI=true: it must be installed)")
    state, stage = tmp_path / "state", tmp_path / "stage"
    state.mkdir()
    stage.mkdir()
    (state / "readme.sh").write_text(_script(blocks, state, ls_venv is not None))
    (state / "setup.sh").write_text(NAMESPACE_SETUP)
    venv = Path(sys.prefix)
    keep = {p for p in (REPO, venv, ls_venv, state) if p is not None and _under_tmp(p)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELWATCH_")}
    env.update(
        LW_STATE=str(state), LW_STAGE=str(stage), LW_ROOT="/tmp/readme",
        LW_KEEP=" ".join(str(p) for p in sorted(keep)), LW_REPO=str(REPO), LW_VENV=str(venv),
        LW_LS_VENV=str(ls_venv or ""),
    )  # fmt: skip
    prefix = [unshare] + (["--map-root-user"] if os.geteuid() != 0 else [])
    command = [*prefix, "--net", "--mount", "--pid", "--fork", "--mount-proc"]
    done = subprocess.run(
        [*command, "bash", str(state / "setup.sh")],
        capture_output=True, text=True, env=env, timeout=1700, check=False,
    )  # fmt: skip
    ran = [int(n) for n in _read(state / "done").split()]
    expected = [
        n for n, b in enumerate(blocks)
        if b.marker != "skip" and (b.marker != "needs label-studio" or ls_venv is not None)
    ]  # fmt: skip
    if ran != expected:
        current = int(_read(state / "current") or -1)
        block = blocks[current] if current >= 0 else None
        where = f"README line {block.line}:\n{block.code}" if block else "before the first block"
        pytest.fail(
            f"the README stopped at {where}\nstdout:\n{_read(state / f'{current}.out')}\n"
            f"stderr:\n{_read(state / f'{current}.err')}\nserver logs:\n{_read(state / 'logs')}"
            f"\nrunner: {done.returncode}\n{done.stderr[-3000:]}"
        )
    left = _read(state / "left").strip()
    assert not left, f"the README leaves these running after its last block:\n{left}"
    differ = []  # every block whose shown output is stale, with what it printed instead
    for n in expected:
        block = blocks[n]
        if block.output is not None:
            shown = [line.rstrip() for line in block.output.strip().splitlines()]
            printed = [line.rstrip() for line in _read(state / f"{n}.out").strip().splitlines()]
            if printed != shown:
                differ.append(f"README line {block.line} now prints:\n" + "\n".join(printed))
    assert not differ, "the output the README shows differs:\n\n" + "\n\n".join(differ)
    if ls_venv is None and needs_ls:
        pytest.skip(
            f"ran every README block but the {len(needs_ls)} Label Studio ones: "
            f"no Label Studio venv at {LS_VENV} (scripts/ci_delivery_deps.sh)"
        )


def _under_tmp(path: Path) -> bool:
    return Path("/tmp") in path.resolve().parents


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_every_picture_and_local_link_in_the_readme_exists() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)[^)]*\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert any(t.endswith(".png") for t in local)
    for target in local:
        assert (REPO / target).exists(), target
