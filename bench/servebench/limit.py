"""The limit: onnxruntime and labelwatch's scoring in one process, no network, no server.

For each batch the clients send, the model input is prepared ahead (outside the
clock); the clock covers ``session.run`` and ``labelwatch.scoring.decide`` on the
artifact's fit, the two steps every served request must also pay for.

The limit is the best rate over 1..cores concurrent callers: ``c`` threads share one
onnxruntime session with ``cores // c`` intra-op threads (at least 1), as
``labelwatch serve`` runs ``--model-concurrency`` calls at once with the cores split
between them. One caller alone would leave cores idle that a server can use.

:func:`measure_engine` is the server without the network: labelwatch's engine (batcher,
pipeline, flag outbox) in this process at a given ``--model-concurrency``, fed by caller
threads as gRPC handler threads would feed it (examples built outside the clock).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from labelwatch.calibration import load_artifact
from labelwatch.domain import LabeledExample
from labelwatch.scoring import FilterBy, decide
from servebench.workloads import Rows, ServedModel, batch_indices, make_rows


@dataclass(frozen=True)
class LimitResult:
    """One in-process measurement: throughput and per-call latency of ``batch`` rows.

    ``callers``: concurrent callers; ``intra_op_threads``: onnxruntime threads per call
    (0 for a thresholds-only model, which makes no model call); ``cpu_us_per_example``: this
    process's CPU time per example (robust to other load on shared cores, unlike the rate).
    """

    model: str
    batch: int
    examples_per_s: float
    p50_ms: float
    p99_ms: float
    calls: int
    callers: int = 1
    intra_op_threads: int = 0
    cpu_us_per_example: float = float("nan")


def cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def percentile_ms(seconds: list[float] | NDArray[np.float64], q: float) -> float:
    """The ``q``-th percentile (0-100) of durations in seconds, in milliseconds."""
    if len(seconds) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q) * 1000.0)


def _run_callers(
    callers: int, duration: float, once: Callable[[int], None]
) -> tuple[list[float], float]:
    """``callers`` threads call ``once(i)`` (i = that thread's call count) until ``duration``.

    All start at one instant; each finishes its call in flight. Returns every call's
    latency in seconds and the elapsed seconds from the start to the last call's end.
    """
    latencies: list[list[float]] = [[] for _ in range(callers)]
    ends = [0.0] * callers
    go = threading.Barrier(callers + 1)
    errors: list[BaseException] = []

    def caller(slot: int) -> None:
        try:
            go.wait()
            end = started + duration
            i = slot  # callers start on different batches
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    break
                once(i)
                t1 = time.perf_counter()
                latencies[slot].append(t1 - t0)
                ends[slot] = t1
                i += 1
        except BaseException as exc:  # re-raised in the measuring thread
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(s,), daemon=True) for s in range(callers)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    go.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    flat = [x for per in latencies for x in per]
    return flat, max(max(ends), started + 1e-9) - started


def measure_limit(
    served: ServedModel,
    batch: int,
    duration: float,
    *,
    callers: int = 1,
    intra_op_threads: int | None = None,
    filter_by: FilterBy = FilterBy.CONFIDENT_LEARNING,
) -> LimitResult:
    """Run model + scoring over the clients' batches for ``duration`` seconds.

    ``callers`` threads call concurrently, sharing one session with ``intra_op_threads``
    threads per call (default: cores // callers, at least 1).
    """
    rows = make_rows(served.workload)
    fit = load_artifact(served.thresholds).fit
    intra = intra_op_threads if intra_op_threads is not None else max(1, cores() // callers)
    session = None
    if served.model is not None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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

    def once(i: int) -> None:
        feed, labels = feeds[i % len(feeds)]
        if session is None:
            probs = feed
        else:
            (raw,) = session.run([output_name], {input_name: feed})
            probs = np.asarray(raw, dtype=np.float64)
        decide(fit, probs, labels, filter_by)

    for i in range(len(feeds)):  # warm-up: first runs allocate
        once(i)
    cpu0 = time.process_time()
    latencies, elapsed = _run_callers(callers, duration, once)
    cpu = time.process_time() - cpu0
    return LimitResult(
        model=served.name,
        batch=batch,
        examples_per_s=len(latencies) * batch / elapsed,
        p50_ms=percentile_ms(latencies, 50),
        p99_ms=percentile_ms(latencies, 99),
        calls=len(latencies),
        callers=callers,
        intra_op_threads=intra if session is not None else 0,
        cpu_us_per_example=cpu / max(len(latencies) * batch, 1) * 1e6,
    )


def measure_limits(
    served: ServedModel, batch: int, duration: float, *, max_callers: int | None = None
) -> list[LimitResult]:
    """:func:`measure_limit` at 1, 2, ... ``max_callers`` (default: cores) callers."""
    return [
        measure_limit(served, batch, duration, callers=c)
        for c in range(1, (max_callers or cores()) + 1)
    ]


def best_limit(results: Sequence[LimitResult]) -> LimitResult:
    """The fastest of ``results`` (the limit is the best over caller counts)."""
    return max(results, key=lambda r: r.examples_per_s)


def examples_of(rows: Rows, idx: NDArray[np.int64], tag: str) -> list[LabeledExample]:
    """Validated examples for rows ``idx``, as the codec would hand them to the engine."""
    out = []
    for i in idx:
        j = int(i)
        out.append(
            LabeledExample(
                id=f"{tag}-{j}",
                labels=rows.labels[j],
                text=rows.texts[j] if rows.texts is not None else None,
                features=rows.features[j] if rows.features is not None else None,
                probabilities=rows.probs[j] if rows.probs is not None else None,
            )
        )
    return out


@dataclass(frozen=True)
class EngineResult:
    """labelwatch's engine in-process at one ``--model-concurrency``, fed by ``callers``."""

    model: str
    batch: int
    concurrency: int
    intra_op_threads: int
    callers: int
    examples_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_example: float


def measure_engine(
    served: ServedModel,
    batch: int,
    duration: float,
    *,
    concurrency: str,
    callers: int,
    workers: int = 1,
    work: Path | None = None,
) -> EngineResult:
    """The engine (batcher + pipeline + flag outbox, default settings otherwise) in this
    process, ``callers`` threads each scoring ``batch`` examples a call for ``duration``.

    ``concurrency``: the ``--model-concurrency`` value (``auto`` or a number); ``workers``:
    the ``--workers`` this process stands for (one of them: it only divides the cores).
    """
    from labelwatch.config import Settings
    from labelwatch.engine import Engine

    rows = make_rows(served.workload)
    batches = [
        examples_of(rows, idx, f"b{n}") for n, idx in enumerate(batch_indices(rows.n, batch))
    ]
    with tempfile.TemporaryDirectory(prefix="lw-engine-", dir=work) as tmp:
        settings = Settings(
            model=served.model,
            thresholds=served.thresholds,
            data_dir=Path(tmp),
            metrics_port=None,
            model_concurrency=concurrency,
            workers=workers,
            max_inflight=1 << 20,
        )
        with Engine(settings) as engine:
            model = engine.pipeline.model
            intra = model.session_settings.intra_op_threads if model is not None else 0

            def once(i: int) -> None:
                engine.score(batches[i % len(batches)])

            for i in range(len(batches)):
                once(i)
            cpu0 = time.process_time()
            latencies, elapsed = _run_callers(callers, duration, once)
            cpu = time.process_time() - cpu0
            n = len(latencies) * batch
            return EngineResult(
                model=served.name,
                batch=batch,
                concurrency=engine.batcher.concurrency,
                intra_op_threads=intra,
                callers=callers,
                examples_per_s=n / elapsed,
                p50_ms=percentile_ms(latencies, 50),
                p99_ms=percentile_ms(latencies, 99),
                cpu_us_per_example=cpu / max(n, 1) * 1e6,
            )
