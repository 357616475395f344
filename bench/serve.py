"""Benchmark: labelwatch served over gRPC against the in-process limit and the MLServer peer.

One command, all numbers from one run on this machine::

    python bench/serve.py                 # the full run (~20-25 min on 2 cores)
    python bench/serve.py --quick         # a smoke run (< 3 min): fewer cells, short cells
    python bench/serve.py --write-docs    # also rewrite the generated part of docs/performance.md

What it measures (``docs/performance.md`` explains each part and how to read it):

1. the limit: onnxruntime + ``labelwatch.scoring.decide`` in one process, no network, the
   best rate over 1..cores concurrent callers (onnxruntime's threads split between them);
   and labelwatch's engine in-process at each ``--model-concurrency`` (section ``engine``);
2. ``labelwatch serve`` on 127.0.0.1 (a subprocess) at workers 1 and 2: unary batch 1
   (latency), unary batch 64 and ScoreStream (examples/s) at 1, 8 (16) and 64 clients,
   the clients in separate processes;
3. the peer: the same ONNX model in MLServer (bench/peer/, its own venv from
   ``bash bench/peer/setup_mlserver.sh``), with cleanlab scoring on the client, and
   MLServer alone (model only); skipped, and said so, when the venv is absent;
4. memory at 64 concurrent streams, and the per-example cost as the number of classes
   K grows (thresholds-only server, synthetic probabilities);
5. tuning: onnxruntime intra-op threads, spin-waiting and ``--model-concurrency`` per worker
   count, batch window.

Each cell is repeated and the median reported; labelwatch and the peer run their
repeats interleaved, so a change in machine load hits both. Prints the tables (progress
goes to stderr) and writes the raw numbers to ``bench/results/serve.json``
(``serve-quick.json`` for ``--quick``, so a smoke run never overwrites a full one).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from servebench import report  # noqa: E402
from servebench.clients import CellResult, CellSpec, ClientPool  # noqa: E402
from servebench.limit import cores, measure_engine, measure_limit, measure_limits  # noqa: E402
from servebench.report import Summary, ratio, summarize  # noqa: E402
from servebench.servers import (  # noqa: E402
    PEER_VENV,
    LabelwatchConfig,
    LabelwatchServer,
    MlserverServer,
    PeerConfig,
    peer_available,
)
from servebench.workloads import (  # noqa: E402
    REPO,
    ServedModel,
    float_model,
    probs_model,
    text_model,
)

RESULTS = BENCH / "results"
DOCS = REPO / "docs" / "performance.md"
BEGIN = "<!-- bench/serve.py: generated from here -->"
END = "<!-- bench/serve.py: generated up to here -->"

Cell = tuple[str, int, int]
"""(mode, batch, clients)."""


@dataclass(frozen=True)
class Plan:
    """What a run measures and for how long (seconds per cell, repeats per cell)."""

    duration: float
    repeats: int
    limit_duration: float
    models: tuple[str, ...]
    workers: tuple[int, ...]
    cells: tuple[Cell, ...]
    memory_workers: tuple[int, ...]
    k_values: tuple[int, ...]
    tuning_workers: tuple[int, ...]
    tuning_intra: tuple[int, ...]
    tuning_spinning: tuple[bool, ...]
    windows: tuple[float, ...]
    processes: int
    engine_callers: int = 8
    tuning_concurrency: tuple[str, ...] = ("1", "auto")
    peer: bool = True
    outbox_syncs: tuple[str, ...] = ("full",)
    cleanlab_repeats: int = 1


FULL = Plan(
    duration=1.2,
    repeats=3,
    limit_duration=2.0,
    models=("text", "float"),
    workers=(1, 2),
    cells=(
        ("unary", 1, 1),
        ("unary", 1, 8),
        ("unary", 1, 16),
        ("unary", 1, 64),
        ("unary", 64, 1),
        ("unary", 64, 8),
        ("unary", 64, 64),
        ("stream", 64, 1),
        ("stream", 64, 8),
        ("stream", 64, 64),
        ("columnar", 64, 1),
        ("columnar", 64, 8),
        ("columnar", 64, 64),
    ),
    memory_workers=(1, 2),
    k_values=(10, 100, 1000, 10000),
    tuning_workers=(1, 2),
    tuning_intra=(1, 2, 0),
    tuning_spinning=(True, False),
    windows=(0.0, 1.0, 2.0, 5.0),
    processes=16,
)
QUICK = Plan(
    duration=0.5,
    repeats=1,
    limit_duration=0.5,
    models=("text", "float"),
    workers=(1,),
    cells=(
        ("unary", 1, 1),
        ("unary", 1, 16),
        ("unary", 64, 8),
        ("stream", 64, 8),
        ("columnar", 64, 8),
    ),
    memory_workers=(1,),
    k_values=(10, 1000),
    tuning_workers=(1,),
    tuning_intra=(0,),
    tuning_spinning=(True, False),
    windows=(0.0, 2.0),
    processes=8,
)
TUNING_CELLS: tuple[tuple[str, Cell], ...] = (
    ("b1_c1", ("unary", 1, 1)),
    ("b1_c16", ("unary", 1, 16)),
    ("b64_c8", ("unary", 64, 8)),
)
SYSTEMS_WITH_PEER = ("labelwatch", "peer", "peer-model")
LIMIT_TARGET = 0.85
"""Default ``serve`` at batch 64 must reach this share of the best in-process rate."""
CLEANLAB_MODES = ("unary",)
"""Cells where the peer with cleanlab runs. On a stream its per-batch filter (~0.4 s of CPU
per 64 examples) makes one 64-client cell drain for minutes; the unary rows show its cost."""


def log(message: str) -> None:
    """Progress on stderr (stdout carries the tables)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peer_config(workers: int) -> PeerConfig:
    """The peer's match for labelwatch's ``--workers``: one process, or N inference processes.

    ``parallel_workers=0`` runs inference in MLServer's own process (its fastest single
    process setting here); adaptive batching is on (64 requests / 2 ms, labelwatch's window).
    """
    return PeerConfig(parallel_workers=0 if workers == 1 else workers)


