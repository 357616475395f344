"""Exact metric values: Metrics on an injected registry, and the real server after a workload."""

from __future__ import annotations

import doctest
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

import labelwatch.drift
from labelwatch import __version__
from labelwatch.calibration import load_artifact
from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.drift import FlagWindow, SparseFlags, cap_classes, drift_ratio
from labelwatch.metrics import OTHER_CLASS, Metrics
from labelwatch.scoring import FilterBy, decide
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_delivery import wait_until
from support_server import (
    CLASS_NAMES,
    random_calibration,
    running_server,
    target_of,
    write_artifact,
)

SERVICE = "labelwatch.v1.LabelQuality"


def scored_batch(
    labels: NDArray[np.bool_],
    flags: NDArray[np.bool_],
    quality: NDArray[np.float64] | None = None,
    version: str = "m-1",
) -> ScoredBatch:
    n, k = labels.shape
    examples = tuple(LabeledExample(id=f"ex-{i}", labels=labels[i]) for i in range(n))
    return ScoredBatch(
        examples=examples,
        probabilities=np.zeros((n, k)),
        labels=labels,
        flags=flags,
        label_quality=np.full(n, 0.5) if quality is None else quality,
        t0=np.full(k, 0.5),
        t1=np.full(k, 0.5),
        model_version=version,
    )


def sample(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


def metrics_on_new_registry(**kwargs: int) -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return Metrics(registry, **kwargs), registry  # type: ignore[arg-type]


# A batch of 4 examples over 3 classes with known flags:
#   ex0 tagged {a},   flagged a (SPURIOUS) and b (MISSING)
#   ex1 tagged {b},   no flag
#   ex2 tagged {},    flagged c (MISSING)
#   ex3 tagged {a,c}, flagged c (SPURIOUS)
NAMES = ("a", "b", "c")
LABELS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=bool)
FLAGS = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=bool)


def test_record_batch_counts_examples_flags_by_class_and_kind_and_scores() -> None:
    metrics, registry = metrics_on_new_registry()
    quality = np.array([0.12, 0.97, 0.33, 0.51])
    metrics.record_batch(scored_batch(LABELS, FLAGS, quality), NAMES)
    metrics.record_batch(scored_batch(LABELS[:1], FLAGS[:1], quality[:1]), NAMES)

    assert sample(registry, "labelwatch_examples_scored_total", model_version="m-1") == 5
    assert sample(registry, "labelwatch_examples_flagged_total", model_version="m-1") == 4
    flags = {
        (c, k): sample(registry, "labelwatch_class_flags_total", **{"class": c, "kind": k})
        for c in NAMES
        for k in ("MISSING", "SPURIOUS")
    }
    assert flags == {
        ("a", "MISSING"): None,
        ("a", "SPURIOUS"): 2,
        ("b", "MISSING"): 2,
        ("b", "SPURIOUS"): None,
        ("c", "MISSING"): 1,
        ("c", "SPURIOUS"): 1,
    }
    assert sample(registry, "labelwatch_label_quality_count") == 5
    assert sample(registry, "labelwatch_label_quality_sum") == pytest.approx(2.05)
    assert sample(registry, "labelwatch_label_quality_bucket", le="0.15") == 2
    assert sample(registry, "labelwatch_label_quality_bucket", le="0.35") == 3
    assert sample(registry, "labelwatch_batch_size_examples_count") == 2
    assert sample(registry, "labelwatch_batch_size_examples_sum") == 5
    assert sample(registry, "labelwatch_batch_size_examples_bucket", le="1.0") == 1


def test_an_empty_batch_counts_only_its_size() -> None:
    metrics, registry = metrics_on_new_registry()
    metrics.record_batch(scored_batch(LABELS[:0], FLAGS[:0]), NAMES)
    assert sample(registry, "labelwatch_batch_size_examples_count") == 1
    assert sample(registry, "labelwatch_examples_scored_total", model_version="m-1") is None
    assert sample(registry, "labelwatch_drift_window_examples") is None


