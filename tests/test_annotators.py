"""Per-annotator quality through a real server: counts, verdicts, shrinkage, paging, CLI.

A small fixture with a hand count: three annotators, known flagged and clean
examples (support_delivery's probabilities-only examples), a few verdicts.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from labelwatch.annotators import AnnotatorTally, annotator_quality
from labelwatch.cli import main
from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.flag_record import dedupe_key
from labelwatch.outbox import AnnotatorCounts
from labelwatch.stats import beta_binomial_prior, shrunk_rate
from labelwatch_proto.labelwatch.v1 import flags_pb2 as fpb
from labelwatch_proto.labelwatch.v1 import flags_pb2_grpc as fpb_grpc
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_delivery import clean_example, flagged_example
from support_server import CLASS_NAMES, running_server, target_of, write_artifact

# annotator -> (flagged examples, clean examples)
FIXTURE = {"ann-a": (6, 14), "ann-b": (1, 19), "ann-c": (2, 0)}


def examples() -> list[pb.Example]:
    out = []
    n = 0
    for who, (flagged, clean) in FIXTURE.items():
        for _ in range(flagged):
            out.append(flagged_example(n, annotator=who))
            n += 1
        for _ in range(clean):
            ex = clean_example(n)
            ex.annotator_id = who
            out.append(ex)
            n += 1
    return out


def test_annotator_stats_match_a_hand_count_and_page_in_order(tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "thresholds.json")
    data = tmp_path / "data"
    with running_server(thresholds=artifact, data_dir=data, annotator_metrics=2) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            request = pb.ScoreRequest(examples=examples())
            results = pb_grpc.LabelQualityStub(channel).Score(request, timeout=30).results
            flags = {
                ex.id: (dedupe_key(ex.id, r.model_version, list(ex.labels)), r)
                for ex, r in zip(request.examples, results, strict=True)
                if r.is_issue
            }
            by_who: dict[str, list[tuple[str, str]]] = {}
            for ex in request.examples:
                if ex.id in flags:
                    flag_id, result = flags[ex.id]
                    by_who.setdefault(ex.annotator_id, []).append((flag_id, result.issues[0].label))
            assert {who: len(v) for who, v in by_who.items()} == {
                who: f for who, (f, _) in FIXTURE.items()
            }
            # ann-a: 2 confirmed, 1 rejected (two reviewers disagree on a third: confirmed)
            a = by_who["ann-a"]
            reports = [
                fpb.VerdictReport(
                    flag_id=a[0][0], label=a[0][1], verdict=fpb.VERDICT_CONFIRMED, reviewer="r1"
                ),
                fpb.VerdictReport(
                    flag_id=a[1][0], label=a[1][1], verdict=fpb.VERDICT_CONFIRMED, reviewer="r1"
                ),
                fpb.VerdictReport(
                    flag_id=a[1][0], label=a[1][1], verdict=fpb.VERDICT_REJECTED, reviewer="r2"
                ),
                fpb.VerdictReport(
                    flag_id=a[2][0], label=a[2][1], verdict=fpb.VERDICT_REJECTED, reviewer="r1"
                ),
            ]
            feed = fpb_grpc.FlagFeedStub(channel)
            assert feed.ReportVerdicts(fpb.ReportVerdictsRequest(verdicts=reports)).recorded == 4
            first = feed.GetAnnotatorStats(fpb.GetAnnotatorStatsRequest(page_size=2), timeout=10)
            second = feed.GetAnnotatorStats(
                fpb.GetAnnotatorStatsRequest(page_size=2, page_token=first.next_page_token),
                timeout=10,
            )
            by_id = feed.GetAnnotatorStats(
                fpb.GetAnnotatorStatsRequest(
                    order_by=fpb.GetAnnotatorStatsRequest.ORDER_ANNOTATOR_ID, ascending=True
                ),
                timeout=10,
            )
            registry = server.metrics.registry
            exported = {
                s.labels["annotator"]: s.value
                for m in registry.collect()
                for s in m.samples
                if s.name == "labelwatch_annotator_error_rate"
            }
            assert registry.get_sample_value("labelwatch_annotators") == 3
            with pytest.raises(grpc.RpcError) as bad:
                feed.GetAnnotatorStats(fpb.GetAnnotatorStatsRequest(page_token="x"), timeout=10)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # hand count: precision 2 confirmed / 3 judged flags; unreviewed flags count 2/3 each
    precision = 2 / 3
    want = {
        "ann-a": (20, 6, 2, 1, 2 + precision * 3),
        "ann-b": (20, 1, 0, 0, precision * 1),
        "ann-c": (2, 2, 0, 0, precision * 2),
    }
    rows = {r.annotator_id: r for r in by_id.annotators}
    assert [r.annotator_id for r in by_id.annotators] == ["ann-a", "ann-b", "ann-c"]
    for who, (scored, flagged, confirmed, rejected, errors) in want.items():
        r = rows[who]
        assert (r.scored, r.flagged, r.confirmed, r.rejected) == (
            scored,
            flagged,
            confirmed,
            rejected,
        )
        assert r.estimated_errors == pytest.approx(errors)
        assert r.raw_error_rate == pytest.approx(errors / scored)
    prior = beta_binomial_prior([w[4] for w in want.values()], [w[0] for w in want.values()])
    for who, w in want.items():
        shrunk = shrunk_rate(w[4], w[0], prior)
        assert (rows[who].error_rate, rows[who].error_rate_lower) == pytest.approx(
            (shrunk.estimate, shrunk.lower)
        )
    assert by_id.precision == pytest.approx(precision) and by_id.total == 3
    # ann-c: 2 of 2 flagged, but only 2 examples: shrunk far below its raw rate
    assert rows["ann-c"].error_rate < rows["ann-c"].raw_error_rate / 2
    # paging, worst first
    ordered = sorted(rows.values(), key=lambda r: -r.error_rate)
    assert [r.annotator_id for r in first.annotators] == [r.annotator_id for r in ordered[:2]]
    assert [r.annotator_id for r in second.annotators] == [ordered[2].annotator_id]
    assert second.next_page_token == ""
    # --annotator-metrics 2: the two worst only, with the same estimate
    assert exported == pytest.approx({r.annotator_id: r.error_rate for r in ordered[:2]})
    # the CLI reads the same from the outbox file
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["annotators", "--data-dir", str(data), "--json"]) == 0
    doc = json.loads(buf.getvalue())
    assert [r["annotator_id"] for r in doc["annotators"]] == [r.annotator_id for r in ordered]
    assert doc["annotators"][0]["error_rate"] == pytest.approx(ordered[0].error_rate)
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        assert main(["annotators", "--data-dir", str(data)]) == 0
    assert "3 annotators" in table.getvalue() and "ann-c" in table.getvalue()


def test_the_tally_hands_counts_over_with_flags_or_after_the_flush_interval() -> None:
    now = [0.0]
    tally = AnnotatorTally(flush_seconds=5.0, clock=lambda: now[0])

    def batch(who: str, flagged: bool) -> ScoredBatch:
        k = len(CLASS_NAMES)
        ex = LabeledExample(id="x", labels=np.zeros(k, np.bool_), annotator_id=who)
        flags = np.zeros((1, k), np.bool_)
        flags[0, 0] = flagged
        z = np.zeros((1, k))
        return ScoredBatch(
            examples=(ex,),
            probabilities=z,
            labels=np.zeros((1, k), np.bool_),
            flags=flags,
            label_quality=np.ones(1),
            t0=z[0],
            t1=z[0],
            model_version="m",
        )

    assert tally.add([batch("a", False)], force=False) == {}
    assert tally.add([batch("a", True), batch("", True)], force=True) == {"a": (2, 1)}
    assert tally.add([batch("b", False)], force=False) == {}
    now[0] = 6.0
    out = tally.add([batch("b", False)], force=False)
    assert out == {"b": (2, 0)}
    tally.give_back(out)
    assert tally.add([], force=True) == {"b": (2, 0)}


def test_no_annotators_gives_an_empty_report() -> None:
    report = annotator_quality([])
    assert report.annotators == () and report.precision == 1.0
    one = annotator_quality([AnnotatorCounts("solo", 10, 1, 0, 0)])
    assert 0.0 < one.annotators[0].error_rate < 1.0


def test_audit_adds_a_per_annotator_table_when_the_data_names_annotators(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from support_server import random_calibration

    probs, labels = random_calibration(n=300, seed=4)
    who = [f"ann-{i % 3}" if i % 10 else "" for i in range(300)]  # every 10th: unknown
    path = tmp_path / "d.jsonl"
    with path.open("w") as out:
        out.write(json.dumps({"class_names": list(CLASS_NAMES)}) + "\n")
        for i in range(300):
            row = {
                "id": f"ex{i}",
                "labels": [CLASS_NAMES[k] for k in np.flatnonzero(labels[i])],
                "probabilities": probs[i].tolist(),
                "annotator_id": who[i],
            }
            out.write(json.dumps(row) + "\n")
    assert main(["audit", "--data", str(path), "--out", str(tmp_path / "r.jsonl")]) == 0
    printed = capsys.readouterr().out
    report = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    for name in ("ann-0", "ann-1", "ann-2"):
        mine = [r for r, w in zip(report, who, strict=True) if w == name]
        flagged = sum(r["is_issue"] for r in mine)
        line = next(x for x in printed.splitlines() if x.startswith(name + " "))
        assert line.split()[1:3] == [str(len(mine)), str(flagged)]
    assert "3 annotators" in printed
    # no annotator_id in the data: no table
    plain = tmp_path / "plain.jsonl"
    plain.write_text(
        "\n".join(
            json.dumps({k: v for k, v in json.loads(x).items() if k != "annotator_id"})
            for x in path.read_text().splitlines()
        )
        + "\n"
    )
    assert main(["audit", "--data", str(plain), "--out", str(tmp_path / "r2.jsonl")]) == 0
    assert "annotators;" not in capsys.readouterr().out