def run_cell(pool: ClientPool, spec: CellSpec) -> CellResult:
    """One measurement; a cell that cannot be set up is retried once, then is an error row.

    Set-up failures are rare and transient here (e.g. a client process that started while
    the package was being reinstalled); the retry keeps one from costing a whole row.
    """
    for attempt in (1, 2):
        try:
            return pool.run(spec)
        except (RuntimeError, TimeoutError) as exc:
            log(
                f"cell failed (attempt {attempt}): {spec.system} {spec.mode} b{spec.batch} "
                f"c{spec.clients}: {exc}"
            )
            error = str(exc)[:500]
            if attempt == 1:
                time.sleep(3.0)
    nan = float("nan")
    return CellResult(nan, nan, nan, 0, 0, 0.0, 1, error)


# ---------------------------------------------------------------- sections


def section_limits(plan: Plan, models: Sequence[ServedModel]) -> list[dict[str, Any]]:
    """The in-process limit at batch 1 and 64 for each model, at 1..cores callers."""
    out = []
    for model in models:
        for _ in range(plan.repeats):
            out.extend(limit_round(plan, model))
        for batch in (1, 64):
            best = best_limit(median_limits([m for m in out if m["model"] == model.name]), batch)
            log(
                f"limit {model.name} b{batch}: {best['examples_per_s']:,.0f} ex/s "
                f"({best['callers']} callers x {best['intra_op_threads']} intra-op threads)"
            )
    return out


def best_limit(limits: Sequence[dict[str, Any]], batch: int) -> dict[str, Any]:
    """The fastest caller count among one model's median ``limits`` at ``batch``."""
    return max((x for x in limits if x["batch"] == batch), key=lambda x: float(x["examples_per_s"]))


def _limit_of(limits: Sequence[dict[str, Any]], model: str, batch: int) -> float | None:
    """The limit of (model, batch): the best median over caller counts."""
    return next(
        (
            x["examples_per_s"]
            for x in limits
            if x["model"] == model and x["batch"] == batch and x.get("best", True)
        ),
        None,
    )


