"""Medians over repeats, ratios, target checks and the markdown tables of ``bench/serve.py``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from servebench.clients import CellResult


@dataclass(frozen=True)
class Summary:
    """Median of each number over a cell's repeats (errors are summed)."""

    examples_per_s: float
    p50_ms: float
    p99_ms: float
    repeats: int
    errors: int
    first_error: str
    per_repeat: tuple[float, ...]
    filter_skipped: int = 0
    filter_ran: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""
        return {
            "examples_per_s": _num(self.examples_per_s),
            "p50_ms": _num(self.p50_ms),
            "p99_ms": _num(self.p99_ms),
            "repeats": self.repeats,
            "errors": self.errors,
            "first_error": self.first_error,
            "examples_per_s_each": [_num(x) for x in self.per_repeat],
            "cleanlab_filter_skipped": self.filter_skipped,
            "cleanlab_filter_ran": self.filter_ran,
        }


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def summarize(results: Sequence[CellResult]) -> Summary:
    """The medians of ``results`` (one per repeat)."""
    errors = [r for r in results if r.errors]
    return Summary(
        examples_per_s=_median(r.examples_per_s for r in results),
        p50_ms=_median(r.p50_ms for r in results),
        p99_ms=_median(r.p99_ms for r in results),
        repeats=len(results),
        errors=sum(r.errors for r in results),
        first_error=errors[0].first_error if errors else "",
        per_repeat=tuple(r.examples_per_s for r in results),
        filter_skipped=sum(r.filter_skipped for r in results),
        filter_ran=sum(r.filter_ran for r in results),
    )


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def fmt_rate(x: float | None) -> str:
    """Examples per second, rounded for a table."""
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def fmt_ms(x: float | None) -> str:
    """Milliseconds for a table."""
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def fmt_us(x: float | None) -> str:
    """Microseconds for a table (``-`` when unknown)."""
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.1f}" if x < 10 else f"{x:,.0f}"


def fmt_ratio(x: float | None) -> str:
    """A ratio for a table, e.g. ``0.93x``."""
    return "n/a" if x is None else f"{x:.2f}x"


def fmt_lat(row: dict[str, Any], key: str) -> str:
    """``p50 / p99`` of a system's summary in a grid row, or ``-``."""
    s = row.get(key)
    if not s or s.get("p50_ms") is None:
        return "-"
    return f"{fmt_ms(s['p50_ms'])} / {fmt_ms(s['p99_ms'])}"


def fmt_mib(n: int | float | None) -> str:
    """Bytes as MiB."""
    return "n/a" if n is None else f"{n / 2**20:,.0f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _rate(row: dict[str, Any], key: str) -> float | None:
    s = row.get(key)
    return None if not s else s.get("examples_per_s")


def _flag_errors(row: dict[str, Any], key: str) -> str:
    s = row.get(key)
    return " (errors!)" if s and s.get("errors") else ""


def grid_table(grid: Sequence[dict[str, Any]]) -> str:
    """The main table: labelwatch, the peer with cleanlab, the peer model-only, ratios."""
    header = [
        "model",
        "workers",
        "call",
        "clients",
        "labelwatch ex/s",
        "p50 / p99 ms",
        "server CPU µs/ex",
        "÷ limit",
        "MLServer+cleanlab ex/s",
        "p50 / p99 ms",
        "MLServer model-only ex/s",
        "p50 / p99 ms",
        "÷ peer",
        "÷ peer model-only",
    ]
    rows = []
    for r in grid:
        call = f"{r['mode']} b{r['batch']}"
        lw = _rate(r, "labelwatch")
        rows.append(
            [
                r["model"],
                str(r["workers"]),
                call,
                str(r["clients"]),
                fmt_rate(lw) + _flag_errors(r, "labelwatch"),
                fmt_lat(r, "labelwatch"),
                fmt_us(r.get("labelwatch_cpu_us_per_example")),
                fmt_ratio(r.get("labelwatch_over_limit")),
                fmt_rate(_rate(r, "peer")) + _flag_errors(r, "peer"),
                fmt_lat(r, "peer"),
                fmt_rate(_rate(r, "peer-model")) + _flag_errors(r, "peer-model"),
                fmt_lat(r, "peer-model"),
                fmt_ratio(r.get("labelwatch_over_peer")),
                fmt_ratio(r.get("labelwatch_over_peer_model")),
            ]
        )
    return markdown(header, rows)