def test_classes_past_the_cap_are_summed_under_other() -> None:
    metrics, registry = metrics_on_new_registry(max_class_series=1)
    metrics.set_calibration(NAMES, np.array([[0.1, 0.2], [0.05, 0.0], [0.15, 0.1]]))
    metrics.record_batch(scored_batch(LABELS, FLAGS), NAMES)

    classes = {
        s.labels["class"]
        for family in registry.collect()
        for s in family.samples
        if "class" in s.labels
    }
    assert classes == {"a", OTHER_CLASS}
    flags = "labelwatch_class_flags_total"
    assert sample(registry, flags, **{"class": "a", "kind": "SPURIOUS"}) == 1
    assert sample(registry, flags, **{"class": OTHER_CLASS, "kind": "MISSING"}) == 2  # b + c
    assert sample(registry, flags, **{"class": OTHER_CLASS, "kind": "SPURIOUS"}) == 1  # c
    rate = "labelwatch_class_flag_rate"
    other_cal = sample(
        registry, rate, **{"class": OTHER_CLASS, "kind": "MISSING"}, window="calibration"
    )
    assert other_cal == pytest.approx(0.05 + 0.15)
    other_recent = sample(
        registry, rate, **{"class": OTHER_CLASS, "kind": "MISSING"}, window="recent"
    )
    assert other_recent == pytest.approx(2 / 4)


def test_series_count_stays_bounded_for_thousands_of_classes() -> None:
    k, cap = 3000, 50
    names = tuple(f"class-{i}" for i in range(k))
    metrics, registry = metrics_on_new_registry(max_class_series=cap)
    rng = np.random.default_rng(0)
    labels = rng.random((200, k)) < 0.01
    flags = rng.random((200, k)) < 0.01
    metrics.set_calibration(names, np.full((k, 2), 1e-4))
    metrics.record_batch(scored_batch(labels, flags), names)

    per_class = [
        s
        for family in registry.collect()
        for s in family.samples
        if s.name in ("labelwatch_class_flags_total", "labelwatch_class_flag_rate")
    ]
    assert len({s.labels["class"] for s in per_class}) <= cap + 1
    assert len(per_class) <= (cap + 1) * 2 * 3  # counter by kind + two rate windows by kind
    total = sum(s.value for s in per_class if s.name == "labelwatch_class_flags_total")
    assert total == flags.sum()  # aggregation loses no flag


def test_drift_gauges_compare_the_recent_window_with_calibration() -> None:
    metrics, registry = metrics_on_new_registry()
    calibration = np.array([[0.1, 0.0], [0.2, 0.05], [0.0, 0.15]])
    metrics.set_calibration(NAMES, calibration)
    metrics.record_batch(scored_batch(LABELS, FLAGS), NAMES)

    rate = "labelwatch_class_flag_rate"
    recent = {
        (c, k): sample(registry, rate, **{"class": c, "kind": k}, window="recent")
        for c in NAMES
        for k in ("MISSING", "SPURIOUS")
    }
    assert recent == {
        ("a", "MISSING"): 0.0,
        ("a", "SPURIOUS"): 0.25,
        ("b", "MISSING"): 0.25,
        ("b", "SPURIOUS"): 0.0,
        ("c", "MISSING"): 0.25,
        ("c", "SPURIOUS"): 0.25,
    }
    assert (
        sample(registry, rate, **{"class": "b", "kind": "SPURIOUS"}, window="calibration") == 0.05
    )
    assert sample(registry, "labelwatch_drift_window_examples") == 4
    # 4 flags over 4 examples = 1.0 per example, against 0.5 per example at calibration
    assert sample(registry, "labelwatch_drift_ratio") == pytest.approx(1.0 / 0.5)


def test_drift_window_slides_by_example_count() -> None:
    metrics = Metrics(CollectorRegistry(), drift_window_examples=4)
    registry = metrics.registry
    metrics.set_calibration(NAMES, np.full((3, 2), 0.1))
    metrics.record_batch(scored_batch(LABELS, FLAGS), NAMES)  # 4 flags in 4 examples
    clean = np.zeros((3, 3), dtype=bool)
    metrics.record_batch(scored_batch(clean, clean), NAMES)  # pushes ex0..ex2 out
    assert sample(registry, "labelwatch_drift_window_examples") == 4
    rate = "labelwatch_class_flag_rate"
    assert sample(registry, rate, **{"class": "c", "kind": "SPURIOUS"}, window="recent") == 0.25
    assert sample(registry, rate, **{"class": "b", "kind": "MISSING"}, window="recent") == 0.0
    assert sample(registry, "labelwatch_drift_ratio") == pytest.approx(0.25 / 0.6)