def section_grid(
    plan: Plan,
    pool: ClientPool,
    models: Sequence[ServedModel],
    limits: list[dict[str, Any]],
    work: Path,
) -> list[dict[str, Any]]:
    """labelwatch, the peer with cleanlab and the peer alone, cell by cell, interleaved.

    Appends a limit measurement to ``limits`` after each (model, workers) block.
    """
    rows = []
    systems = SYSTEMS_WITH_PEER if plan.peer else ("labelwatch",)
    for model in models:
        for workers in plan.workers:
            with contextlib.ExitStack() as stack:
                lw = stack.enter_context(
                    LabelwatchServer(
                        model, LabelwatchConfig(workers=workers), work / f"lw-{model.name}"
                    )
                )
                targets = {"labelwatch": lw.target}
                if plan.peer:
                    peer = stack.enter_context(
                        MlserverServer(model, peer_config(workers), work / f"peer-{model.name}")
                    )
                    targets["peer"] = targets["peer-model"] = peer.target
                for mode, batch, clients in plan.cells:
                    if mode == "columnar" and model.workload.kind == "text":
                        continue  # ScoreBatch carries tensors (features, probabilities)
                    cell_systems = [s for s in systems if s != "peer" or mode in CLEANLAB_MODES]
                    results: dict[str, list[CellResult]] = {s: [] for s in cell_systems}
                    cpu_us: dict[str, list[float]] = {"labelwatch": []}
                    for repeat in range(plan.repeats):
                        for system in cell_systems:
                            if system == "peer" and repeat >= plan.cleanlab_repeats:
                                continue  # 10-100x slower than the rest: fewer repeats
                            spec = CellSpec(
                                system,
                                targets[system],
                                mode,
                                batch,
                                clients,
                                model.workload,
                                plan.duration,
                            )
                            cpu0 = lw.cpu_seconds() if system == "labelwatch" else 0.0
                            results[system].append(run_cell(pool, spec))
                            if system == "labelwatch":
                                answered = max(results[system][-1].examples, 1)
                                cpu_us[system].append((lw.cpu_seconds() - cpu0) / answered * 1e6)
                    row: dict[str, Any] = {
                        "model": model.name,
                        "workers": workers,
                        "mode": mode,
                        "batch": batch,
                        "clients": clients,
                    }
                    summaries: dict[str, Summary] = {}
                    for system in cell_systems:
                        summaries[system] = summarize(results[system])
                        row[system] = summaries[system].as_dict()
                    # server CPU per example: comparable with the limit's on a shared machine
                    row["labelwatch_cpu_us_per_example"] = sorted(cpu_us["labelwatch"])[
                        len(cpu_us["labelwatch"]) // 2
                    ]
                    lw_rate = summaries["labelwatch"].examples_per_s
                    if "peer" in summaries:
                        row["labelwatch_over_peer"] = ratio(
                            lw_rate, summaries["peer"].examples_per_s
                        )
                    if "peer-model" in summaries:
                        row["labelwatch_over_peer_model"] = ratio(
                            lw_rate, summaries["peer-model"].examples_per_s
                        )
                    rows.append(row)
                    log(
                        f"grid {model.name} w{workers} {mode} b{batch} c{clients}: "
                        + ", ".join(
                            f"{s} {summaries[s].examples_per_s:,.0f} ex/s" for s in cell_systems
                        )
                    )
            # the limit again after each block: its median spans the same load as the cells
            limits.extend(limit_round(plan, model))
    return rows


def limit_round(plan: Plan, model: ServedModel) -> list[dict[str, Any]]:
    """One in-process limit measurement at batch 1 and 64, at each of 1..cores callers."""
    return [
        asdict(r)
        for batch in (1, 64)
        for r in measure_limits(model, batch, plan.limit_duration, max_callers=cores())
    ]


