"""Benchmark: labelwatch's scoring core against cleanlab 2.9.0 on the same arrays.

One command, one table on stdout, the raw numbers as JSON::

    python bench/scoring.py            # N=100k K=100 and N=10k K=2000, median of 5
    python bench/scoring.py --quick    # small sizes, for a smoke run

Operations: confident thresholds, per-class flags (confident_learning and
prune_by_noise_rate) and label-quality scores (self_confidence + EMA pooling).
cleanlab runs with ``n_jobs=1`` and with its default ``n_jobs`` (where it has
the argument); its inputs are pre-converted to its list-of-lists format, outside
the timed region. Each pair of outputs is checked to agree before timing counts.
A cleanlab run slower than ``--slow-run`` seconds is not repeated (reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "service"))

import cleanlab  # noqa: E402
from cleanlab.count import get_confident_thresholds  # noqa: E402
from cleanlab.multilabel_classification.filter import (  # noqa: E402
    find_label_issues as cl_find_label_issues,
)
from cleanlab.multilabel_classification.rank import get_label_quality_scores  # noqa: E402

from labelwatch.scoring import (  # noqa: E402
    FilterBy,
    find_label_issues,
    fit_thresholds,
    label_quality_scores,
)

FULL_SIZES = ((100_000, 100), (10_000, 2_000))
QUICK_SIZES = ((10_000, 20), (2_000, 200))


@dataclass(frozen=True)
class Row:
    """One benchmark row; times are medians in seconds (``None``: not applicable)."""

    n: int
    k: int
    operation: str
    labelwatch_s: float
    cleanlab_1job_s: float
    cleanlab_default_s: float | None
    labelwatch_repeats: int
    cleanlab_1job_repeats: int
    cleanlab_default_repeats: int
    agree: bool

    @property
    def ratio_1job(self) -> float:
        return self.cleanlab_1job_s / self.labelwatch_s

    @property
    def ratio_default(self) -> float | None:
        if self.cleanlab_default_s is None:
            return None
        return self.cleanlab_default_s / self.labelwatch_s


def make_data(n: int, k: int, seed: int) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """``(pred_probs (n, k), labels (n, k))``: an informative model, ~5% flipped tags."""
    rng = np.random.default_rng(seed)
    truth = rng.random((n, k)) < rng.uniform(0.02, 0.3, k)
    logits = np.where(truth, rng.normal(1.5, 1.3, (n, k)), rng.normal(-1.5, 1.3, (n, k)))
    probs = 1.0 / (1.0 + np.exp(-logits))
    labels = truth ^ (rng.random((n, k)) < 0.05)
    return probs, labels


def timed(fn: Callable[[], Any], repeats: int, slow_run: float) -> tuple[float, int, Any]:
    """``(median seconds, runs made, last result)``; no more runs after one over ``slow_run``."""
    times: list[float] = []
    result: Any = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
        if times[-1] > slow_run:
            break
    return statistics.median(times), len(times), result


def bench_size(n: int, k: int, repeats: int, slow_run: float, seed: int) -> list[Row]:
    """Time every operation at one size; print progress to stderr."""
    probs, labels = make_data(n, k, seed)
    as_lists = [np.flatnonzero(row).tolist() for row in labels]
    ops: list[
        tuple[str, Callable[[], Any], Callable[[int | None], Any] | None, Callable[..., bool]]
    ]
    ops = [
        (
            "thresholds",
            lambda: fit_thresholds(probs, labels),
            lambda _jobs: get_confident_thresholds(as_lists, probs, multi_label=True),
            lambda ours, theirs: (
                np.allclose(ours.t0, theirs[:, 0]) and np.allclose(ours.t1, theirs[:, 1])
            ),
        ),
        *(
            (
                f"flags {rule.value}",
                lambda rule=rule: find_label_issues(probs, labels, filter_by=rule),
                lambda jobs, rule=rule: cl_find_label_issues(
                    as_lists, probs, filter_by=rule.value, n_jobs=jobs
                ),
                lambda ours, theirs: bool(np.array_equal(ours.any(axis=1), theirs)),
            )
            for rule in (FilterBy.CONFIDENT_LEARNING, FilterBy.PRUNE_BY_NOISE_RATE)
        ),
        (
            "scores self_confidence+ema",
            lambda: label_quality_scores(probs, labels),
            lambda _jobs: get_label_quality_scores(as_lists, probs),
            lambda ours, theirs: bool(np.allclose(ours, theirs, rtol=0, atol=1e-9)),
        ),
    ]
    rows = []
    for name, ours, theirs, same in ops:
        print(f"  N={n} K={k} {name} ...", file=sys.stderr, flush=True)
        lw_s, lw_runs, lw_out = timed(ours, repeats, slow_run)
        one_s, one_runs, one_out = timed(lambda theirs=theirs: theirs(1), repeats, slow_run)
        default_s: float | None = None
        default_runs = 0
        if name.startswith("flags"):  # the only cleanlab calls here that take n_jobs
            default_s, default_runs, _ = timed(
                lambda theirs=theirs: theirs(None), repeats, slow_run
            )
        rows.append(
            Row(
                n,
                k,
                name,
                lw_s,
                one_s,
                default_s,
                lw_runs,
                one_runs,
                default_runs,
                same(lw_out, one_out),
            )
        )
    return rows


def table(rows: list[Row], repeats: int) -> str:
    """Markdown table of ``rows``; a run count below ``repeats`` is shown as ``(xR)``."""

    def cell(seconds: float | None, runs: int) -> str:
        if seconds is None:
            return "n/a"
        return f"{seconds:.3f}" + (f" ({runs}x)" if runs < repeats else "")

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}x"

    lines = [
        "| N | K | operation | labelwatch s | cleanlab n_jobs=1 s | ratio | "
        "cleanlab default n_jobs s | ratio | agree |",
        "|---:|---:|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.n:,} | {r.k:,} | {r.operation} "
            f"| {cell(r.labelwatch_s, r.labelwatch_repeats)} "
            f"| {cell(r.cleanlab_1job_s, r.cleanlab_1job_repeats)} | {ratio(r.ratio_1job)} "
            f"| {cell(r.cleanlab_default_s, r.cleanlab_default_repeats)} "
            f"| {ratio(r.ratio_default)} | {'yes' if r.agree else 'NO'} |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """What the numbers depend on."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cleanlab": cleanlab.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "thread_env": {
            key: os.environ[key]
            for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
            if key in os.environ
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes {QUICK_SIZES}.")
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing (median).")
    parser.add_argument(
        "--slow-run",
        type=float,
        default=180.0,
        help="seconds; a run slower than this is not repeated (default 180).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "scoring.json", help="JSON output."
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # cleanlab's own, per call
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    started = time.perf_counter()
    rows = [
        row for n, k in sizes for row in bench_size(n, k, args.repeats, args.slow_run, args.seed)
    ]
    text = table(rows, args.repeats)
    print(text)
    print(
        f"\nmedian of {args.repeats} runs; ratio = cleanlab time / labelwatch time; "
        "'(3x)' = only 3 runs, as one took longer than --slow-run; cleanlab's scores and "
        "thresholds take no n_jobs (n/a)."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": "python bench/scoring.py" + (" --quick" if args.quick else ""),
        "repeats": args.repeats,
        "slow_run_s": args.slow_run,
        "environment": environment(),
        "total_s": time.perf_counter() - started,
        "rows": [
            {**asdict(r), "ratio_1job": r.ratio_1job, "ratio_default": r.ratio_default}
            for r in rows
        ],
        "table_markdown": text,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if all(r.agree for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
