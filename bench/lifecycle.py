"""Benchmark: model reload time under load, and the shadow model's cost per example.

One engine in this process (no network: what is measured is the engine's work), serving
the shipped default model (TF-IDF + logistic regression, 124 debtags classes) from a model
repository whose versions 1 and 2 are copies of it; callers are threads calling
``Engine.score`` with 16 test-split packages each, as the gRPC handler threads do::

    python bench/lifecycle.py            # 4 callers, 8 s per cell, 5 reloads
    python bench/lifecycle.py --quick    # smoke run

*Reload*: while the callers run, the ``current`` marker flips between 1 and 2 and
``Engine.reload`` is timed (load + checks + warm-up + swap); failed calls are counted.
*Shadow*: throughput with no shadow, ``--shadow-fraction`` 0.1 and 1.0, and the shadow
thread's wall time per shadowed example (``labelwatch_shadow_seconds`` sum / examples).
"""

from __future__ import annotations

import argparse
import gc
import gzip
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "service"))

from labelwatch import default_model  # noqa: E402
from labelwatch.config import Settings  # noqa: E402
from labelwatch.domain import LabeledExample  # noqa: E402
from labelwatch.engine import Engine  # noqa: E402

DATA = REPO / "data" / "debtags" / "debtags.jsonl.gz"
BATCH = 16


def _examples(class_names: tuple[str, ...], n: int) -> list[LabeledExample]:
    index = {name: k for k, name in enumerate(class_names)}
    out: list[LabeledExample] = []
    with gzip.open(DATA, "rt") as handle:
        for line in handle:
            row = json.loads(line)
            if row["split"] != "test":
                continue
            labels = np.zeros(len(class_names), dtype=np.bool_)
            for name in row["labels"]:
                if name in index:
                    labels[index[name]] = True
            out.append(LabeledExample(id=row["id"], labels=labels, text=row["text"]))
            if len(out) == n:
                break
    return out


def _repository(root: Path) -> None:
    for name in ("1", "2"):
        folder = root / name
        folder.mkdir(parents=True)
        shutil.copy(default_model.DEFAULT_MODEL, folder / "model.onnx")
        shutil.copy(default_model.DEFAULT_THRESHOLDS, folder / "thresholds.json")
    (root / "current").write_text("1")


class Load:
    """``callers`` threads scoring batches of ``examples`` until stopped."""

    def __init__(self, engine: Engine, examples: list[LabeledExample], callers: int) -> None:
        self.engine = engine
        self.examples = examples
        self.stop = threading.Event()
        self.scored = 0
        self.failed = 0
        self.versions: list[list[str]] = [[] for _ in range(callers)]
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(callers)]

    def _run(self, index: int) -> None:
        i = index * BATCH
        while not self.stop.is_set():
            batch = [self.examples[(i + j) % len(self.examples)] for j in range(BATCH)]
            i += BATCH * len(self.threads)
            try:
                result = self.engine.score(batch)
            except Exception:
                with self._lock:
                    self.failed += 1
                continue
            self.versions[index].append(result.model_version)
            with self._lock:
                self.scored += len(batch)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def _settings(root: Path, data_dir: Path, **extra: Any) -> Settings:
    return Settings(model_repository=root, port=0, metrics_port=None, data_dir=data_dir, **extra)