def median_limits(measured: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, batch, callers): the measurement with the median throughput, and all of
    them; ``best`` marks the caller count with the highest median: the limit."""
    out = []
    for key in dict.fromkeys((m["model"], m["batch"], m.get("callers", 1)) for m in measured):
        runs = sorted(
            (m for m in measured if (m["model"], m["batch"], m.get("callers", 1)) == key),
            key=lambda m: float(m["examples_per_s"]),
        )
        each = [r["examples_per_s"] for r in runs]
        out.append(runs[len(runs) // 2] | {"measurements": len(runs), "examples_per_s_each": each})
    for key in dict.fromkeys((m["model"], m["batch"]) for m in out):
        group = [m for m in out if (m["model"], m["batch"]) == key]
        top = max(group, key=lambda m: float(m["examples_per_s"]))
        for m in group:
            m["best"] = m is top
    return out


def section_engine(plan: Plan, models: Sequence[ServedModel], work: Path) -> list[dict[str, Any]]:
    """labelwatch's engine in-process (batcher, pipeline, outbox), batch 64, at each
    ``--model-concurrency`` from 1 to cores and auto: the measurement behind auto."""
    out = []
    values = [str(c) for c in range(1, cores() + 1)] + ["auto"]
    for model in models:
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in values}
        for _ in range(plan.repeats):
            for value in values:  # interleaved: a change in load hits every setting
                result = measure_engine(
                    model,
                    64,
                    plan.limit_duration,
                    concurrency=value,
                    callers=plan.engine_callers,
                    work=work,
                )
                runs[value].append(asdict(result))
        for value in values:
            ordered = sorted(runs[value], key=lambda r: float(r["examples_per_s"]))
            row = ordered[len(ordered) // 2] | {
                "requested": value,
                "examples_per_s_each": [r["examples_per_s"] for r in runs[value]],
            }
            out.append(row)
            log(
                f"engine {model.name} --model-concurrency {value}: "
                f"{row['examples_per_s']:,.0f} ex/s ({row['concurrency']} calls x "
                f"{row['intra_op_threads']} threads)"
            )
    return out


def add_limit_ratios(grid: list[dict[str, Any]], limits: Sequence[dict[str, Any]]) -> None:
    """Set each grid row's limit and labelwatch / limit from the median limits."""
    for row in grid:
        row["limit_examples_per_s"] = _limit_of(limits, row["model"], row["batch"])
        row["labelwatch_over_limit"] = ratio(
            row["labelwatch"]["examples_per_s"], row["limit_examples_per_s"]
        )


def _labelwatch_factory(
    model: ServedModel, workers: int, work: Path
) -> Callable[[], LabelwatchServer]:
    return lambda: LabelwatchServer(model, LabelwatchConfig(workers=workers), work)


def _peer_factory(model: ServedModel, workers: int, work: Path) -> Callable[[], MlserverServer]:
    return lambda: MlserverServer(model, peer_config(workers), work)


def section_memory(
    plan: Plan, pool: ClientPool, models: Sequence[ServedModel], work: Path
) -> list[dict[str, Any]]:
    """Fresh servers: RSS after start, then peak RSS after 64 concurrent streams (batch 64)."""
    out = []
    duration = max(plan.duration * 2, 1.0)
    for model in models:
        for workers in plan.memory_workers:
            servers: list[tuple[str, Callable[[], Any]]] = [
                ("labelwatch", _labelwatch_factory(model, workers, work / "mem-lw"))
            ]
            if plan.peer:
                servers.append(("peer-model", _peer_factory(model, workers, work / "mem-peer")))
            for system, make in servers:
                with make() as server:
                    time.sleep(0.5)
                    idle = server.memory()
                    spec = CellSpec(
                        system, server.target, "stream", 64, 64, model.workload, duration
                    )
                    result = run_cell(pool, spec)
                    mem = server.memory()
                out.append(
                    {
                        "model": model.name,
                        "server": "labelwatch" if system == "labelwatch" else "MLServer",
                        "workers": workers,
                        "rss_idle": idle.rss,
                        "peak_rss": mem.peak,
                        "rss_after": mem.rss,
                        "examples_per_s": result.examples_per_s,
                        "errors": result.errors,
                        "first_error": result.first_error,
                    }
                )
                log(
                    f"memory {model.name} {system} w{workers}: idle {idle.rss / 2**20:.0f} MiB, "
                    f"peak {mem.peak / 2**20:.0f} MiB"
                )
    return out


