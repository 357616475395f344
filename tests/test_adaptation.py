"""Cut-offs adapted to verdicts (--adapt-to-verdicts): the rule, a real server, calibrate.

Real in-process servers on 127.0.0.1 with real outbox files; adaptation steps are
triggered directly (``server.adapter.step()``), not waited for.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from labelwatch.cli import main
from labelwatch.flag_record import dedupe_key
from labelwatch.outbox import Outbox, VerdictRow
from labelwatch.scoring.adapt import AdaptPolicy, ClassEvidence, next_cutoff
from labelwatch_proto.labelwatch.v1 import flags_pb2 as fpb
from labelwatch_proto.labelwatch.v1 import flags_pb2_grpc as fpb_grpc
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_delivery import flagged_example
from support_server import (
    CLASS_NAMES,
    random_calibration,
    running_server,
    target_of,
    write_artifact,
)

POLICY = AdaptPolicy(target=0.8)


@pytest.mark.parametrize(
    ("current", "evidence", "want"),
    [
        (0.0, ClassEvidence(3, 12, None), (0.05, "raise")),
        (0.97, ClassEvidence(3, 12, None), (0.99, "raise")),  # bounded above
        (0.0, ClassEvidence(15, 0, None), (0.0, "hold")),  # cannot go below 0
        (0.3, ClassEvidence(40, 0, 0.9), (0.275, "lower")),  # down at half a step
        (0.3, ClassEvidence(16, 4, 0.8), (0.3, "hold")),
        (0.3, ClassEvidence(1, 8, 0.9), (0.3, "too_few_verdicts")),
    ],
)
def test_a_cutoff_moves_one_bounded_step_towards_the_target(
    current: float, evidence: ClassEvidence, want: tuple[float, str]
) -> None:
    decision = next_cutoff(current, evidence, POLICY)
    assert (decision.cutoff, decision.reason) == pytest.approx(want)


def test_the_calibrated_error_probability_is_the_prior() -> None:
    # 7 of 10 confirmed: a model that expected 0.95 keeps the cut-off, one that expected
    # 0.5 raises it (the prior is worth 10 verdicts)
    assert next_cutoff(0.0, ClassEvidence(7, 3, 0.95), POLICY).reason == "hold"
    assert next_cutoff(0.0, ClassEvidence(7, 3, 0.5), POLICY).reason == "raise"


def _score(channel: grpc.Channel, ids: range) -> list[tuple[str, str]]:
    request = pb.ScoreRequest(examples=[flagged_example(i) for i in ids])
    results = pb_grpc.LabelQualityStub(channel).Score(request, timeout=30).results
    return [
        (dedupe_key(ex.id, r.model_version, list(ex.labels)), CLASS_NAMES[i % len(CLASS_NAMES)])
        for i, ex, r in zip(ids, request.examples, results, strict=True)
    ]


def test_adaptation_raises_a_low_precision_class_and_leaves_a_high_one(tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "thresholds.json")
    data = tmp_path / "data"
    settings = {"thresholds": artifact, "data_dir": data, "adapt_to_verdicts": True}
    settings["adapt_interval_seconds"] = 3600.0  # steps are triggered below
    with running_server(**settings) as server:
        assert server.adapter is not None
        with grpc.insecure_channel(target_of(server)) as channel:
            # examples i % 5 == 0 are flagged MISSING 'cat', i % 5 == 1 MISSING 'dog'
            flags = _score(channel, range(75))
            reports = []
            for n, (flag_id, label) in enumerate(f for f in flags if f[1] in ("cat", "dog")):
                low = label == "cat" and n % 5 != 0  # cat: 1 in 5 confirmed
                verdict = fpb.VERDICT_REJECTED if low else fpb.VERDICT_CONFIRMED
                reports.append(
                    fpb.VerdictReport(
                        flag_id=flag_id, label=label, verdict=verdict, reviewer="alice"
                    )
                )
            feed = fpb_grpc.FlagFeedStub(channel)
            assert feed.ReportVerdicts(fpb.ReportVerdictsRequest(verdicts=reports)).recorded == 30
            before = pb_grpc.LabelQualityStub(channel).GetModelInfo(pb.GetModelInfoRequest())
            version = server.adapter.step()
            after = pb_grpc.LabelQualityStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    assert before.adaptive_cutoffs.enabled and before.adaptive_cutoffs.version == 0
    assert dict(before.adaptive_cutoffs.cutoffs) == {}
    assert version is not None
    assert after.adaptive_cutoffs.target_precision == pytest.approx(0.8)
    assert after.adaptive_cutoffs.version == version.version
    assert dict(after.adaptive_cutoffs.cutoffs) == pytest.approx({"cat": 0.05})
    payload = json.loads(version.payload)
    (change,) = payload["changes"]
    assert (change["class"], change["from"], change["to"], change["reason"]) == (
        "cat",
        0.0,
        0.05,
        "raise",
    )
    assert (change["confirmed"], change["rejected"]) == (3, 12)
    # versioned in the outbox: a restarted server serves the same cut-offs
    with running_server(**settings) as again:
        assert again.adapter is not None and again.adapter.as_dict() == pytest.approx({"cat": 0.05})
    box = Outbox(data / "outbox.sqlite3", create=False)
    try:
        assert [v.version for v in box.cutoff_history(again.pipeline.model_version)] == [
            version.version
        ]
    finally:
        box.close()


def test_served_flags_below_their_class_cutoff_are_not_flagged(tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "thresholds.json")
    data = tmp_path / "data"
    settings = {"thresholds": artifact, "data_dir": data, "adapt_to_verdicts": True}
    with running_server(**settings) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            request = pb.ScoreRequest(examples=[flagged_example(0), flagged_example(1)])
            first = pb_grpc.LabelQualityStub(channel).Score(request, timeout=30).results
        model_version = server.pipeline.model_version
    assert "cat" in {i.label for i in first[0].issues}
    box = Outbox(data / "outbox.sqlite3")
    box.add_cutoffs(model_version, json.dumps({"cutoffs": {"cat": 1.0}, "changes": []}))
    box.close()
    with running_server(**settings) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            again = pb_grpc.LabelQualityStub(channel).Score(request, timeout=30).results
    assert "cat" not in {i.label for i in again[0].issues}  # p 0.999 < cut-off 1.0
    assert [i.label for i in again[1].issues] == [i.label for i in first[1].issues]


def test_calibrate_with_verdicts_corrects_the_confirmed_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = write_artifact(tmp_path / "thresholds.json")
    data_dir = tmp_path / "data"
    with running_server(thresholds=artifact, data_dir=data_dir) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            flags = _score(channel, range(4))
            reports = [
                fpb.VerdictReport(
                    flag_id=flag_id,
                    label=label,
                    verdict=fpb.VERDICT_CONFIRMED if i < 3 else fpb.VERDICT_REJECTED,
                    reviewer="alice",
                )
                for i, (flag_id, label) in enumerate(flags)
            ]
            fpb_grpc.FlagFeedStub(channel).ReportVerdicts(
                fpb.ReportVerdictsRequest(verdicts=reports), timeout=10
            )
    probs, labels = random_calibration(n=200, seed=5)
    ids = [f"flagged-{i}" if i < 4 else f"other-{i}" for i in range(200)]
    for i in range(4):  # the flagged examples as they were scored: one tag, not the missing one
        labels[i] = False
        labels[i, (i + 1) % 5] = True
    np.savez(
        tmp_path / "d.npz",
        pred_probs=probs,
        labels=labels,
        ids=np.array(ids),
        class_names=np.array(CLASS_NAMES),
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "calibrate",
                "--data",
                str(tmp_path / "d.npz"),
                "--out",
                str(tmp_path / "new.json"),
                "--no-context",
                "--verdicts",
                str(data_dir / "outbox.sqlite3"),
            ]
        )
    assert code == 0, capsys.readouterr().err
    assert "verdicts: 3 tags of DATA corrected" in out.getvalue()


def test_a_step_right_after_another_workers_version_is_skipped(tmp_path: Path) -> None:
    from labelwatch.adaptation import Adapter

    now = [1000.0]
    box = Outbox(tmp_path / "o.sqlite3", clock=lambda: now[0])
    box.add_cutoffs("m", json.dumps({"cutoffs": {"cat": 0.05}, "changes": []}))
    box.record_verdicts(
        [
            VerdictRow(f"f{i}", "cat", "r", "REJECTED", "", "grpc", "missing", 0.9, "")
            for i in range(15)
        ]
    )
    adapter = Adapter(box, CLASS_NAMES, "m", POLICY, interval_seconds=60.0)
    assert adapter.as_dict() == {"cat": 0.05}
    now[0] += 10  # another worker stored a version 10 s ago: this one waits
    assert adapter.step() is None
    now[0] += 60
    moved = adapter.step()
    assert moved is not None and adapter.as_dict() == pytest.approx({"cat": 0.1})
    box.close()