def test_without_calibration_rates_only_recent_series_and_no_ratio() -> None:
    metrics, registry = metrics_on_new_registry()
    metrics.set_calibration(NAMES, None)
    assert sample(registry, "labelwatch_drift_ratio") is None
    metrics.record_batch(scored_batch(LABELS, FLAGS), NAMES)
    rate = "labelwatch_class_flag_rate"
    assert sample(registry, rate, **{"class": "a", "kind": "SPURIOUS"}, window="recent") == 0.25
    assert (
        sample(registry, rate, **{"class": "a", "kind": "SPURIOUS"}, window="calibration") is None
    )
    assert sample(registry, "labelwatch_drift_ratio") is None


def test_drift_ratio_is_nan_until_the_first_example() -> None:
    metrics, registry = metrics_on_new_registry()
    metrics.set_calibration(NAMES, np.full((3, 2), 0.1))
    assert sample(registry, "labelwatch_drift_window_examples") == 0
    ratio = sample(registry, "labelwatch_drift_ratio")
    assert ratio is not None and math.isnan(ratio)


def test_calibration_rates_of_the_wrong_shape_are_refused() -> None:
    metrics, _ = metrics_on_new_registry()
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        metrics.set_calibration(NAMES, np.zeros((2, 2)))


def test_process_and_platform_metrics_are_on_the_injected_registry() -> None:
    _, registry = metrics_on_new_registry()
    assert (sample(registry, "process_start_time_seconds") or 0) > 0
    assert (sample(registry, "process_resident_memory_bytes") or 0) > 0
    names = {family.name for family in registry.collect()}
    assert "python_info" in names
    _, bare = metrics_on_new_registry(process_metrics=False)
    assert sample(bare, "process_start_time_seconds") is None


def test_two_registries_keep_separate_counts() -> None:
    first, reg1 = metrics_on_new_registry()
    _, reg2 = metrics_on_new_registry()
    first.record_batch(scored_batch(LABELS, FLAGS), NAMES)
    assert sample(reg1, "labelwatch_examples_scored_total", model_version="m-1") == 4
    assert sample(reg2, "labelwatch_examples_scored_total", model_version="m-1") is None


# --- drift window math ----------------------------------------------------------------------