def section_k(plan: Plan, pool: ClientPool, work: Path) -> list[dict[str, Any]]:
    """Thresholds-only server, K classes of client-sent probabilities: cost per example."""
    out = []
    for k in plan.k_values:
        served = probs_model(work / "k", k)
        limit = measure_limit(served, 64, plan.limit_duration)
        rates, cpu_per_example = [], []
        with LabelwatchServer(served, LabelwatchConfig(), work / "k-lw") as server:
            spec = CellSpec("labelwatch", server.target, "unary", 64, 8, served.workload, 0.3)
            run_cell(pool, spec)  # warm-up
            errors = 0
            for _ in range(plan.repeats):
                cpu0 = server.cpu_seconds()
                result = run_cell(pool, replace(spec, duration=plan.duration))
                cpu = server.cpu_seconds() - cpu0
                errors += result.errors
                rates.append(result.examples_per_s)
                cpu_per_example.append(cpu / max(result.examples, 1))
            peak = server.memory().peak
        cpu_us = sorted(cpu_per_example)[len(cpu_per_example) // 2] * 1e6
        out.append(
            {
                "k": k,
                "examples_per_s": sorted(rates)[len(rates) // 2],
                "server_cpu_us_per_example": cpu_us,
                "server_cpu_ns_per_example_class": cpu_us * 1000.0 / k,
                "limit_us_per_example": 1e6 / limit.examples_per_s,
                "peak_rss": peak,
                "errors": errors,
            }
        )
        log(f"K={k}: {cpu_us:.0f} µs server CPU per example")
    return out


def section_tuning(
    plan: Plan, pool: ClientPool, model: ServedModel, work: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """intra-op threads x spinning per worker count, then the batch window (16 clients)."""
    configs = [
        LabelwatchConfig(workers=workers, intra_op_threads=intra, spinning=spinning)
        for workers in plan.tuning_workers
        for intra in plan.tuning_intra
        for spinning in plan.tuning_spinning
    ]
    # model calls in flight: one at a time against the default (auto)
    configs += [LabelwatchConfig(model_concurrency=c) for c in plan.tuning_concurrency]
    # the flag outbox's other durability mode (an fsync per group commit), default threads,
    # with spin-waiting on and off (the default)
    configs += [
        LabelwatchConfig(outbox_sync=sync, spinning=spinning)
        for sync in plan.outbox_syncs
        for spinning in (True, False)
    ]
    tuning = []
    for config in configs:
        entry: dict[str, Any] = {
            "workers": config.workers,
            "intra_op_threads": config.intra_op_threads,
            "model_concurrency": config.model_concurrency or "auto",
            "spinning": config.spinning,
            "outbox_sync": config.outbox_sync or "normal",
        }
        with LabelwatchServer(model, config, work / "tune") as server:
            for name, (mode, batch, clients) in TUNING_CELLS:
                spec = CellSpec(
                    "labelwatch", server.target, mode, batch, clients, model.workload, plan.duration
                )
                runs = [run_cell(pool, spec) for _ in range(plan.repeats)]
                entry[name] = summarize(runs).as_dict()
        tuning.append(entry)
        log(
            f"tuning {config.label()}: b1 p50 {entry['b1_c1']['p50_ms']} ms, "
            f"b1x16 {entry['b1_c16']['examples_per_s']} ex/s"
        )
    window = []
    for window_ms in plan.windows:
        config = LabelwatchConfig(batch_window_ms=window_ms)
        with LabelwatchServer(model, config, work / "window") as server:
            spec = CellSpec(
                "labelwatch", server.target, "unary", 1, 16, model.workload, plan.duration
            )
            summary = summarize([run_cell(pool, spec) for _ in range(plan.repeats)])
        window.append({"batch_window_ms": window_ms, "workers": 1, **summary.as_dict()})
        log(f"window {window_ms} ms: {summary.examples_per_s:,.0f} ex/s")
    return tuning, window


# ---------------------------------------------------------------- targets and machine


def _best(rows: Sequence[dict[str, Any]], keep: Callable[[dict[str, Any]], bool]) -> Any:
    candidates = [r for r in rows if keep(r) and r["labelwatch"]["examples_per_s"] is not None]
    return max(candidates, key=lambda r: r["labelwatch"]["examples_per_s"], default=None)


def targets(grid: Sequence[dict[str, Any]], k_sweep: Sequence[dict[str, Any]]) -> list[Any]:
    """The issue's targets, each with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []
    for model in sorted({r["model"] for r in grid}):
        rows = [r for r in grid if r["model"] == model]
        # default `serve` (one worker), clients in separate processes, against the best
        # in-process rate over 1..cores callers
        best = _best(rows, lambda r: r["batch"] == 64 and r["workers"] == 1)
        if best is not None and best["labelwatch_over_limit"] is not None:
            value = best["labelwatch_over_limit"]
            out.append(
                {
                    "target": f"{model}: batch 64, default serve >= {LIMIT_TARGET} of the limit",
                    "measured": f"{value:.2f}x ({best['mode']}, {best['clients']} clients; "
                    f"limit {report.fmt_rate(best.get('limit_examples_per_s'))} ex/s)",
                    "met": value >= LIMIT_TARGET,
                }
            )
        one = next(
            (
                r
                for r in rows
                if r["mode"] == "unary" and r["batch"] == 1 and r["clients"] == 1
                if r["workers"] == 1
            ),
            None,
        )
        if one is not None and one["labelwatch"]["p50_ms"] is not None:
            p50, p99 = one["labelwatch"]["p50_ms"], one["labelwatch"]["p99_ms"]
            out.append(
                {
                    "target": f"{model}: batch 1, one client: p50 < 1.5 ms, p99 < 4 ms",
                    "measured": f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                    "met": p50 < 1.5 and p99 < 4.0,
                }
            )
        sixteen = _best(rows, lambda r: r["batch"] == 1 and r["clients"] == 16)
        if sixteen is not None:
            rate = sixteen["labelwatch"]["examples_per_s"]
            out.append(
                {
                    "target": f"{model}: 16 clients at batch 1 >= 1,000 ex/s",
                    "measured": f"{rate:,.0f} ex/s ({sixteen['workers']} workers)",
                    "met": rate >= 1000,
                }
            )
        for key, name in (("peer", "MLServer+cleanlab"), ("peer_model", "MLServer model-only")):
            ratios = [r.get(f"labelwatch_over_{key}") for r in rows]
            known = [x for x in ratios if x is not None]
            if known:
                faster = sum(1 for x in known if x > 1.0)
                out.append(
                    {
                        "target": f"{model}: faster than the peer ({name}) on every row",
                        "measured": f"faster on {faster} of {len(known)} rows "
                        f"(lowest {min(known):.2f}x)",
                        "met": faster == len(known),
                    }
                )
    if len(k_sweep) >= 2:
        cost = [k["server_cpu_us_per_example"] for k in k_sweep]
        per_class = [k["server_cpu_ns_per_example_class"] for k in k_sweep]
        measured = ", ".join(
            f"K={k['k']}: {k['server_cpu_us_per_example']:.0f} µs/ex "
            f"({k['server_cpu_ns_per_example_class']:.0f} ns per class)"
            for k in k_sweep
        )
        out.append(
            {
                "target": f"per-example cost flat in K (largest / smallest within 1.5x, "
                f"K = {k_sweep[0]['k']} to {k_sweep[-1]['k']})",
                "measured": measured,
                "met": max(cost) / min(cost) <= 1.5,
            }
        )
        out.append(
            {
                "target": "no superlinear cost in K (cost per example·class never grows with K)",
                "measured": f"{per_class[0]:.0f} ns down to {per_class[-1]:.0f} ns",
                "met": all(b <= a * 1.1 for a, b in itertools.pairwise(per_class)),
            }
        )
    return out


_MLSERVER_VERSION = "import mlserver; print(mlserver.__version__)"


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return "absent"
    return str(getattr(mod, "__version__", "?"))


def machine() -> dict[str, Any]:
    """What ran the benchmark: cores, CPU model, memory, versions, load, commit."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    mlserver = "absent"
    if peer_available():
        probe = subprocess.run(
            [str(PEER_VENV / "bin" / "python"), "-c", _MLSERVER_VERSION],
            capture_output=True,
            text=True,
            check=False,
        )
        mlserver = probe.stdout.strip() or "?"
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in (
                "labelwatch",
                "grpc",
                "google.protobuf",
                "onnxruntime",
                "numpy",
                "cleanlab",
            )
        }
        | {"mlserver": mlserver},
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "commit": commit + ("+dirty" if dirty else ""),
    }


# ---------------------------------------------------------------- output


def render(result: dict[str, Any]) -> str:
    """Every table of a run as markdown, with the machine and the command."""
    m = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    parts = [
        f"Command: `{result['command']}` ({result['plan_name']}; {result['plan']['repeats']} "
        f"repeats of {result['plan']['duration']} s per cell, medians; "
        f"run took {result['elapsed_s'] / 60:.1f} min)",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['mem_total_gib']} GiB, Linux "
        f"{m['kernel']}, Python {m['python']}; {versions}; commit {m['commit']}; load average "
        f"{' '.join(m['loadavg_start'])} at start, {' '.join(m['loadavg_end'])} at end. Clients "
        "and servers share the same cores.",
    ]
    if result["peer_skipped"]:
        parts += ["", f"**Peer skipped**: {result['peer_skipped']}"]
    if result.get("targets"):
        parts += ["", "### Targets", "", report.targets_table(result["targets"])]
    if result.get("limits"):
        parts += [
            "",
            "### The limit (in-process, best over 1..cores concurrent callers)",
            "",
            report.limit_table(result["limits"]),
        ]
    if result.get("engine"):
        parts += [
            "",
            f"### The engine in-process by --model-concurrency (batch 64, "
            f"{result['plan']['engine_callers']} callers)",
            "",
            report.engine_table(result["engine"]),
        ]
    if result.get("grid"):
        parts += ["", "### Served", "", report.grid_table(result["grid"])]
    if result.get("memory"):
        parts += ["", "### Memory", "", report.memory_table(result["memory"])]
    if result.get("k_sweep"):
        parts += ["", "### Cost as K grows", "", report.k_table(result["k_sweep"])]
    if result.get("tuning"):
        parts += [
            "",
            "### onnxruntime threads and spinning (text model)",
            "",
            report.tuning_table(result["tuning"]),
        ]
    if result.get("window"):
        parts += [
            "",
            "### Batch window (text model, 16 clients, batch 1)",
            "",
            report.window_table(result["window"]),
        ]
    return "\n".join(parts) + "\n"


