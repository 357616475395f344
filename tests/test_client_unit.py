"""labelwatch_client without a server: values, conversions, JSON(L), retry timing, CLI usage."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from labelwatch_client import (
    CalibrationSummary,
    ClassCalibration,
    ClassIssue,
    Example,
    ExampleFormatError,
    InputKind,
    InvalidArgument,
    IssueKind,
    LabelwatchClient,
    LabelwatchError,
    ModelInfo,
    ProtocolMismatch,
    ScoreResult,
    Unavailable,
    convert,
)
from labelwatch_client._transport import (
    MAX_BACKOFF_SECONDS,
    ChannelSettings,
    backoff_delays,
    decode_health_response,
    encode_health_request,
    retry_delay,
)
from labelwatch_client.cli import format_model_info, main
from labelwatch_client.errors import error_for, from_rpc_error
from labelwatch_client.jsonl import JsonlError, parse_examples, result_line
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

ISSUE = ClassIssue("dog", 1, IssueKind.MISSING, 0.93, 0.71)
RESULT = ScoreResult(
    id="a1",
    label_quality=0.41,
    is_issue=True,
    issues=(ISSUE, ClassIssue("cat", 0, IssueKind.SPURIOUS, 0.04, 0.3)),
    suggested_labels=("dog",),
    model_version="m-1",
)
INFO = ModelInfo(
    name="tiny",
    version="tiny-abc",
    sha256="ab" * 32,
    input_kind=InputKind.FEATURES,
    input_shape=(-1, 4),
    class_names=("cat", "dog"),
    calibration=CalibrationSummary(
        schema_version=1,
        calibration_size=400,
        pooling="exponential_moving_average",
        alpha=0.8,
        temperature=0.1,
        filter_by="confident_learning",
        created_at="2025-01-01T00:00:00+00:00",
        classes=(
            ClassCalibration("cat", 0.7, 0.65, 130, 270, 0.0225, 0.045),
            ClassCalibration("dog", 0.69, 0.66, 143, 257, 0.025, 0.0125),
        ),
    ),
    server_version="0.1.0",
)


# --- values --------------------------------------------------------------------------------------


def test_example_stores_sequences_as_tuples_and_copies_metadata() -> None:
    meta = {"k": "v"}
    ex = Example("a", features=[1, 2.5], labels=["cat"], label_indices=[0], metadata=meta)
    assert ex.features == (1.0, 2.5)
    assert ex.labels == ("cat",)
    assert ex.label_indices == (0,)
    meta["k"] = "changed"
    assert ex.metadata == {"k": "v"}


def test_examples_are_hashable_and_compare_by_value() -> None:
    a = Example("a", labels=["cat"], metadata={"k": "v"})
    b = Example("a", labels=("cat",), metadata={"k": "v"})
    assert a == b
    assert len({a, b}) == 1


def test_example_with_two_inputs_is_refused() -> None:
    with pytest.raises(ValueError, match="give one input, not text and probabilities"):
        Example("a", text="x", probabilities=[0.5])


# --- protobuf round trips ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "example",
    [
        Example("t", text="a red car", labels=["red"], annotator_id="ann", metadata={"b": "3"}),
        Example("f", features=[0.5, -1.25, 3.0], label_indices=[0, 2]),  # float32-exact
        Example("p", probabilities=[0.9, 0.1, 0.333], labels=["a"], label_indices=[0]),
        Example("none"),
    ],
    ids=["text", "features", "probabilities", "no-input"],
)
def test_example_survives_a_protobuf_round_trip(example: Example) -> None:
    wire = pb.Example.FromString(convert.example_to_proto(example).SerializeToString())
    assert convert.example_from_proto(wire) == example


def test_example_input_lands_in_the_matching_oneof_field() -> None:
    assert convert.example_to_proto(Example("t", text="")).WhichOneof("input") == "text"
    assert convert.example_to_proto(Example("f", features=[1])).WhichOneof("input") == "features"
    assert convert.example_to_proto(Example("n")).WhichOneof("input") is None


def test_score_request_keeps_order_and_the_probabilities_flag() -> None:
    request = convert.score_request([Example("b"), Example("a")], include_probabilities=True)
    assert [e.id for e in request.examples] == ["b", "a"]
    assert request.include_probabilities


@pytest.mark.parametrize("probabilities", [None, (0.25, 0.5)])
def test_result_survives_a_protobuf_round_trip(probabilities: tuple[float, ...] | None) -> None:
    result = ScoreResult(**{**RESULT.__dict__, "probabilities": probabilities})
    wire = pb.ScoreResult.FromString(convert.result_to_proto(result).SerializeToString())
    assert convert.result_from_proto(wire) == result


def test_issue_kinds_map_to_the_proto_enum() -> None:
    msg = convert.result_to_proto(RESULT)
    assert [i.kind for i in msg.issues] == [pb.ISSUE_KIND_MISSING, pb.ISSUE_KIND_SPURIOUS]


def test_unknown_issue_kind_from_a_newer_server_is_a_protocol_mismatch() -> None:
    msg = pb.ScoreResult(
        id="a", issues=[pb.ClassIssue(label="cat", kind=pb.ISSUE_KIND_UNSPECIFIED)]
    )
    with pytest.raises(ProtocolMismatch, match="upgrade labelwatch-client"):
        convert.result_from_proto(msg)


def test_model_info_survives_a_protobuf_round_trip() -> None:
    wire = pb.ModelInfo.FromString(convert.model_info_to_proto(INFO).SerializeToString())
    assert convert.model_info_from_proto(wire) == INFO


def test_unknown_input_kind_reads_as_unspecified() -> None:
    msg = convert.model_info_to_proto(INFO)
    msg.input_kind = 42  # type: ignore[assignment]
    assert convert.model_info_from_proto(msg).input_kind is InputKind.UNSPECIFIED


# --- JSON ----------------------------------------------------------------------------------------


def test_result_json_is_the_audit_format() -> None:
    assert RESULT.to_json() == {
        "id": "a1",
        "label_quality": 0.41,
        "is_issue": True,
        "issues": [
            {
                "label": "dog",
                "class_index": 1,
                "kind": "MISSING",
                "probability": 0.93,
                "threshold": 0.71,
                "error_probability": None,
            },
            {
                "label": "cat",
                "class_index": 0,
                "kind": "SPURIOUS",
                "probability": 0.04,
                "threshold": 0.3,
                "error_probability": None,
            },
        ],
        "suggested_labels": ["dog"],
        "model_version": "m-1",
    }


def test_result_json_has_probabilities_only_when_asked_for() -> None:
    with_probs = ScoreResult("a", 1.0, False, probabilities=(0.1, 0.2))
    assert with_probs.to_json()["probabilities"] == [0.1, 0.2]
    assert "probabilities" not in ScoreResult("a", 1.0, False).to_json()


def test_result_line_puts_the_index_first_and_round_trips() -> None:
    line = result_line(7, RESULT)
    assert line.endswith("\n")
    obj = json.loads(line)
    assert next(iter(obj)) == "index"
    assert obj["index"] == 7
    assert ScoreResult.from_json(obj) == RESULT


def test_model_info_json_names_enums_by_name() -> None:
    obj = json.loads(json.dumps(INFO.to_json()))
    assert obj["input_kind"] == "FEATURES"
    assert obj["calibration"]["classes"][1]["label"] == "dog"


def test_example_from_json_reads_every_field() -> None:
    ex = Example.from_json(
        {
            "id": "a1",
            "probabilities": [0.9, 0, 1],
            "labels": ["cat"],
            "label_indices": [0],
            "annotator_id": "ann-7",
            "metadata": {"batch": "3"},
            "unrelated": 1,
        }
    )
    assert ex == Example(
        "a1",
        probabilities=[0.9, 0.0, 1.0],
        labels=["cat"],
        label_indices=[0],
        annotator_id="ann-7",
        metadata={"batch": "3"},
    )


def test_example_from_json_accepts_integer_ids_and_nulls_for_optional_fields() -> None:
    ex = Example.from_json({"id": 12, "text": "x", "labels": None, "metadata": None})
    assert ex == Example("12", text="x")


@pytest.mark.parametrize(
    ("obj", "field", "problem"),
    [
        ({"text": "x"}, "id", "is missing"),
        ({"id": "", "text": "x"}, "id", "non-empty string"),
        ({"id": True, "text": "x"}, "id", "non-empty string"),
        ({"id": "a"}, "text", "no input"),
        ({"id": "a", "text": "x", "features": [1]}, "features", "not text and features"),
        ({"id": "a", "text": 3}, "text", "must be a string"),
        ({"id": "a", "features": "1,2"}, "features", "list of numbers"),
        ({"id": "a", "features": []}, "features", "must not be empty"),
        ({"id": "a", "features": [1, "2"]}, "features[1]", "'2' is not a number"),
        ({"id": "a", "features": [1, True]}, "features[1]", "not a number"),
        ({"id": "a", "features": [float("nan")]}, "features[0]", "not finite"),
        ({"id": "a", "probabilities": [0.5, 1.5]}, "probabilities[1]", ": 1.5 is outside [0, 1]"),
        # a numpy scalar prints as the user wrote it, not as np.float64(1.5)
        (
            {"id": "a", "probabilities": [0.5, np.float64(1.5)]},
            "probabilities[1]",
            ": 1.5 is outside [0, 1]",
        ),
        ({"id": "a", "text": "x", "labels": "cat"}, "labels", "list of class names"),
        ({"id": "a", "text": "x", "labels": ["cat", 1]}, "labels[1]", "not a class name"),
        ({"id": "a", "text": "x", "label_indices": [0, -1]}, "label_indices[1]", "class index"),
        ({"id": "a", "text": "x", "label_indices": [0.5]}, "label_indices[0]", "class index"),
        ({"id": "a", "text": "x", "annotator_id": 7}, "annotator_id", "must be a string"),
        ({"id": "a", "text": "x", "metadata": ["k"]}, "metadata", "object of string values"),
        ({"id": "a", "text": "x", "metadata": {"k": 1}}, "metadata.k", "must be a string"),
    ],
)
def test_bad_json_example_names_the_field(obj: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(ExampleFormatError) as info:
        Example.from_json(obj)
    assert info.value.field == field
    assert problem in str(info.value)
    assert f"field {field!r}" in str(info.value)


# --- JSONL files ---------------------------------------------------------------------------------


def test_jsonl_skips_blank_lines_and_records_line_numbers() -> None:
    data = parse_examples(['{"id": "a", "text": "x"}\n', "\n", '  {"id": "b", "text": "y"}\n'])
    assert [e.id for e in data.examples] == ["a", "b"]
    assert data.lines == (1, 3)
    assert data.class_names is None


def test_jsonl_reads_an_optional_class_names_header() -> None:
    data = parse_examples(['{"class_names": ["cat", "dog"]}', '{"id": "a", "text": "x"}'])
    assert data.class_names == ("cat", "dog")
    assert data.header_line == 1
    assert len(data.examples) == 1


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a", "text": "x"}', "{oops"], "f.jsonl line 2: invalid JSON"),
        (["[1, 2]"], "f.jsonl line 1: expected a JSON object, got list"),
        (['{"id": "a", "features": [1, "x"]}'], "f.jsonl line 1: field 'features[1]'"),
        (
            ['{"id": "a", "text": "x"}', "", '{"id": "a", "text": "y"}'],
            "f.jsonl line 3: field 'id': 'a' is already used on line 1",
        ),
        (['{"class_names": "cat"}'], "f.jsonl line 1: field 'class_names'"),
        (
            ['{"id": "a", "text": "x"}', '{"class_names": ["cat"]}'],
            "f.jsonl line 2: field 'id': is missing",
        ),
    ],
)
def test_bad_jsonl_line_is_named_with_its_field(lines: list[str], message: str) -> None:
    with pytest.raises(JsonlError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_examples(lines, "f.jsonl")


# --- errors --------------------------------------------------------------------------------------


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_rpc_error_becomes_the_subclass_for_its_code_with_the_servers_message() -> None:
    error = from_rpc_error(
        _FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "example 'a': field 'id'"), "h:1"
    )
    assert isinstance(error, InvalidArgument)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == "example 'a': field 'id'"
    assert str(error) == "h:1: INVALID_ARGUMENT: example 'a': field 'id'"


def test_uncommon_codes_still_give_a_labelwatch_error() -> None:
    error = error_for(grpc.StatusCode.NOT_FOUND, "nope")
    assert type(error) is LabelwatchError
    assert isinstance(error_for(grpc.StatusCode.UNAVAILABLE, ""), Unavailable)


def test_rpc_error_without_a_status_reads_as_unknown() -> None:
    error = from_rpc_error(grpc.RpcError())
    assert error.code is grpc.StatusCode.UNKNOWN


# --- transport helpers ---------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_within_half_to_full() -> None:
    delays = list(backoff_delays(4, 0.1, random.Random(0)))
    assert len(delays) == 4
    for attempt, delay in enumerate(delays):
        ceiling = 0.1 * 2**attempt
        assert ceiling / 2 <= delay <= ceiling


def test_backoff_is_capped() -> None:
    assert max(backoff_delays(20, 1.0, random.Random(0))) <= MAX_BACKOFF_SECONDS


def test_only_unavailable_is_retried_and_never_past_the_deadline() -> None:
    assert retry_delay(grpc.StatusCode.INVALID_ARGUMENT, iter([0.1]), None) is None
    assert retry_delay(grpc.StatusCode.UNAVAILABLE, iter([0.1]), None) == 0.1
    assert retry_delay(grpc.StatusCode.UNAVAILABLE, iter([]), None) is None
    soon = time.monotonic() + 0.05
    assert retry_delay(grpc.StatusCode.UNAVAILABLE, iter([0.1]), soon) is None


def test_token_goes_into_an_authorization_header_and_nowhere_else() -> None:
    settings = ChannelSettings("h:1", token="s3cret")
    assert settings.metadata() == (("authorization", "Bearer s3cret"),)
    assert "s3cret" not in repr(settings)
    client = LabelwatchClient("h:1", token="s3cret")
    assert "s3cret" not in repr(client)
    client.close()


def test_bad_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError) as info:
        ChannelSettings("h:1", token="bad\nsecret")
    assert "secret" not in str(info.value)


def test_certificates_imply_tls_and_client_cert_needs_its_key() -> None:
    assert ChannelSettings("h:1", root_certificates=b"pem").uses_tls
    assert not ChannelSettings("h:1").uses_tls
    with pytest.raises(ValueError, match="together"):
        ChannelSettings("h:1", certificate_chain=b"pem")


@pytest.mark.parametrize("service", ["", "labelwatch.v1.LabelQuality", "é"])
def test_health_request_encoding_matches_grpc_health(service: str) -> None:
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert encode_health_request(service) == expected


@pytest.mark.parametrize("status", ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"])
def test_health_response_decoding_matches_grpc_health(status: str) -> None:
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    value = health_pb2.HealthCheckResponse.ServingStatus.Value(status)
    wire = health_pb2.HealthCheckResponse(status=value).SerializeToString()
    assert decode_health_response(wire) == status


def test_health_response_decoding_skips_unknown_fields() -> None:
    # field 2 (length-delimited "ab"), then field 1 = SERVING
    assert decode_health_response(b"\x12\x02ab\x08\x01") == "SERVING"


# --- package boundary and CLI usage (no server needed) -------------------------------------------


def test_client_imports_nothing_from_the_server_side() -> None:
    code = (
        "import sys, labelwatch_client, labelwatch_client.cli, labelwatch_client.aio\n"
        "bad = [m for m in ('numpy', 'onnxruntime', 'labelwatch', 'prometheus_client')"
        " if m in sys.modules]\n"
        "assert not bad, bad"
    )
    client_dir = Path(__file__).resolve().parent.parent / "client"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(client_dir), "PATH": ""},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_model_info_text_lists_every_class() -> None:
    text = format_model_info(INFO, "h:1")
    assert "h:1 (labelwatch 0.1.0)" in text
    assert "features, shape (N, 4)" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("cat ", "dog "))]
    assert rows[0][:5] == ["cat", "0.700", "0.650", "130", "270"]
    assert rows[1][0] == "dog"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_bad_input_line_exits_2_naming_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "features": [1, null]}\n')
    code, out, err = _run(["score", "--target", "127.0.0.1:1", "--input", str(path)], capsys)
    assert code == 2
    assert out == ""
    assert f"{path} line 2: field 'features[1]': None is not a number" in err
    assert "Traceback" not in err


def test_cli_missing_input_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    code, _, err = _run(["score", "--target", "h:1", "--input", str(missing)], capsys)
    assert code == 2
    assert f"--input {missing}: cannot read (No such file or directory)" in err


def test_cli_unset_token_variable_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LW_TEST_TOKEN", raising=False)
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n')
    argv = ["score", "--target", "h:1", "--input", str(path), "--token-env", "LW_TEST_TOKEN"]
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert "environment variable LW_TEST_TOKEN is not set" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "--target", "h:1", "--input", "x.jsonl", "--batch-size", "0"],
        ["score"],  # no --input (--target has a default: tests/test_startup_messages.py)
        ["info", "--target", "h:1", "--timeout", "-1"],
        [],
    ],
    ids=["batch-size", "no-input", "timeout", "no-command"],
)
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert "usage:" in err


def test_cli_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["score", "--help"], capsys)
    assert code == 0
    assert "exit status" in out
