"""The README's scoring examples work as written against `labelwatch serve` with no arguments.

No grpcurl here: the test does what grpcurl does with the README's command, against the default
server (the embedded debtags text model). It reads the request type from the server's reflection,
parses the README's JSON body into it, and calls the method the command names.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
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
from support_server import ServerProcess, _env, server_process

README = Path(__file__).resolve().parent.parent / "README.md"
README_TARGET = "127.0.0.1:50051"


def _blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.M | re.S)


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


def test_readme_python_client_example_runs_against_the_default_server(
    default_server: ServerProcess,
) -> None:
    [snippet] = [b for b in _blocks("python") if "LabelwatchClient(" in b and "score(" in b]
    assert README_TARGET in snippet
    done = subprocess.run(
        [sys.executable, "-c", snippet.replace(README_TARGET, default_server.target)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    quality = float(done.stdout.split()[0])
    assert 0.0 <= quality <= 1.0