def write_docs(text: str, path: Path = DOCS) -> None:
    """Replace the generated block of ``path`` (between the markers) with ``text``."""
    block = f"{BEGIN}\n\n{text}\n{END}"
    if path.is_file():
        current = path.read_text(encoding="utf-8")
        if BEGIN in current and END in current:
            head, rest = current.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            path.write_text(head + block + tail, encoding="utf-8")
            return
        path.write_text(current.rstrip() + "\n\n" + block + "\n", encoding="utf-8")
        return
    path.write_text("# Performance\n\n" + block + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the plan; print the tables; write JSON (and the docs with ``--write-docs``)."""
    parser = argparse.ArgumentParser(
        prog="python bench/serve.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (< 3 min)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default bench/results/serve.json; serve-quick.json with --quick)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip MLServer even if installed")
    parser.add_argument(
        "--sections",
        default="limits,engine,grid,memory,k,tuning",
        help="comma-separated subset of limits,engine,grid,memory,k,tuning (default: all)",
    )
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated subset of the plan's models, text,float (default: both)",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help=f"rewrite the generated part of {DOCS.name}"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or RESULTS / ("serve-quick.json" if args.quick else "serve.json")
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if args.models:
        chosen = tuple(m.strip() for m in args.models.split(",") if m.strip())
        unknown = set(chosen) - set(plan.models)
        if unknown or not chosen:
            parser.error(f"--models: choose among {', '.join(plan.models)}")
        plan = replace(plan, models=chosen)
    peer_skipped = ""
    if args.no_peer:
        peer_skipped = "--no-peer was given"
    elif not peer_available():
        peer_skipped = f"{PEER_VENV} is absent; create it with `bash bench/peer/setup_mlserver.sh`"
    if peer_skipped:
        plan = replace(plan, peer=False)
        log(f"PEER SKIPPED: {peer_skipped}")
    command = "python bench/serve.py" + " ".join(
        [""] + [a for a in (argv if argv is not None else sys.argv[1:])]
    )

    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds: servers and clients are stopped

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = time.monotonic()
    result: dict[str, Any] = {
        "command": command,
        "plan_name": "quick" if args.quick else "full",
        "plan": asdict(plan),
        "machine": machine(),
        "peer_skipped": peer_skipped,
    }
    if plan.peer:
        from servebench.peer import compile_stubs

        compile_stubs()
    with tempfile.TemporaryDirectory(prefix="labelwatch-bench-") as tmp:
        work = Path(tmp)
        available = {"text": text_model, "float": lambda: float_model(work / "float")}
        models = [available[name]() for name in plan.models]
        with ClientPool(plan.processes) as pool:
            if "limits" in sections or "grid" in sections:
                measured = section_limits(plan, models)
            if "engine" in sections:
                engine_models = [*models, probs_model(work / "engine-probs", 124)]
                result["engine"] = section_engine(plan, engine_models, work)
            if "grid" in sections:
                result["grid"] = section_grid(plan, pool, models, measured, work)
            if "limits" in sections or "grid" in sections:
                result["limits"] = median_limits(measured)
                add_limit_ratios(result.get("grid", []), result["limits"])
            if "memory" in sections:
                result["memory"] = section_memory(plan, pool, models, work)
            if "k" in sections:
                result["k_sweep"] = section_k(plan, pool, work)
            if "tuning" in sections:
                result["tuning"], result["window"] = section_tuning(plan, pool, models[0], work)
    result["targets"] = targets(result.get("grid", []), result.get("k_sweep", []))
    result["elapsed_s"] = time.monotonic() - started
    result["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    text = render(result)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    log(f"wrote {out}")
    if args.write_docs:
        write_docs(text)
        log(f"updated {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