def limit_table(limits: Sequence[dict[str, Any]]) -> str:
    """The in-process limit per model, batch size and number of concurrent callers.

    The row marked **limit** (the best caller count) is what served rates are divided by.
    """
    rows = [
        [
            x["model"],
            str(x["batch"]),
            str(x.get("callers", 1)),
            str(x.get("intra_op_threads", "-")) if x.get("intra_op_threads") else "-",
            fmt_rate(x["examples_per_s"]) + (" **limit**" if x.get("best") else ""),
            fmt_ms(x["p50_ms"]),
            fmt_ms(x["p99_ms"]),
            fmt_us(x.get("cpu_us_per_example")),
        ]
        for x in limits
    ]
    header = [
        "model",
        "batch",
        "callers",
        "intra-op threads each",
        "ex/s",
        "p50 ms",
        "p99 ms",
        "CPU µs/example",
    ]
    return markdown(header, rows)


def engine_table(engine: Sequence[dict[str, Any]]) -> str:
    """labelwatch's engine in-process per ``--model-concurrency`` (the choice of auto)."""
    rows = [
        [
            e["model"],
            e["requested"],
            str(e["concurrency"]),
            str(e["intra_op_threads"]) if e["intra_op_threads"] else "-",
            fmt_rate(e["examples_per_s"]),
            " / ".join(fmt_rate(x) for x in e.get("examples_per_s_each", [])),
            f"{e['cpu_us_per_example']:.0f}",
            f"{fmt_ms(e['p50_ms'])} / {fmt_ms(e['p99_ms'])}",
        ]
        for e in engine
    ]
    header = [
        "model",
        "--model-concurrency",
        "calls",
        "intra-op threads each",
        "ex/s (median)",
        "each repeat",
        "CPU µs/example",
        "p50 / p99 ms",
    ]
    return markdown(header, rows)


def memory_table(memory: Sequence[dict[str, Any]]) -> str:
    """Server memory idle and at 64 concurrent streams."""
    rows = [
        [
            m["model"],
            m["server"],
            str(m["workers"]),
            fmt_mib(m["rss_idle"]),
            fmt_mib(m["peak_rss"]),
            fmt_rate(m.get("examples_per_s")),
        ]
        for m in memory
    ]
    header = [
        "model",
        "server",
        "workers",
        "RSS after start MiB",
        "peak RSS (VmHWM) at 64 streams MiB",
        "ex/s",
    ]
    return markdown(header, rows)


def k_table(sweep: Sequence[dict[str, Any]]) -> str:
    """Per-example cost as the number of classes K grows."""
    rows = [
        [
            str(k["k"]),
            fmt_rate(k["examples_per_s"]),
            f"{k['server_cpu_us_per_example']:.0f}",
            f"{k['server_cpu_ns_per_example_class']:.0f}",
            f"{k['limit_us_per_example']:.1f}",
            fmt_mib(k["peak_rss"]),
        ]
        for k in sweep
    ]
    header = [
        "K",
        "ex/s (unary b64, 8 clients)",
        "server CPU µs/example",
        "server CPU ns/(example·class)",
        "in-process scoring µs/example",
        "peak RSS MiB",
    ]
    return markdown(header, rows)


def tuning_table(tuning: Sequence[dict[str, Any]]) -> str:
    """Thread and spinning settings per worker count."""
    rows = []
    for t in tuning:
        one, sixteen, big = t["b1_c1"], t["b1_c16"], t["b64_c8"]
        intra = t["intra_op_threads"]
        rows.append(
            [
                str(t["workers"]),
                t.get("model_concurrency", "auto"),
                "default (0)" if intra is None else str(intra),
                "on" if t["spinning"] else "off",
                t["outbox_sync"],
                f"{fmt_ms(one['p50_ms'])} / {fmt_ms(one['p99_ms'])}",
                fmt_rate(sixteen["examples_per_s"]),
                f"{fmt_ms(sixteen['p50_ms'])} / {fmt_ms(sixteen['p99_ms'])}",
                fmt_rate(big["examples_per_s"]),
            ]
        )
    header = [
        "workers",
        "--model-concurrency",
        "intra-op threads",
        "spinning",
        "--outbox-sync",
        "b1 1 client p50 / p99 ms",
        "b1 16 clients ex/s",
        "b1 16 clients p50 / p99 ms",
        "b64 8 clients ex/s",
    ]
    return markdown(header, rows)


def window_table(window: Sequence[dict[str, Any]]) -> str:
    """Batch window at 16 clients, batch 1."""
    rows = [
        [
            f"{w['batch_window_ms']:g}",
            str(w["workers"]),
            fmt_rate(w["examples_per_s"]),
            fmt_ms(w["p50_ms"]),
            fmt_ms(w["p99_ms"]),
        ]
        for w in window
    ]
    return markdown(["--batch-window-ms", "workers", "ex/s", "p50 ms", "p99 ms"], rows)


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """Each target of the issue with the measured value and met / missed."""
    rows = [[t["target"], t["measured"], "met" if t["met"] else "**missed**"] for t in targets]
    return markdown(["target", "measured", ""], rows)