def _rss_mib() -> float:
    """Resident memory of this process, MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_reload(
    root: Path, tmp: Path, examples: list[LabeledExample], args: Any
) -> dict[str, Any]:
    with Engine(_settings(root, tmp / "reload")) as engine:
        engine.start()
        times: list[float] = []
        replaced: list[weakref.ref[Any]] = []
        with Load(engine, examples, args.callers) as load:
            time.sleep(args.seconds / 4)  # let the load settle before the first reload
            rss_before = _rss_mib()
            for r in range(args.reloads):
                (root / "current").write_text("2" if r % 2 == 0 else "1")
                replaced.append(weakref.ref(engine.pipeline))
                started = time.perf_counter()
                outcome = engine.reload("rpc")
                times.append(time.perf_counter() - started)
                assert outcome.outcome == "swapped", outcome
                time.sleep(args.seconds / args.reloads)
        gc.collect()
        rss_after = _rss_mib()
        alive = sum(ref() is not None for ref in replaced)
        switches = [sum(1 for a, b in itertools.pairwise(v) if a != b) for v in load.versions]
    (root / "current").write_text("1")
    return {
        "reload_seconds": times,
        "reload_median_seconds": statistics.median(times),
        "failed_calls": load.failed,
        "scored": load.scored,
        "switches_per_caller": switches,
        "rss_mib_before_reloads": rss_before,
        "rss_mib_after_reloads": rss_after,
        "replaced_pipelines_alive": alive,
    }


def bench_shadow(
    root: Path, tmp: Path, examples: list[LabeledExample], args: Any, fraction: float | None
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if fraction is not None:
        extra = {"shadow_version": "2", "shadow_fraction": fraction}
    with Engine(_settings(root, tmp / f"shadow-{fraction}", **extra)) as engine:
        engine.start()
        cpu0 = time.process_time()
        started = time.perf_counter()
        with Load(engine, examples, args.callers) as load:
            time.sleep(args.seconds)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        if engine.shadow is not None:
            engine.shadow.wait_idle(60)
        reg = engine.registry
        shadowed = sum(
            s.value
            for m in reg.collect()
            if m.name == "labelwatch_shadow_examples"
            for s in m.samples
            if s.name == "labelwatch_shadow_examples_total"
        )
        seconds = reg.get_sample_value("labelwatch_shadow_seconds_sum") or 0.0
        dropped = reg.get_sample_value("labelwatch_shadow_dropped_total") or 0.0
    return {
        "fraction": fraction,
        "examples_per_second": load.scored / wall,
        "process_cpu_us_per_example": 1e6 * cpu / max(1, load.scored),
        "shadowed": shadowed,
        "dropped": dropped,
        "shadow_us_per_example": 1e6 * seconds / shadowed if shadowed else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short cells")
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0, help="per cell")
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "lifecycle.json")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.reloads = 1.0, 2
    with tempfile.TemporaryDirectory(prefix="labelwatch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "repo"
        _repository(root)
        with Engine(_settings(root, tmp / "probe")) as probe:
            examples = _examples(probe.spec.class_names, 512)
        reload = bench_reload(root, tmp, examples, args)
        shadow = [bench_shadow(root, tmp, examples, args, f) for f in (None, 0.1, 1.0)]
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "callers": args.callers,
        "seconds_per_cell": args.seconds,
        "reload": reload,
        "shadow": shadow,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    median_ms = reload["reload_median_seconds"] * 1000
    print(f"reload (load + checks + warm-up + swap), {args.callers} callers scoring meanwhile:")
    print(f"  median {median_ms:.0f} ms over {len(reload['reload_seconds'])} reloads")
    print(f"  failed calls {reload['failed_calls']}")
    print(f"  version switches per caller {reload['switches_per_caller']}")
    before, after = reload["rss_mib_before_reloads"], reload["rss_mib_after_reloads"]
    print(f"  resident memory before the reloads {before:.0f} MiB, after {after:.0f} MiB")
    print(
        f"  replaced pipelines still alive after the reloads: {reload['replaced_pipelines_alive']}"
    )
    header = ("shadow fraction", "examples/s", "process CPU µs/example", "shadow µs/example")
    print("| " + " | ".join((*header, "dropped")) + " |")
    print("|---|---|---|---|---|")
    for row in shadow:
        per = row["shadow_us_per_example"]
        print(
            f"| {'none' if row['fraction'] is None else row['fraction']} "
            f"| {row['examples_per_second']:,.0f} | {row['process_cpu_us_per_example']:.0f} "
            f"| {'-' if per is None else f'{per:.0f}'} | {int(row['dropped'])} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
