"""In-process profile of one scored batch: per-example microseconds of each hot-path stage.

What the server does for one unary ``Score`` call, stage by stage, without gRPC::

    convert    examples_from_request (protobuf -> validated examples)
    model      the model call (Pipeline._probabilities; a copy on the probabilities path)
    score      thresholds and pooling (Pipeline.compute, its model call replaced by the result)
    flag_rows  the outbox rows of the batch's flags, built from the batch arrays
    write      the outbox transaction that stores them (SQLite WAL, synchronous=NORMAL)
    response   response_from_batch (domain -> protobuf)
    metrics    Metrics.record_batch

Workloads (batch 64 by default): the default text model (K=124), and the probabilities
path (no model, clients send probabilities) at K=124 and K=10. Every batch has fresh
example ids, so each write stores new flags (no dedupe hits).

Side by side with another revision, in one run::

    python bench/hotpath.py                     # this checkout vs ``main``
    python bench/hotpath.py --compare HEAD~3    # vs another git revision
    python bench/hotpath.py --compare ''        # this checkout only

The other revision's ``service/`` is extracted with ``git archive`` into a temporary
directory and run by the same interpreter (``PYTHONPATH``), so the protobuf stubs and the
dependencies are shared. Rounds alternate between the two sides, so a change in machine
load hits both; the table shows the median over rounds of each side's median per batch.
``flag_rows`` and ``write`` are also given per flagged example, and ``write`` as a mean too
(the median hides rare slow commits). Times are CPU-bound
wall times of one thread: on a busy machine compare ratios, not absolute values.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
STAGES = ("convert", "model", "score", "flag_rows", "write", "response", "metrics")
PER_FLAGGED = ("flag_rows", "write")


# ------------------------------------------------------------------ in the child process


def _requests(rows: Any, batch: int, count: int, k: int) -> list[Any]:
    """``count`` requests of ``batch`` rows each, every example id unique across them."""
    import numpy as np

    from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

    out = []
    for r in range(count):
        request = pb.ScoreRequest()
        for j in range(batch):
            i = (r * batch + j) % rows.n
            ex = request.examples.add(
                id=f"{r}-{j}-{i}", label_indices=np.flatnonzero(rows.labels[i]).tolist()
            )
            if rows.texts is not None:
                ex.text = rows.texts[i]
            else:
                ex.probabilities.values.extend(rows.probs[i].tolist())
        out.append(request)
    return out


def _flag_stages(
    pipeline: Any,
) -> tuple[Callable[[Any], Any], Callable[[Any, Any], None], Callable[[Any], int]]:
    """(build rows, write rows, count flagged) for whichever code is on ``sys.path``."""
    names = pipeline.spec.class_names
    # (the editable install would find labelwatch.flag_columns for the other side too)
    if "columns" not in inspect.signature(pipeline.outbox.write).parameters:
        # the code before flag columns: Flag objects, JSON in the outbox
        from labelwatch.flag_record import flags_from_batch

        return (
            lambda batch: flags_from_batch(batch, names),
            lambda box, built: box.write(built),
            len,
        )
    from labelwatch.flag_columns import ClassTable, columns_from_batch

    table = ClassTable(names)
    return (
        lambda batch: columns_from_batch(batch, table),
        lambda box, built: box.write((), columns=[built]),
        len,
    )


def _workload(name: str, work: Path, n_rows: int) -> Any:
    from servebench.workloads import probs_model, text_model

    if name == "text":
        return text_model(n_rows)
    return probs_model(work / "models", int(name.split("-")[1]), n_rows=n_rows)


def profile(name: str, batch: int, batches: int, work: Path) -> dict[str, Any]:
    """Median seconds per stage over ``batches`` batches of workload ``name``."""
    from prometheus_client import CollectorRegistry
    from servebench.workloads import make_rows

    from labelwatch.codec import ExampleDecoder
    from labelwatch.codec.proto import examples_from_request, response_from_batch
    from labelwatch.config import Settings
    from labelwatch.engine.loading import load_pipeline
    from labelwatch.metrics import Metrics
    from labelwatch.outbox import Outbox

    served = _workload(name, work, n_rows=512)
    settings = Settings(model=served.model, thresholds=served.thresholds, intra_op_threads=1)
    metrics = Metrics(CollectorRegistry(), process_metrics=False)
    outbox = Outbox(work / f"{name}-{os.getpid()}.sqlite3", synchronous="NORMAL")
    pipeline = load_pipeline(settings, metrics, outbox=outbox)
    decoder = ExampleDecoder(pipeline.spec)
    names = pipeline.spec.class_names
    build, write, count = _flag_stages(pipeline)
    rows = make_rows(served.workload)
    warm = 3
    requests = _requests(rows, batch, batches + warm, pipeline.spec.n_classes)
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    flagged: list[int] = []
    clock = time.perf_counter
    for n, request in enumerate(requests):
        t0 = clock()
        examples = examples_from_request(request, decoder, 4096)
        t1 = clock()
        probabilities = pipeline._probabilities(examples)
        # compute() without its model call: the probabilities just computed stand in for it
        pipeline._probabilities = lambda _examples, p=probabilities: p
        t2 = clock()
        scored = pipeline.compute(examples)
        t3 = clock()
        del pipeline._probabilities
        built = build(scored)
        t4 = clock()
        write(outbox, built)
        t5 = clock()
        response_from_batch(scored, names, False)
        t6 = clock()
        metrics.record_batch(scored, names)
        t7 = clock()
        if n < warm:
            continue
        for stage, seconds in zip(
            STAGES,
            (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6),
            strict=True,
        ):
            times[stage].append(seconds)
        flagged.append(count(built))
    outbox.close()
    return {
        "workload": name,
        "batch": batch,
        "batches": batches,
        "flagged_per_batch": statistics.median(flagged),
        "seconds": {s: statistics.median(v) for s, v in times.items()},
        # the mean shows what the median hides: rare slow commits (e.g. a WAL checkpoint)
        "mean_seconds": {s: statistics.fmean(v) for s, v in times.items()},
    }


def child(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="hotpath-") as tmp:
        results = [profile(w, args.batch, args.batches, Path(tmp)) for w in args.workloads]
    json.dump(results, sys.stdout)
    return 0


# ------------------------------------------------------------------ in the parent process


def _extract(rev: str, into: Path) -> Path:
    """``service/`` of git revision ``rev``, extracted under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "service"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "service"