def test_drift_module_doctests_pass() -> None:
    result = doctest.testmod(labelwatch.drift)
    assert result.attempted > 0 and result.failed == 0


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 12),
    batches=st.lists(st.integers(0, 9), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_window_counts_equal_a_brute_force_count_of_the_last_examples(
    size: int, batches: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    k = 3
    window = FlagWindow(k, size)
    all_missing, all_spurious = np.zeros((0, k), bool), np.zeros((0, k), bool)
    for n in batches:
        flags, labels = rng.random((n, k)) < 0.4, rng.random((n, k)) < 0.5
        window.add(SparseFlags.from_masks(flags, labels))
        all_missing = np.vstack([all_missing, flags & ~labels])
        all_spurious = np.vstack([all_spurious, flags & labels])
        last_m, last_s = all_missing[-size:], all_spurious[-size:]
        assert window.n_examples == len(last_m)
        expected = np.stack([last_m.sum(axis=0), last_s.sum(axis=0)], axis=1)
        assert window.counts.tolist() == expected.tolist()
        if len(last_m):
            np.testing.assert_allclose(window.rates(), expected / len(last_m))


def test_a_batch_larger_than_the_window_keeps_its_last_rows() -> None:
    window = FlagWindow(1, size=2)
    flags = np.array([[True], [False], [True]])
    window.add(SparseFlags.from_masks(flags, np.zeros((3, 1), bool)))
    assert (window.n_examples, window.counts.tolist()) == (2, [[1, 0]])


def test_sparse_flags_count_missing_and_spurious_per_class() -> None:
    flags = SparseFlags.from_masks(FLAGS, LABELS)
    assert flags.per_class().tolist() == [[0, 1], [1, 0], [1, 1]]
    assert flags.rows.tolist() == sorted(flags.rows.tolist())
    assert flags.tail(2).per_class().tolist() == [[0, 0], [0, 0], [1, 1]]


def test_window_and_sparse_flags_refuse_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="over 3 classes"):
        FlagWindow(2).add(SparseFlags.from_masks(np.zeros((1, 3), bool), np.zeros((1, 3), bool)))
    with pytest.raises(ValueError, match=r"\(n, K\)"):
        SparseFlags.from_masks(np.zeros((1, 3), bool), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="at least 1"):
        FlagWindow(2, size=0)


def test_cap_classes_leaves_few_classes_alone_and_sums_the_rest() -> None:
    rates = np.arange(8, dtype=float).reshape(4, 2)
    assert cap_classes(rates, 4) is rates
    assert cap_classes(rates, 2).tolist() == [[0, 1], [2, 3], [10, 12]]
    assert cap_classes(rates, 0).tolist() == [[12, 16]]


@pytest.mark.parametrize(
    ("recent", "calibration", "n", "expected"),
    [(0.3, 0.1, 10, 3.0), (0.05, 0.1, 10, 0.5), (0.0, 0.0, 10, 1.0), (0.2, 0.0, 10, math.inf)],
)
def test_drift_ratio_definition(recent: float, calibration: float, n: int, expected: float) -> None:
    assert drift_ratio(recent, calibration, n) == pytest.approx(expected)


# --- the real server after a known workload -------------------------------------------------


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_artifact(tmp_path_factory.mktemp("metrics") / "thresholds.json")


def _request(probs: NDArray[np.float64], labels: NDArray[np.bool_], start: int) -> pb.ScoreRequest:
    return pb.ScoreRequest(
        examples=[
            pb.Example(
                id=f"ex-{start + i}",
                probabilities=pb.Probabilities(values=p.tolist()),
                labels=[CLASS_NAMES[k] for k in np.flatnonzero(y)],
            )
            for i, (p, y) in enumerate(zip(probs, labels, strict=True))
        ]
    )


@dataclass(frozen=True)
class Workload:
    """What the server scored, and its metrics registry afterwards."""

    registry: CollectorRegistry
    probs: NDArray[np.float64]
    labels: NDArray[np.bool_]
    version: str
    batches: list[int]


def _stream_counted(registry: CollectorRegistry) -> bool:
    """Whether ScoreStream's call is in ``grpc_server_handled_total`` yet (any code)."""
    labels = {"grpc_service": SERVICE, "grpc_method": "ScoreStream", "grpc_type": "bidi_stream"}
    return registry.get_sample_value("grpc_server_handling_seconds_count", labels) is not None


@pytest.fixture(scope="module")
def workload(artifact_path: Path) -> Iterator[Workload]:
    """Score 3 unary batches (10 + 25 + 5), a 2-message stream (7 + 8), one invalid request."""
    probs, labels = random_calibration(n=55, seed=7)
    sizes = [10, 25, 5]
    with running_server(thresholds=artifact_path) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            start = 0
            for size in sizes:
                end = start + size
                stub.Score(_request(probs[start:end], labels[start:end], start))
                start = end
            stream = [
                _request(probs[40:47], labels[40:47], 40),
                _request(probs[47:], labels[47:], 47),
            ]
            assert len(list(stub.ScoreStream(iter(stream)))) == 2
            # a stream that ended normally is counted at its termination, just after its end
            registry = server.metrics.registry
            wait_until(lambda: _stream_counted(registry), 30.0, "ScoreStream's count", 0.01)
            bad = pb.ScoreRequest(
                examples=[pb.Example(id="bad", probabilities=pb.Probabilities(values=[1.5] * 5))]
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.Score(bad)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            info = stub.GetModelInfo(pb.GetModelInfoRequest())
        yield Workload(server.metrics.registry, probs, labels, info.version, [*sizes, 7, 8])


def test_scoring_metrics_after_a_known_workload_are_exact(
    workload: Workload, artifact_path: Path
) -> None:
    registry, probs, labels = workload.registry, workload.probs, workload.labels
    decision = decide(load_artifact(artifact_path).fit, probs, labels, FilterBy.CONFIDENT_LEARNING)
    version = workload.version
    n = len(probs)

    assert sample(registry, "labelwatch_examples_scored_total", model_version=version) == n
    flagged = sample(registry, "labelwatch_examples_flagged_total", model_version=version)
    assert (flagged or 0) == int(decision.is_issue.sum()) > 0
    for kind, mask in (("MISSING", decision.missing), ("SPURIOUS", decision.spurious)):
        for k, name in enumerate(CLASS_NAMES):
            got = sample(registry, "labelwatch_class_flags_total", **{"class": name, "kind": kind})
            assert (got or 0) == int(mask[:, k].sum()), (name, kind)
    assert sample(registry, "labelwatch_label_quality_count") == n
    assert sample(registry, "labelwatch_label_quality_sum") == pytest.approx(
        float(decision.label_quality.sum())
    )
    batches = workload.batches
    assert sample(registry, "labelwatch_batch_size_examples_count") == len(batches)
    assert sample(registry, "labelwatch_batch_size_examples_sum") == sum(batches)
    assert sample(registry, "labelwatch_scoring_seconds_count") == len(batches)
    assert sample(registry, "labelwatch_model_inference_seconds_count") == 0  # probabilities only


def test_grpc_metrics_after_a_known_workload_are_exact(workload: Workload) -> None:
    def grpc_sample(name: str, method: str, rpc_type: str, **extra: str) -> float | None:
        labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": rpc_type}
        return sample(workload.registry, name, **labels, **extra)

    handled = "grpc_server_handled_total"
    assert grpc_sample("grpc_server_started_total", "Score", "unary") == 4
    assert grpc_sample(handled, "Score", "unary", grpc_code="OK") == 3
    assert grpc_sample(handled, "Score", "unary", grpc_code="INVALID_ARGUMENT") == 1
    assert grpc_sample("grpc_server_handling_seconds_count", "Score", "unary") == 4
    assert grpc_sample("grpc_server_started_total", "ScoreStream", "bidi_stream") == 1
    assert grpc_sample(handled, "ScoreStream", "bidi_stream", grpc_code="OK") == 1
    assert grpc_sample(handled, "GetModelInfo", "unary", grpc_code="OK") == 1


def test_model_and_build_info_after_start(workload: Workload) -> None:
    registry = workload.registry
    model = {"name": "probabilities-only", "version": workload.version, "sha256": ""}
    assert sample(registry, "labelwatch_model_info", **model) == 1
    assert sample(registry, "labelwatch_build_info", version=__version__) == 1


def test_server_exports_calibration_rates_and_drift_after_a_known_workload(
    workload: Workload, artifact_path: Path
) -> None:
    registry, probs, labels = workload.registry, workload.probs, workload.labels
    fit = load_artifact(artifact_path).fit
    calibration = fit.flag_rates[FilterBy.CONFIDENT_LEARNING.value]
    decision = decide(fit, probs, labels, FilterBy.CONFIDENT_LEARNING)
    n = len(probs)
    rate = "labelwatch_class_flag_rate"
    kinds = (("MISSING", decision.missing), ("SPURIOUS", decision.spurious))
    for k, name in enumerate(CLASS_NAMES):
        for col, (kind, mask) in enumerate(kinds):
            series = {"class": name, "kind": kind}
            assert sample(registry, rate, **series, window="calibration") == pytest.approx(
                calibration[k, col]
            ), "server.start() must call metrics.set_calibration(...)"
            assert sample(registry, rate, **series, window="recent") == pytest.approx(
                mask[:, k].sum() / n
            )
    assert sample(registry, "labelwatch_drift_window_examples") == n
    expected = (decision.flags.sum() / n) / calibration.sum()
    assert sample(registry, "labelwatch_drift_ratio") == pytest.approx(expected)
