"""labelwatch_client (library and CLI) end to end against the real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import pytest

from labelwatch.cli import main as labelwatch_main
from labelwatch_client import (
    AsyncLabelwatchClient,
    Example,
    FailedPrecondition,
    InputKind,
    InvalidArgument,
    IssueKind,
    LabelwatchClient,
    LabelwatchError,
    ScoreResult,
    convert,
)
from labelwatch_client.cli import main as client_main
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_ports import free_port
from support_server import (
    CLASS_NAMES,
    float_model,
    random_calibration,
    running_server,
    target_of,
    write_artifact,
)

K = len(CLASS_NAMES)
T = TypeVar("T")
CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"


@pytest.fixture(scope="module")
def prob_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    artifact = write_artifact(tmp_path_factory.mktemp("art") / "thresholds.json")
    with running_server(thresholds=artifact, max_batch=50) as server:
        yield target_of(server)


@pytest.fixture(scope="module")
def features_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("model")
    model = float_model(folder / "model.onnx", d=4)
    artifact = write_artifact(folder / "thresholds.json", model_path=model)
    with running_server(model=model, thresholds=artifact) as server:
        yield target_of(server)


@pytest.fixture
def client(prob_target: str) -> Iterator[LabelwatchClient]:
    with LabelwatchClient(prob_target) as c:
        yield c


def prob_examples(n: int, seed: int = 3, prefix: str = "ex") -> list[Example]:
    probs, labels = random_calibration(n=n, seed=seed)
    return [
        Example(
            f"{prefix}-{i}",
            probabilities=probs[i].tolist(),
            labels=[CLASS_NAMES[k] for k in np.flatnonzero(labels[i])],
            annotator_id="ann-1",
            metadata={"row": str(i)},
        )
        for i in range(n)
    ]


# --- library -------------------------------------------------------------------------------------


def test_score_returns_exactly_what_the_server_sent(
    client: LabelwatchClient, prob_target: str
) -> None:
    examples = prob_examples(40)
    results = client.score(examples, include_probabilities=True)
    request = convert.score_request(examples, include_probabilities=True)
    with grpc.insecure_channel(prob_target) as channel:
        raw = pb_grpc.LabelQualityStub(channel).Score(request)
    assert [convert.result_to_proto(r) for r in results] == list(raw.results)
    assert [r.id for r in results] == [e.id for e in examples]
    assert any(r.is_issue for r in results)
    assert all(r.probabilities is not None and len(r.probabilities) == K for r in results)


def test_flagged_results_carry_issues_and_suggested_labels(client: LabelwatchClient) -> None:
    # untagged but p = 0.99 for every class: each class is confidently missing
    [result] = client.score([Example("all-missing", probabilities=[0.99] * K)])
    assert result.is_issue
    assert {i.kind for i in result.issues} == {IssueKind.MISSING}
    assert set(result.suggested_labels) == set(CLASS_NAMES)
    assert result.probabilities is None
    assert 0.0 <= result.label_quality <= 1.0


def test_score_stream_answers_each_batch_in_order(client: LabelwatchClient) -> None:
    examples = prob_examples(30, seed=5)
    sizes = [7, 0, 1, 22]
    batches, start = [], 0
    for size in sizes:
        batches.append(examples[start : start + size])
        start += size
    streamed = list(client.score_stream(iter(batches)))
    assert [len(b) for b in streamed] == sizes
    assert [r.id for b in streamed for r in b] == [e.id for e in examples]
    assert [r for b in streamed for r in b] == client.score(examples)


def test_model_info_mirrors_the_server(client: LabelwatchClient, prob_target: str) -> None:
    info = client.model_info()
    with grpc.insecure_channel(prob_target) as channel:
        raw = pb_grpc.LabelQualityStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    assert convert.model_info_to_proto(info) == raw
    assert info.class_names == CLASS_NAMES
    assert info.input_kind is InputKind.PROBABILITIES_ONLY
    assert [c.label for c in info.calibration.classes] == list(CLASS_NAMES)
    assert info.version == client.score(prob_examples(1))[0].model_version


def test_health_reports_serving(client: LabelwatchClient) -> None:
    assert client.health() == "SERVING"
    assert client.health("labelwatch.v1.LabelQuality") == "SERVING"


def test_health_of_an_unknown_service_raises_not_found(client: LabelwatchClient) -> None:
    with pytest.raises(LabelwatchError) as info:
        client.health("no.such.Service")
    assert info.value.code is grpc.StatusCode.NOT_FOUND


def test_bad_example_raises_invalid_argument_naming_id_and_field(
    client: LabelwatchClient,
) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.score([Example("short", probabilities=[0.5] * (K - 1))])
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "example 'short'" in info.value.details
    assert "field 'probabilities'" in info.value.details


def test_bad_example_in_a_stream_raises_after_earlier_batches(client: LabelwatchClient) -> None:
    good = prob_examples(2)
    got: list[ScoreResult] = []
    with pytest.raises(InvalidArgument, match="example 'bad'"):
        for results in client.score_stream([good, [Example("bad", probabilities=[2.0] * K)]]):
            got.extend(results)
    assert [r.id for r in got] == [e.id for e in good]


def test_features_are_scored_by_the_model_and_text_is_refused(features_target: str) -> None:
    with LabelwatchClient(features_target) as c:
        assert c.model_info().input_kind is InputKind.FEATURES
        [result] = c.score(
            [Example("f", features=[0.1, -0.2, 0.3, 1.5])], include_probabilities=True
        )
        assert result.probabilities is not None and len(result.probabilities) == K
        with pytest.raises(FailedPrecondition) as info:
            c.score([Example("t", text="hello")])
    assert "example 't': field 'text'" in info.value.details


def test_async_client_scores_streams_and_describes(prob_target: str) -> None:
    examples = prob_examples(12, seed=9)

    async def body() -> None:
        async with AsyncLabelwatchClient(prob_target) as c:
            assert await c.health() == "SERVING"
            info = await c.model_info()
            assert info.class_names == CLASS_NAMES
            scored = await c.score(examples)

            async def batches() -> AsyncIterator[list[Example]]:
                for start in range(0, len(examples), 5):
                    yield examples[start : start + 5]

            streamed = [r async for b in c.score_stream(batches()) for r in b]
            assert streamed == scored
            with pytest.raises(InvalidArgument, match="example 'bad'"):
                await c.score([Example("bad", probabilities=[0.5])])

    asyncio.run(body())
    with LabelwatchClient(prob_target) as sync_client:
        assert sync_client.score(examples) == asyncio.run(_score_async(prob_target, examples))


async def _score_async(target: str, examples: list[Example]) -> list[ScoreResult]:
    async with AsyncLabelwatchClient(target) as c:
        return await c.score(examples)


def _returns_within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result (or exception), failing if it is not back within ``seconds``.

    For calls whose wrong behaviour is to wait out a far longer deadline than ``seconds``.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(call())
        except BaseException as exc:  # handed to the test's thread below
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)  # daemon: a stuck call cannot block exit
    worker.start()
    worker.join(seconds)
    if errors:
        raise errors[0]
    if not results:
        pytest.fail(f"still waiting after {seconds}s: it waits for its deadline")
    return results[0]


def test_unreachable_target_raises_unavailable_quickly() -> None:
    target = f"127.0.0.1:{free_port()}"

    def info() -> None:
        # an hour's deadline: giving up only at the deadline would be caught below
        with LabelwatchClient(target, timeout=3600.0) as c:
            c.model_info()

    with pytest.raises(LabelwatchError) as raised:
        _returns_within(60, info)
    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert raised.value.target == target


# --- CLI -----------------------------------------------------------------------------------------


def write_jsonl(path: Path, examples: list[Example], header: list[str] | None = None) -> Path:
    rows: list[dict[str, object]] = [{"class_names": header}] if header else []
    for ex in examples:
        rows.append(
            {
                "id": ex.id,
                "probabilities": list(ex.probabilities or ()),
                "labels": list(ex.labels),
                "annotator_id": ex.annotator_id,
                "metadata": dict(ex.metadata),
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_score_writes_one_audit_line_per_example(
    prob_target: str, client: LabelwatchClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = prob_examples(25, seed=11)
    source = write_jsonl(tmp_path / "in.jsonl", examples, header=list(CLASS_NAMES))
    out = tmp_path / "out.jsonl"
    argv = ["score", "--target", prob_target, "--input", str(source), "--out", str(out)]
    code = client_main([*argv, "--batch-size", "4", "--include-probabilities"])
    _, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = client.score(examples, include_probabilities=True)
    assert rows == [{"index": i, **r.to_json()} for i, r in enumerate(expected)]
    assert "scored 25 examples" in err


def test_labelwatch_score_writes_to_stdout(
    prob_target: str, client: LabelwatchClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = prob_examples(3, seed=12)
    source = write_jsonl(tmp_path / "in.jsonl", examples)
    code = labelwatch_main(["score", "--target", prob_target, "--input", str(source)])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows == [{"index": i, **r.to_json()} for i, r in enumerate(client.score(examples))]
    assert all("probabilities" not in row for row in rows)


def test_cli_info_prints_text_and_json(
    prob_target: str, client: LabelwatchClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert labelwatch_main(["info", "--target", prob_target]) == 0
    text = capsys.readouterr().out
    assert "probabilities_only" in text
    for name in CLASS_NAMES:
        assert any(line.startswith(f"{name} ") for line in text.splitlines())
    assert client_main(["info", "--target", prob_target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == client.model_info().to_json()


def test_cli_score_rejected_by_the_server_exits_1_with_its_message(
    prob_target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": "ok", "probabilities": [0.5, 0.5, 0.5, 0.5, 0.5]}\n'
        '{"id": "x7", "probabilities": [0.5, 0.5]}\n'
    )
    out = tmp_path / "out.jsonl"
    argv = ["score", "--target", prob_target, "--input", str(source), "--out", str(out)]
    code = client_main(argv)
    _, err = capsys.readouterr()
    assert code == 1
    assert "example 'x7': field 'probabilities': expected 5 values" in err
    assert "INVALID_ARGUMENT" in err
    assert "Traceback" not in err
    assert not out.exists()  # no half-written results
    assert list(tmp_path.iterdir()) == [source]


def test_cli_class_names_header_must_match_the_server(
    prob_target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", prob_examples(1), header=list(CLASS_NAMES[::-1]))
    code = client_main(["score", "--target", prob_target, "--input", str(source)])
    _, err = capsys.readouterr()
    assert code == 2
    assert f"{source} line 1: field 'class_names'" in err


def test_cli_unreachable_target_exits_3_in_bounded_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{free_port()}"
    source = write_jsonl(tmp_path / "in.jsonl", prob_examples(2))
    # an hour's deadline: giving up only at the deadline would be caught by _returns_within
    argv = ["score", "--target", target, "--input", str(source), "--timeout", "3600"]
    code = _returns_within(60, lambda: client_main(argv))
    _, err = capsys.readouterr()
    assert code == 3
    assert f"the server at {target} is unreachable or unavailable" in err


def test_cli_as_a_process_prints_one_line_and_no_traceback_when_unreachable() -> None:
    target = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CLIENT_DIR), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-m", "labelwatch_client.cli", "info", "--target", target],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"labelwatch-client info: error: the server at {target}")
