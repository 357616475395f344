"""Benchmark: server CPU per example, per-example Score against columnar ScoreBatch.

The probabilities path (a thresholds-only server; clients send K synthetic
probabilities and tags per example), batch 64, 8 clients in separate processes:
the same rows sent as ``Score`` (one ``Example`` message each) and as ``ScoreBatch``
(one float32 tensor, tags as CSR), the two cells interleaved per repeat so a change
in machine load hits both. Reports the median server CPU (all of its processes) per
example answered, and the ratio::

    python bench/columnar.py                    # K = 124, 5 repeats of 3 s
    python bench/columnar.py --k 10 124 --repeats 3 --duration 2

Issue 17's target: at most 15 µs per example with ScoreBatch at K = 124.
Numbers taken while other work shares the cores are noise; compare the two
columns of one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from servebench.clients import CellSpec, ClientPool  # noqa: E402
from servebench.servers import LabelwatchConfig, LabelwatchServer  # noqa: E402
from servebench.workloads import probs_model  # noqa: E402

MODES = {"Score": "unary", "ScoreBatch": "columnar"}


def measure(
    k: int, *, batch: int, clients: int, repeats: int, duration: float, work: Path
) -> dict[str, float]:
    """Median server CPU µs per example for each method at ``k`` classes."""
    served = probs_model(work / f"k{k}", k)
    cost: dict[str, list[float]] = {method: [] for method in MODES}
    with ClientPool(processes=min(clients, 4)) as pool:
        with LabelwatchServer(served, LabelwatchConfig(), work / f"lw{k}") as server:
            specs = {
                method: CellSpec(
                    "labelwatch", server.target, mode, batch, clients, served.workload, duration
                )
                for method, mode in MODES.items()
            }
            for spec in specs.values():  # warm-up
                pool.run(replace(spec, duration=0.3))
            for _ in range(repeats):
                for method, spec in specs.items():
                    cpu0 = server.cpu_seconds()
                    result = pool.run(spec)
                    cpu = server.cpu_seconds() - cpu0
                    if result.errors:
                        raise RuntimeError(f"{method}: {result.first_error}")
                    cost[method].append(cpu / max(result.examples, 1) * 1e6)
    return {method: sorted(values)[len(values) // 2] for method, values in cost.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[124], help="classes [124]")
    parser.add_argument("--batch", type=int, default=64, help="examples a call [64]")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients [8]")
    parser.add_argument("--repeats", type=int, default=5, help="cells per method [5]")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds a cell [3]")
    args = parser.parse_args(argv)
    print("| K | Score µs/ex | ScoreBatch µs/ex | Score / ScoreBatch |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="lw-columnar-") as tmp:
        for k in args.k:
            cost = measure(
                k,
                batch=args.batch,
                clients=args.clients,
                repeats=args.repeats,
                duration=args.duration,
                work=Path(tmp),
            )
            print(
                f"| {k} | {cost['Score']:.1f} | {cost['ScoreBatch']:.1f} | "
                f"{cost['Score'] / cost['ScoreBatch']:.1f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
