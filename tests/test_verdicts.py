"""Reviewers' verdicts through a real server: ReportVerdicts, WatchFlags, GetFlagStats, the CLI.

Real in-process servers on 127.0.0.1 with real outbox files; the probabilities-only
model of support_server (flagged_example() is flagged MISSING on class i % K).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from labelwatch.cli import main
from labelwatch.flag_record import dedupe_key
from labelwatch.metrics import VerdictMetrics
from labelwatch.outbox import VerdictRow
from labelwatch.server import RunningServer
from labelwatch.stats import wilson_interval
from labelwatch.verdicts import Verdict, implicit_verdicts
from labelwatch_proto.labelwatch.v1 import flags_pb2 as fpb
from labelwatch_proto.labelwatch.v1 import flags_pb2_grpc as fpb_grpc
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_delivery import flagged_example
from support_server import CLASS_NAMES, running_server, target_of, write_artifact

CONFIRMED, REJECTED = fpb.VERDICT_CONFIRMED, fpb.VERDICT_REJECTED


@contextlib.contextmanager
def server_on(data_dir: Path, artifact: Path) -> Iterator[tuple[RunningServer, grpc.Channel]]:
    with running_server(thresholds=artifact, data_dir=data_dir) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            yield server, channel


def score_flagged(channel: grpc.Channel, ids: range) -> dict[int, tuple[str, str]]:
    """Score flagged_example(i) for i in ``ids``: {i: (flag_id, the MISSING class)}."""
    request = pb.ScoreRequest(examples=[flagged_example(i) for i in ids])
    results = pb_grpc.LabelQualityStub(channel).Score(request, timeout=30).results
    out = {}
    for i, ex, result in zip(ids, request.examples, results, strict=True):
        missing = CLASS_NAMES[i % len(CLASS_NAMES)]
        assert missing in {x.label for x in result.issues}, f"example {i} was not flagged"
        out[i] = (dedupe_key(ex.id, result.model_version, list(ex.labels)), missing)
    return out


def item(flag_id: str, label: str, verdict: int, reviewer: str, note: str = "") -> Any:
    return fpb.VerdictReport(
        flag_id=flag_id, label=label, verdict=verdict, reviewer=reviewer, note=note
    )


def verdict_count(server: RunningServer, verdict: str, label: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "labelwatch_flag_verdicts_total", {"verdict": verdict, "class": label}
    )
    return value or 0.0


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return write_artifact(tmp_path / "thresholds.json")


def test_report_verdicts_is_idempotent_per_flag_label_and_reviewer(
    tmp_path: Path, artifact: Path
) -> None:
    with server_on(tmp_path / "data", artifact) as (server, channel):
        (flag_id, label), (other_id, other_label) = score_flagged(channel, range(2)).values()
        feed = fpb_grpc.FlagFeedStub(channel)
        first = feed.ReportVerdicts(
            fpb.ReportVerdictsRequest(
                verdicts=[
                    item(flag_id, label, CONFIRMED, "alice", "obviously a cat"),
                    item(other_id, other_label, REJECTED, "alice"),
                    item("0" * 64, label, CONFIRMED, "alice"),
                ]
            ),
            timeout=10,
        )
        assert (first.recorded, first.unchanged, list(first.unknown_flag_ids)) == (
            2,
            0,
            ["0" * 64],
        )
        again = feed.ReportVerdicts(
            fpb.ReportVerdictsRequest(
                verdicts=[item(flag_id, label, CONFIRMED, "alice", "obviously a cat")]
            ),
            timeout=10,
        )
        assert (again.recorded, again.unchanged) == (0, 1)
        changed = feed.ReportVerdicts(
            fpb.ReportVerdictsRequest(
                verdicts=[
                    item(other_id, other_label, CONFIRMED, "alice"),  # alice changes her mind
                    item(other_id, other_label, REJECTED, "bob"),
                ]
            ),
            timeout=10,
        )
        assert (changed.recorded, changed.unchanged) == (2, 0)
        stored = server.delivery.outbox.verdicts_of([flag_id, other_id])
        assert [(v.reviewer, v.verdict, v.note) for v in stored[flag_id]] == [
            ("alice", "CONFIRMED", "obviously a cat")
        ]
        assert sorted((v.reviewer, v.verdict) for v in stored[other_id]) == [
            ("alice", "CONFIRMED"),
            ("bob", "REJECTED"),
        ]
        assert stored[flag_id][0].kind == "missing" and stored[flag_id][0].annotator_id == "ann-1"
        # counted as recorded: a changed verdict counts again under its new value
        assert verdict_count(server, "CONFIRMED", label) == 1
        assert verdict_count(server, "CONFIRMED", other_label) == 1
        assert verdict_count(server, "REJECTED", other_label) == 2


@pytest.mark.parametrize(
    ("label", "verdict", "reviewer", "message"),
    [
        ("fish-or-not", CONFIRMED, "alice", "has no issue for 'fish-or-not'"),
        (None, fpb.VERDICT_UNSPECIFIED, "alice", "verdicts[1].verdict: must be CONFIRMED"),
        (None, CONFIRMED, "", "verdicts[1].reviewer: 1 to 128 characters"),
    ],
    ids=["label-not-flagged", "no-verdict", "no-reviewer"],
)
def test_a_bad_item_refuses_the_whole_request_and_stores_nothing(
    tmp_path: Path, artifact: Path, label: str | None, verdict: int, reviewer: str, message: str
) -> None:
    with server_on(tmp_path / "data", artifact) as (server, channel):
        [(flag_id, flagged)] = score_flagged(channel, range(1)).values()
        request = fpb.ReportVerdictsRequest(
            verdicts=[
                item(flag_id, flagged, CONFIRMED, "alice"),
                item(flag_id, label or flagged, verdict, reviewer),
            ]
        )
        with pytest.raises(grpc.RpcError) as refused:
            fpb_grpc.FlagFeedStub(channel).ReportVerdicts(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in str(refused.value.details())
        assert server.delivery.outbox.verdicts_of([flag_id]) == {}


def test_verdicts_survive_a_restart_and_ride_on_watched_flags_and_stats(
    tmp_path: Path, artifact: Path
) -> None:
    data = tmp_path / "data"
    with server_on(data, artifact) as (_, channel):
        flags = score_flagged(channel, range(10))
        reports = [
            item(flag_id, label, CONFIRMED if i < 7 else REJECTED, "alice")
            for i, (flag_id, label) in flags.items()
        ]
        response = fpb_grpc.FlagFeedStub(channel).ReportVerdicts(
            fpb.ReportVerdictsRequest(verdicts=reports), timeout=10
        )
        assert response.recorded == 10
    with server_on(data, artifact) as (_, channel):
        feed = fpb_grpc.FlagFeedStub(channel)
        stream = feed.WatchFlags(fpb.WatchFlagsRequest(consumer="late-reader"), timeout=30)
        seen = {}
        for flag in stream:
            seen[flag.flag_id] = [(v.label, v.verdict, v.reviewer, v.source) for v in flag.verdicts]
            if len(seen) == len(flags):
                stream.cancel()
                break
        for i, (flag_id, label) in flags.items():
            want = CONFIRMED if i < 7 else REJECTED
            assert seen[flag_id] == [(label, want, "alice", "grpc")]
        stats = feed.GetFlagStats(fpb.GetFlagStatsRequest(), timeout=10)
    # hand count: classes i % 5; i < 7 confirmed
    expected = {name: [0, 0] for name in CLASS_NAMES}
    for i in range(10):
        expected[CLASS_NAMES[i % 5]][0 if i < 7 else 1] += 1
    assert stats.confidence == 0.95
    assert (stats.overall.confirmed, stats.overall.rejected) == (7, 3)
    overall = wilson_interval(7, 10)
    assert (stats.overall.precision, stats.overall.lower, stats.overall.upper) == pytest.approx(
        (0.7, overall.lower, overall.upper)
    )
    assert {c.label: [c.confirmed, c.rejected] for c in stats.classes} == expected
    # the CLI reads the same numbers from the outbox file, server up or down
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["flags", "stats", "--data-dir", str(data), "--json"])
    assert code == 0
    doc = json.loads(buf.getvalue())
    assert doc["overall"]["confirmed"] == 7 and doc["overall"]["rejected"] == 3
    assert doc["overall"]["lower"] == pytest.approx(overall.lower)
    assert {c["label"]: [c["confirmed"], c["rejected"]] for c in doc["classes"]} == expected
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        assert main(["flags", "stats", "--data-dir", str(data)]) == 0
    assert "(all classes)" in table.getvalue() and "0.700" in table.getvalue()


def test_wilson_interval_matches_the_closed_form() -> None:
    z = 1.959963984540054
    n, k = 40, 31
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    got = wilson_interval(k, n)
    assert (got.estimate, got.lower, got.upper) == pytest.approx((p, centre - half, centre + half))
    assert wilson_interval(0, 0) == wilson_interval(0, 0, 0.9)
    assert wilson_interval(5, 5).upper == 1.0 and wilson_interval(0, 5).lower == 0.0


def test_implicit_rule_confirms_a_toggled_tag_and_rejects_one_left_as_it_was() -> None:
    issues = [("a", "missing", 0.9), ("b", "spurious", 0.2), ("c", "missing", 0.8)]
    verdicts = implicit_verdicts(issues, {"a", "b"})  # a added, b kept, c still missing
    assert [(label, v) for label, v, _, _ in verdicts] == [
        ("a", Verdict.CONFIRMED),
        ("b", Verdict.REJECTED),
        ("c", Verdict.REJECTED),
    ]
    assert implicit_verdicts([("b", "spurious", 0.2)], set())[0][1] is Verdict.CONFIRMED


def test_verdict_class_label_is_capped_like_the_per_class_series() -> None:
    registry = CollectorRegistry()
    metrics = VerdictMetrics(registry, CLASS_NAMES, max_class_series=2)
    for label in ("cat", "bird", "not-a-class"):
        metrics.count(VerdictRow("f", label, "r", "CONFIRMED", "", "grpc", "missing", 0.9, ""))
    values = {
        s.labels["class"]: s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "labelwatch_flag_verdicts_total"
    }
    assert values == {"cat": 1.0, "__other__": 2.0}
