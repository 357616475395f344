"""``--model-concurrency``: several model calls in flight, through the real server.

Real servers on 127.0.0.1 and real gRPC clients. The same requests, sent concurrently
to a server running one model call at a time and to one running three, must get the
same answers bit for bit; and every flag a response reports is already in the outbox
when the client reads the response. No timing is asserted.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest
from support_lifecycle import copy_version, write_version

from labelwatch import config_cli, default_model
from labelwatch.commands.models import collect
from labelwatch.domain import InputKind
from labelwatch.engine import intra_op_threads_per_worker, model_concurrency
from labelwatch.engine.loading import cores
from labelwatch.flag_record import dedupe_key
from labelwatch.server import RunningServer
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_server import (
    CLASS_NAMES,
    float_model,
    float_model_probs,
    running_server,
    target_of,
    write_artifact,
)

REPO = Path(__file__).resolve().parents[1]
DEBTAGS = REPO / "data" / "debtags" / "debtags.jsonl.gz"
N_CLIENTS = 8
REQUESTS_PER_CLIENT = 6

Requests = list[list[pb.ScoreRequest]]
"""Per client, its requests in order."""


def _float_requests(rng: np.random.Generator) -> Requests:
    out = []
    for c in range(N_CLIENTS):
        mine = []
        for r in range(REQUESTS_PER_CLIENT):
            size = int(rng.integers(1, 40))
            x = rng.normal(size=(size, 4)).astype(np.float32)
            tags = rng.random((size, len(CLASS_NAMES))) < 0.4
            mine.append(
                pb.ScoreRequest(
                    examples=[
                        pb.Example(
                            id=f"c{c}-r{r}-e{i}",
                            features=pb.FloatFeatures(values=x[i].tolist()),
                            label_indices=[int(k) for k in np.flatnonzero(tags[i])],
                        )
                        for i in range(size)
                    ],
                    include_probabilities=True,
                )
            )
        out.append(mine)
    return out


def _text_requests(rng: np.random.Generator) -> Requests:
    rows = []
    with gzip.open(DEBTAGS, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("split") == "test":
                rows.append(row)
            if len(rows) == 300:
                break
    out = []
    for c in range(N_CLIENTS):
        mine = []
        for r in range(REQUESTS_PER_CLIENT):
            picked = rng.choice(len(rows), size=int(rng.integers(1, 40)), replace=False)
            mine.append(
                pb.ScoreRequest(
                    examples=[
                        pb.Example(id=f"c{c}-r{r}-e{i}", text=rows[j]["text"], labels=[])
                        for i, j in enumerate(picked)
                    ],
                    include_probabilities=True,
                )
            )
            for example, j in zip(mine[-1].examples, picked, strict=True):
                example.labels.extend(rows[j]["labels"])
        out.append(mine)
    return out


def _send_all(
    server: RunningServer,
    requests: Requests,
    check: Callable[[pb.ScoreRequest, pb.ScoreResponse], None] | None = None,
) -> list[list[pb.ScoreResponse]]:
    """Each client sends its requests in order, all clients at once; the responses."""

    def client(mine: list[pb.ScoreRequest]) -> list[pb.ScoreResponse]:
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            replies = []
            for request in mine:
                reply = stub.Score(request, timeout=60)
                if check is not None:
                    check(request, reply)
                replies.append(reply)
            return replies

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(client, requests))


def _serve_float(tmp_path: Path) -> dict[str, object]:
    model = float_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    p = float_model_probs(model, x)
    art = write_artifact(
        tmp_path / "t.json", model_path=model, probs=p, labels=rng.random(p.shape) < p
    )
    return {"model": model, "thresholds": art}


def _serve_text(_tmp_path: Path) -> dict[str, object]:
    if not default_model.available():
        pytest.skip("no embedded default model in this checkout")
    return {}  # neither --model nor --thresholds: the embedded default text model


@pytest.mark.parametrize(
    ("serving", "make_requests"),
    [(_serve_float, _float_requests), (_serve_text, _text_requests)],
    ids=["features", "text"],
)
def test_three_model_calls_in_flight_answer_bit_for_bit_as_one_at_a_time(
    tmp_path: Path,
    serving: Callable[[Path], dict[str, object]],
    make_requests: Callable[[np.random.Generator], Requests],
) -> None:
    settings = serving(tmp_path)
    requests = make_requests(np.random.default_rng(7))
    answers = {}
    for concurrency in ("1", "3"):
        with running_server(
            **settings, model_concurrency=concurrency, threads=N_CLIENTS + 2
        ) as server:
            assert server.engine.batcher.concurrency == int(concurrency)
            answers[concurrency] = _send_all(server, requests)
    one, three = answers["1"], answers["3"]
    compared = 0
    for mine_one, mine_three in zip(one, three, strict=True):
        for a, b in zip(mine_one, mine_three, strict=True):
            assert len(a.results) == len(b.results) > 0
            for x, y in zip(a.results, b.results, strict=True):
                # protobuf equality compares doubles exactly: probabilities, label quality,
                # each issue's probability and threshold, flags and suggested labels
                assert x == y, f"{x.id}: one call at a time {x} vs three {y}"
                compared += 1
    assert compared == sum(len(r.examples) for mine in requests for r in mine)
    flagged = sum(1 for mine in one for reply in mine for r in reply.results if r.is_issue)
    assert flagged > 0  # the comparison covered flags, not only clean examples


def test_every_flag_is_stored_before_its_response_with_three_calls_in_flight(
    tmp_path: Path,
) -> None:
    settings = _serve_float(tmp_path)
    requests = _float_requests(np.random.default_rng(11))
    missing: list[str] = []
    checked: list[int] = []
    with running_server(**settings, model_concurrency="3", threads=N_CLIENTS + 2) as server:
        outbox = server.engine.outbox

        def check(request: pb.ScoreRequest, reply: pb.ScoreResponse) -> None:
            # in the client thread, the moment the response arrived
            for example, result in zip(request.examples, reply.results, strict=True):
                if not result.is_issue:
                    continue
                given = [CLASS_NAMES[k] for k in example.label_indices]
                if outbox.get(dedupe_key(result.id, result.model_version, given)) is None:
                    missing.append(result.id)
                checked.append(1)

        _send_all(server, requests, check)
    assert missing == []
    assert len(checked) > 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    config_cli.add_arguments(parser)
    return parser


def test_the_option_takes_auto_or_a_whole_number_from_flag_or_environment() -> None:
    parser = _parser()
    assert config_cli.settings_from(parser.parse_args([]), {}).model_concurrency == "auto"
    given = parser.parse_args(["--model-concurrency", "3"])
    assert config_cli.settings_from(given, {}).model_concurrency == "3"
    env = {"LABELWATCH_MODEL_CONCURRENCY": "Auto"}
    assert config_cli.settings_from(parser.parse_args([]), env).model_concurrency == "auto"
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(argparse.ArgumentError, match="concurrency"):
            parser.parse_args(["--model-concurrency", bad])
        with pytest.raises(ValueError, match="LABELWATCH_MODEL_CONCURRENCY"):
            config_cli.settings_from(parser.parse_args([]), {"LABELWATCH_MODEL_CONCURRENCY": bad})


def test_auto_runs_one_call_per_core_of_a_worker_for_text_and_one_otherwise() -> None:
    n = cores()
    text, features, probs = InputKind.TEXT, InputKind.FEATURES, InputKind.PROBABILITIES_ONLY
    assert model_concurrency("auto", workers=1, kind=text) == n
    assert model_concurrency("auto", workers=n, kind=text) == 1
    assert model_concurrency("auto", workers=2 * n, kind=text) == 1
    assert model_concurrency("auto", workers=1, kind=features) == 1
    assert model_concurrency("auto", workers=1, kind=probs) == 1
    assert model_concurrency("5", workers=1, kind=probs) == 5
    # the cores are split between workers and calls; an explicit count wins
    assert intra_op_threads_per_worker(0, 1, n) == 1
    assert intra_op_threads_per_worker(0, 1, 1) == n
    assert intra_op_threads_per_worker(0, 4 * n, 3) == 1
    assert intra_op_threads_per_worker(2, 1, n) == 2


@pytest.mark.parametrize("kind", ["text", "features", "probabilities"])
def test_a_default_server_splits_the_cores_by_what_its_model_takes(
    tmp_path: Path, kind: str
) -> None:
    if kind == "text":
        settings = _serve_text(tmp_path)
    elif kind == "features":
        settings = _serve_float(tmp_path)
    else:
        settings = {"thresholds": _serve_float(tmp_path)["thresholds"]}
    with running_server(**settings) as server:
        calls = server.engine.batcher.concurrency
        model = server.engine.pipeline.model
        threads = model.session_settings.intra_op_threads if model is not None else None
    expected = {"text": (cores(), 1), "features": (1, cores()), "probabilities": (1, None)}
    assert (calls, threads) == expected[kind]


def test_the_start_up_log_says_how_many_calls_run_and_with_how_many_threads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _serve_float(tmp_path)
    with caplog.at_level(logging.INFO, logger="labelwatch"):
        with running_server(**settings, model_concurrency="3", intra_op_threads=0) as server:
            assert server.engine.batcher.concurrency == 3
    lines = [r.getMessage() for r in caplog.records if "event=model_calls" in r.getMessage()]
    assert len(lines) == 1
    expected = f"concurrency=3 requested=3 intra_op_threads={max(1, cores() // 3)} workers=1"
    assert expected in lines[0]


def test_the_shadow_sees_every_example_once_when_batches_finish_concurrently(
    tmp_path: Path,
) -> None:
    write_version(tmp_path, "1", model_seed=1)
    copy_version(tmp_path, "1", "2")
    (tmp_path / "current").write_text("1")
    requests = _float_requests(np.random.default_rng(5))
    with running_server(
        model_repository=tmp_path,
        shadow_version="2",
        shadow_fraction=1.0,
        model_concurrency="3",
        threads=N_CLIENTS + 2,
    ) as server:
        assert server.engine.batcher.concurrency == 3
        replies = _send_all(server, requests)
        assert server.engine.shadow is not None and server.engine.shadow.wait_idle(60)
        pairs = collect([generate_latest(server.engine.registry).decode()])
    answered = sum(len(reply.results) for mine in replies for reply in mine)
    assert {r.model_version for mine in replies for reply in mine for r in reply.results} == {"1"}
    stats = pairs[("1", "2")]
    # offered by three workers at once, each example queued for the shadow exactly once
    assert stats.examples == answered
    assert stats.agreeing == stats.examples  # version 2 is a copy of version 1
