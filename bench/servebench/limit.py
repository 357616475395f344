"""The limit: onnxruntime and labelwatch's scoring in one process, no network, no server.

For each batch the clients send, the model input is prepared ahead (outside the
clock); the clock covers ``session.run`` and ``labelwatch.scoring.decide`` on the
artifact's fit, the two steps every served request must also pay for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from labelwatch.calibration import load_artifact
from labelwatch.scoring import FilterBy, decide
from servebench.workloads import ServedModel, batch_indices, make_rows


@dataclass(frozen=True)
class LimitResult:
    """One in-process measurement: throughput and per-call latency of ``batch`` rows."""

    model: str
    batch: int
    examples_per_s: float
    p50_ms: float
    p99_ms: float
    calls: int


def percentile_ms(seconds: list[float] | NDArray[np.float64], q: float) -> float:
    """The ``q``-th percentile (0-100) of durations in seconds, in milliseconds."""
    if len(seconds) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q) * 1000.0)


def measure_limit(
    served: ServedModel,
    batch: int,
    duration: float,
    *,
    intra_op_threads: int = 0,
    filter_by: FilterBy = FilterBy.CONFIDENT_LEARNING,
) -> LimitResult:
    """Run model + scoring over the clients' batches for ``duration`` seconds (one caller)."""
    rows = make_rows(served.workload)
    fit = load_artifact(served.thresholds).fit
    session = None
    if served.model is not None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        session = ort.InferenceSession(
            str(served.model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        input_name = session.get_inputs()[0].name
        input_rank = len(session.get_inputs()[0].shape)
        output_name = next(
            (o.name for o in session.get_outputs() if o.name == "probabilities"),
            session.get_outputs()[0].name,
        )
    feeds: list[tuple[Any, NDArray[np.bool_]]] = []
    for idx in batch_indices(rows.n, batch):
        if rows.texts is not None:
            text = np.asarray([rows.texts[i] for i in idx], dtype=object)
            feeds.append((text.reshape(-1, 1) if input_rank == 2 else text, rows.labels[idx]))
        elif rows.features is not None:
            feeds.append((rows.features[idx], rows.labels[idx]))
        else:
            assert rows.probs is not None
            feeds.append((rows.probs[idx], rows.labels[idx]))

    def once(feed: Any, labels: NDArray[np.bool_]) -> None:
        if session is None:
            probs = feed
        else:
            (raw,) = session.run([output_name], {input_name: feed})
            probs = np.asarray(raw, dtype=np.float64)
        decide(fit, probs, labels, filter_by)

    for feed, labels in feeds:  # warm-up: first runs allocate
        once(feed, labels)
    latencies: list[float] = []
    started = time.perf_counter()
    end = started + duration
    i = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        feed, labels = feeds[i % len(feeds)]
        once(feed, labels)
        latencies.append(time.perf_counter() - t0)
        i += 1
    elapsed = time.perf_counter() - started
    return LimitResult(
        model=served.name,
        batch=batch,
        examples_per_s=len(latencies) * batch / elapsed,
        p50_ms=percentile_ms(latencies, 50),
        p99_ms=percentile_ms(latencies, 99),
        calls=len(latencies),
    )
