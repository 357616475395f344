"""The budget rule and error probabilities served: gRPC results, WatchFlags, metrics, CLI."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from labelwatch.calibration import calibrate, load_artifact, save_artifact
from labelwatch.cli import main
from labelwatch.errors import StartupError
from labelwatch.flag_record import Flag, FlagIssue
from labelwatch.outbox import Outbox
from labelwatch.scoring import FilterBy, IssueKind, decide
from labelwatch.server import RunningServer
from labelwatch_proto.labelwatch.v1 import flags_pb2 as fpb
from labelwatch_proto.labelwatch.v1 import flags_pb2_grpc as fpb_grpc
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_server import CLASS_NAMES, random_calibration, running_server, target_of

BUDGET = 0.4


@pytest.fixture(scope="module")
def context_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    probs, labels = random_calibration(n=800, seed=3)
    artifact = calibrate(
        probs,
        labels,
        CLASS_NAMES,
        filter_by=FilterBy.BUDGET,
        context_tags=3,
        flag_budget=BUDGET,
        context_quality=True,
    )
    path = tmp_path_factory.mktemp("ctx") / "thresholds.json"
    save_artifact(artifact, path)
    return path


@pytest.fixture
def server(context_artifact: Path, tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(thresholds=context_artifact, outbox=tmp_path / "outbox.sqlite3") as srv:
        yield srv


def _examples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[pb.Example]]:
    probs, labels = random_calibration(n=n, seed=seed)
    examples = [
        pb.Example(
            id=f"ex-{i}",
            probabilities=pb.Probabilities(values=probs[i].tolist()),
            labels=[CLASS_NAMES[k] for k in np.flatnonzero(labels[i])],
        )
        for i in range(n)
    ]
    return probs, labels, examples


def test_results_carry_the_budget_flags_and_their_error_probabilities(
    server: RunningServer, context_artifact: Path
) -> None:
    probs, labels, examples = _examples(120, seed=9)
    with grpc.insecure_channel(target_of(server)) as channel:
        results = (
            pb_grpc.LabelQualityStub(channel).Score(pb.ScoreRequest(examples=examples)).results
        )
    want = decide(load_artifact(context_artifact).fit, probs, labels, FilterBy.BUDGET)
    assert want.error_probability is not None
    got_flags = np.zeros_like(want.flags)
    for i, result in enumerate(results):
        assert result.label_quality == want.label_quality[i]
        for issue in result.issues:
            got_flags[i, issue.class_index] = True
            assert issue.HasField("error_probability")
            assert issue.error_probability == want.error_probability[i, issue.class_index]
    np.testing.assert_array_equal(got_flags, want.flags)
    assert want.flags.any()


def test_model_info_reports_the_budget_and_the_context(server: RunningServer) -> None:
    with grpc.insecure_channel(target_of(server)) as channel:
        info = pb_grpc.LabelQualityStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    assert info.calibration.filter_by == "budget"
    assert info.calibration.flag_budget == BUDGET
    assert info.calibration.context_tags == 3
    assert server.metrics.flag_budget._value.get() == BUDGET  # the exported gauge


def test_a_larger_budget_served_flags_more(context_artifact: Path, tmp_path: Path) -> None:
    _, _, examples = _examples(200, seed=10)
    counts = []
    for budget in (0.2, 1.5):
        with running_server(thresholds=context_artifact, flag_budget=budget) as srv:
            with grpc.insecure_channel(target_of(srv)) as channel:
                stub = pb_grpc.LabelQualityStub(channel)
                results = stub.Score(pb.ScoreRequest(examples=examples)).results
            counts.append(sum(len(r.issues) for r in results))
            assert srv.metrics.flag_budget._value.get() == budget
    assert counts[0] < counts[1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"flag_budget": 0.0}, r"--flag-budget: flag budget must be in \(0, 5\]"),
        ({"flag_budget": 6.0}, r"--flag-budget: flag budget must be in \(0, 5\]"),
        (
            {"flag_budget": 0.2, "filter_by": FilterBy.CONFIDENT_LEARNING},
            "--flag-budget applies to the budget rule only",
        ),
    ],
)
def test_a_bad_budget_stops_start_up_with_one_line(
    context_artifact: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(StartupError, match=message) as err:
        with running_server(thresholds=context_artifact, **overrides):
            pass
    assert "\n" not in str(err.value)


def test_the_budget_rule_without_a_context_model_stops_start_up(tmp_path: Path) -> None:
    probs, labels = random_calibration(n=200)
    plain = tmp_path / "plain.json"
    save_artifact(calibrate(probs, labels, CLASS_NAMES), plain)
    with pytest.raises(StartupError, match="needs a calibration artifact with a tag-context"):
        with running_server(thresholds=plain, filter_by=FilterBy.BUDGET):
            pass


def _watch(channel: grpc.Channel, **fields: object) -> queue.Queue[object]:
    """Read a WatchFlags stream into a queue (flags, then an RpcError if it fails)."""
    out: queue.Queue[object] = queue.Queue()
    call = fpb_grpc.FlagFeedStub(channel).WatchFlags(fpb.WatchFlagsRequest(**fields))  # type: ignore[arg-type]

    def read() -> None:
        try:
            for flag in call:
                out.put(flag)
        except grpc.RpcError as exc:
            out.put(exc)

    threading.Thread(target=read, daemon=True).start()
    out.call = call  # type: ignore[attr-defined]
    return out


def test_watch_flags_keeps_flags_above_a_minimum_error_probability(server: RunningServer) -> None:
    _, _, examples = _examples(150, seed=11)
    with grpc.insecure_channel(target_of(server)) as channel:
        results = (
            pb_grpc.LabelQualityStub(channel).Score(pb.ScoreRequest(examples=examples)).results
        )
        best = {r.id: max(i.error_probability for i in r.issues) for r in results if r.issues}
        least = float(np.median(list(best.values())))
        expected = [r.id for r in results if r.issues and best[r.id] >= least]
        assert 0 < len(expected) < len(best)
        stream = _watch(channel, consumer="reviewer", min_error_probability=least)
        got = [stream.get(timeout=10) for _ in expected]
        assert [f.example_id for f in got] == expected  # type: ignore[attr-defined]
        assert all(
            max(i.error_probability for i in f.issues) >= least  # type: ignore[attr-defined]
            for f in got
        )
        stream.call.cancel()  # type: ignore[attr-defined]
        bad = _watch(channel, consumer="bad", min_error_probability=1.5)
        error = bad.get(timeout=10)
        assert isinstance(error, grpc.RpcError)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "min_error_probability" in (error.details() or "")


def _flag(i: int, chance: float | None, quality: float) -> Flag:
    issue = FlagIssue("cat", 0, IssueKind.MISSING, 0.9, 0.6, error_probability=chance)
    return Flag(
        flag_id=f"{i:064x}",
        example_id=f"ex-{i}",
        labels=("dog",),
        issues=(issue,),
        suggested_labels=("cat", "dog"),
        label_quality=quality,
        model_version="m",
        annotator_id="",
        metadata={},
        text=None,
        input_kind="probabilities",
        flagged_at=1_700_000_000.0 + i,
    )


def test_flags_list_shows_the_most_likely_errors_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite3")
    box.write([_flag(0, 0.2, 0.1), _flag(1, 0.9, 0.5), _flag(2, None, 0.05), _flag(3, 0.6, 0.3)])
    path = str(box.path)
    assert main(["flags", "list", "--outbox", path, "--json"]) == 0
    listed = [Flag.from_json(line).example_id for line in capsys.readouterr().out.splitlines()]
    assert listed == ["ex-1", "ex-3", "ex-0", "ex-2"]
    assert main(["flags", "list", "--outbox", path, "--json", "--order", "position"]) == 0
    listed = [Flag.from_json(line).example_id for line in capsys.readouterr().out.splitlines()]
    assert listed == ["ex-0", "ex-1", "ex-2", "ex-3"]
    assert main(["flags", "list", "--outbox", path, "--limit", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "ERR P" in table[0] and "ex-1" in table[1] and " 0.900 " in table[1]