def _run_side(args: argparse.Namespace, service: Path | None) -> list[dict[str, Any]]:
    env = dict(os.environ)
    if service is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(service)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
    command = [sys.executable, str(Path(__file__).resolve()), "--child"]
    command += ["--batch", str(args.batch), "--batches", str(args.batches)]
    command += ["--workloads", *args.workloads]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return list(json.loads(done.stdout))


def _median_rounds(rounds: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for i, first in enumerate(rounds[0]):
        seconds = {
            s: statistics.median(r[i]["seconds"][s] for r in rounds) for s in first["seconds"]
        }
        flagged = statistics.median(r[i]["flagged_per_batch"] for r in rounds)
        means = {
            s: statistics.median(r[i]["mean_seconds"][s] for r in rounds)
            for s in first["mean_seconds"]
        }
        out.append(
            {**first, "seconds": seconds, "mean_seconds": means, "flagged_per_batch": flagged}
        )
    return out


def _us(seconds: float, per: float) -> str:
    return f"{seconds / per * 1e6:7.2f}" if per else "      -"


def render(sides: dict[str, list[dict[str, Any]]]) -> str:
    """Per-example µs of each stage, per side, and after/before ratios when both ran."""
    lines = []
    labels = list(sides)
    for i, first in enumerate(sides[labels[0]]):
        batch = first["batch"]
        flagged = {label: sides[label][i]["flagged_per_batch"] for label in labels}
        lines.append(
            f"\n{first['workload']}, batch {batch}, flagged examples per batch: "
            + ", ".join(f"{label} {flagged[label]:g}" for label in labels)
        )
        head = f"{'stage':<22}" + "".join(f"{label:>10}" for label in labels)
        if len(labels) == 2:
            head += f"{'ratio':>9}"
        lines.append(head + "   (µs per example)")
        rows: list[tuple[str, dict[str, float], str]] = []
        for stage in STAGES:
            rows.append((stage, {lb: sides[lb][i]["seconds"][stage] for lb in labels}, "ex"))
        for stage in PER_FLAGGED:
            rows.append(
                (f"{stage} /flagged", {lb: sides[lb][i]["seconds"][stage] for lb in labels}, "fl")
            )
        rows.append(
            (
                "write mean /flagged",
                {lb: sides[lb][i]["mean_seconds"]["write"] for lb in labels},
                "fl",
            )
        )
        totals = {lb: sum(sides[lb][i]["seconds"][s] for s in STAGES) for lb in labels}
        rows.append(("total", totals, "ex"))
        beyond = {
            lb: totals[lb] - sides[lb][i]["seconds"]["model"] - sides[lb][i]["seconds"]["score"]
            for lb in labels
        }
        rows.append(("total - model - score", beyond, "ex"))
        for stage, values, unit in rows:
            line = f"{stage:<22}"
            for label in labels:
                per = batch if unit == "ex" else flagged[label]
                line += f"   {_us(values[label], per)}"
            if len(labels) == 2:
                a, b = (
                    values[label] / (batch if unit == "ex" else flagged[label] or 1)
                    for label in labels
                )
                line += f"   {b / a:6.2f}x" if a > 0 else "        -"
            lines.append(line)
    return "\n".join(lines)


def _served_round(
    pool: Any, served: Any, service: Path | None, duration: float, work: Path
) -> list[float]:
    """Server CPU seconds per example, twice, of one server run with ``service`` (None: this)."""
    from servebench.clients import CellSpec
    from servebench.servers import LabelwatchConfig, LabelwatchServer

    saved = os.environ.pop("PYTHONPATH", None)
    if service is not None:  # the server subprocess inherits it
        os.environ["PYTHONPATH"] = str(service)
    out = []
    try:
        with LabelwatchServer(served, LabelwatchConfig(), work / "srv") as server:
            spec = CellSpec("labelwatch", server.target, "unary", 64, 8, served.workload, 0.5)
            pool.run(spec)  # warm-up
            for _ in range(2):
                cpu0 = server.cpu_seconds()
                result = pool.run(replace(spec, duration=duration))
                out.append((server.cpu_seconds() - cpu0) / max(result.examples, 1))
    finally:
        os.environ.pop("PYTHONPATH", None)
        if saved is not None:
            os.environ["PYTHONPATH"] = saved
    return out


def served_cpu(
    k_values: Sequence[int], before: Path | None, label: str, duration: float, work: Path
) -> str:
    """Server CPU µs per example: ``labelwatch serve`` (thresholds only, K classes), unary
    batch 64 from 8 client processes, each side's server started in turn, two rounds."""
    from servebench.clients import ClientPool
    from servebench.workloads import probs_model

    sides: list[tuple[str, Path | None]] = [("this", None)]
    if before is not None:
        sides.insert(0, (label, before))
    lines = []
    with ClientPool(8) as pool:
        for k in k_values:
            served = probs_model(work / "models", k)
            cpu: dict[str, list[float]] = {}
            for _ in range(2):
                for name, service in sides:
                    cpu.setdefault(name, []).extend(
                        _served_round(pool, served, service, duration, work)
                    )
            medians = {name: statistics.median(v) * 1e6 for name, v in cpu.items()}
            line = f"K={k}: server CPU per example (µs): " + ", ".join(
                f"{name} {value:.1f}" for name, value in medians.items()
            )
            if len(medians) == 2:
                line += f", ratio {medians['this'] / medians[label]:.2f}x"
            lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", default="main", help="git revision for the 'before' side")
    parser.add_argument("--batch", type=int, default=64, help="examples per batch (64)")
    parser.add_argument("--batches", type=int, default=60, help="timed batches per round (60)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side, alternating (3)")
    parser.add_argument(
        "--workloads", nargs="+", default=["text", "probs-124", "probs-10"], help="workloads"
    )
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument(
        "--served",
        metavar="K,K",
        help="instead: server CPU per example of `labelwatch serve` on the probabilities path "
        "at these K (unary, batch 64, 8 client processes), each side in turn",
    )
    parser.add_argument(
        "--duration", type=float, default=3.0, help="seconds per --served measurement (3)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    rounds: dict[str, list[list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="hotpath-rev-") as tmp:
        before = _extract(args.compare, Path(tmp)) if args.compare else None
        if args.served:
            ks = [int(k) for k in args.served.split(",")]
            print(served_cpu(ks, before, args.compare, args.duration, Path(tmp) / "served"))
            print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
            return 0
        for r in range(args.rounds):
            if before is not None:
                print(f"round {r + 1}/{args.rounds}: {args.compare}", file=sys.stderr)
                rounds.setdefault(args.compare, []).append(_run_side(args, before))
            print(f"round {r + 1}/{args.rounds}: this checkout", file=sys.stderr)
            rounds.setdefault("this", []).append(_run_side(args, None))
    sides = {label: _median_rounds(r) for label, r in rounds.items()}
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(render(sides))
    if args.json is not None:
        args.json.write_text(json.dumps(sides, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
