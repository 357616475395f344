"""Markdown tables of the rule comparison (``docs/detection.md`` is written from these)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from detectbench.compare import DEFAULT_BUDGET, DEFAULT_M, Row, recall_at_volume
from detectbench.cost import SERVER_CPU_US_K100, Cost
from detectbench.metrics import Reliability

TARGET_VOLUME = 0.10
TARGET_RECALL = 0.50
TARGET_AUROC = 0.88
TARGET_ECE = 0.05
TARGET_COST_SHARE = 0.10


def fmt(value: float, digits: int = 3) -> str:
    """A number for a table cell; ``n/a`` for NaN."""
    return "n/a" if value != value else f"{value:.{digits}f}"


def spread(row: Row, key: str) -> str:
    """``"0.523 ± 0.012"``: mean and standard deviation over the row's trials."""
    vals = row.values(key)
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return fmt(vals[0])
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def spread_max(row: Row, key: str) -> str:
    """``"0.031 ± 0.007 (max 0.043)"``: mean, standard deviation and worst trial."""
    vals = row.values(key)
    return f"{spread(row, key)} (max {max(vals):.3f})" if vals else "n/a"


def label(row: Row) -> tuple[str, str]:
    """The rule and budget cells (the shipped default in bold)."""
    v = row.variant
    name = f"**{v.name}** (default)" if v.is_default else v.name
    return name, "-" if v.budget is None else f"{v.budget:g}"


def rules_table(rows: Sequence[Row], *, real: bool) -> list[str]:
    """One line per variant: volume, recall, precision, review queue, ranking, calibration."""
    volume = "flags / pkg, own tags" if real else "flags / example"
    head = (
        f"| rule | budget | {volume} | recall | R missing | R spurious | precision "
        "| P@100 | P@500 | pkg AUROC | pkg AUPRC | mean error prob. |"
    )
    if not real:
        head += " ECE |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for row in rows:
        cells = [
            *label(row),
            fmt(row.volume),
            spread(row, "recall"),
            fmt(row.mean("recall_missing")),
            fmt(row.mean("recall_spurious")),
            fmt(row.mean("precision")),
            fmt(row.mean("p_at_100")),
            fmt(row.mean("p_at_500")),
            spread(row, "auroc"),
            fmt(row.mean("auprc")),
            fmt(row.mean("mean_error_probability")),
        ]
        if not real:
            cells.append(spread(row, "ece"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def sweeps(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """The budget rule's rows grouped by context model."""
    out: dict[str, list[Row]] = {}
    for row in rows:
        if row.variant.budget is not None:
            out.setdefault(row.variant.name, []).append(row)
    return out


def recall_at_target_table(rows: Sequence[Row]) -> list[str]:
    """Recall interpolated at the target volume along each budget sweep."""
    lines = [
        f"| budget rule | recall at {TARGET_VOLUME:g} flags / pkg on own tags |",
        "|---|---|",
    ]
    for name, sweep in sweeps(rows).items():
        lines.append(f"| {name} | {fmt(recall_at_volume(sweep, TARGET_VOLUME))} |")
    return lines


def default_row(rows: Sequence[Row]) -> Row:
    """The shipped default's row."""
    return next(r for r in rows if r.variant.is_default)


def targets_table(
    real: Sequence[Row], synthetic: Mapping[str, Sequence[Row]], cost: Cost | None
) -> list[str]:
    """The issue's targets against the served default's numbers."""
    d = default_row(real)

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        f"| target (budget rule, m={DEFAULT_M}, budget {DEFAULT_BUDGET:g}) | measured | |",
        "|---|---|---|",
        f"| flags per package on the split's own tags <= {TARGET_VOLUME:.2f} "
        f"| {fmt(d.volume)} | {verdict(d.volume <= TARGET_VOLUME)} |",
        f"| recall of injected errors >= {TARGET_RECALL:.2f} at that volume "
        f"| {spread(d, 'recall')} | {verdict(d.mean('recall') >= TARGET_RECALL)} |",
        f"| package AUROC of label_quality >= {TARGET_AUROC:.2f} "
        f"| {spread(d, 'auroc')} | {verdict(d.mean('auroc') >= TARGET_AUROC)} |",
    ]
    for kind, rows in synthetic.items():
        ece = default_row(rows).mean("ece")
        lines.append(
            f"| error_probability ECE <= {TARGET_ECE:.2f}, synthetic, {kind} noise "
            f"| {spread_max(default_row(rows), 'ece')} | {verdict(ece <= TARGET_ECE)} |"
        )
    if cost is not None:
        share = cost.extra_us / SERVER_CPU_US_K100
        lines.append(
            f"| tag context < {TARGET_COST_SHARE:.0%} of per-example server CPU at "
            f"K={cost.n_classes} | +{cost.extra_us:.1f} µs of {SERVER_CPU_US_K100:.0f} µs "
            f"= {share:.1%} | {verdict(share < TARGET_COST_SHARE)} |"
        )
    return lines


def ece_by_budget_table(synthetic: Mapping[str, Sequence[Row]]) -> list[str]:
    """ECE of the m=16 budget rule at every budget, per noise kind (mean ± sd, worst trial)."""
    kinds = list(synthetic)
    lines = [
        "| budget | " + " | ".join(f"ECE {k}" for k in kinds) + " |",
        "|---" * (len(kinds) + 1) + "|",
    ]
    by_kind = {
        k: {r.variant.budget: r for r in sweeps(rows).get(f"budget m={DEFAULT_M}", [])}
        for k, rows in synthetic.items()
    }
    budgets = sorted({b for rows in by_kind.values() for b in rows if b is not None})
    for b in budgets:
        cells = [spread_max(by_kind[k][b], "ece") if b in by_kind[k] else "n/a" for k in kinds]
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    return lines


def reliability_table(kind: str, reliability: Reliability) -> list[str]:
    """Bins of the pooled reliability at the default budget."""
    lines = [
        f"{kind} noise, budget {DEFAULT_BUDGET:g}, all trials pooled "
        f"(ECE of the pooled bins {fmt(reliability.ece())}):",
        "",
        "| error_probability bin | flagged tags | mean error_probability | share wrong |",
        "|---|---|---|---|",
    ]
    for lo, hi, n, p, w in reliability.rows():
        lines.append(f"| {lo:.1f}-{hi:.1f} | {n} | {p:.3f} | {w:.3f} |")
    return lines


def cost_lines(cost: Cost) -> list[str]:
    """The serving cost of tag context, in words."""
    share = cost.extra_us / SERVER_CPU_US_K100
    return [
        f"`decide` CPU per example, in process, batch {cost.batch}, K = {cost.n_classes} "
        f"(median of passes over the test split): {cost.without_context_us:.1f} µs for "
        f"`confident_learning` on the context-free artifact, {cost.with_context_us:.1f} µs "
        f"for the budget rule with m = {DEFAULT_M}: tag context adds "
        f"{cost.extra_us:.1f} µs, {share:.1%} of the {SERVER_CPU_US_K100:.0f} µs a server "
        "spends per example at K = 100 (docs/performance.md).",
    ]


def comparison_markdown(
    real: Sequence[Row],
    synthetic: Mapping[str, Sequence[Row]],
    cost: Cost | None,
    seeds: int,
) -> str:
    """Every table of the rule comparison."""
    lines = [
        "## Rules compared",
        "",
        f"### Debtags test split, injected noise ({seeds} seeds; volume on the split's own tags)",
        "",
        *rules_table(real, real=True),
        "",
        *recall_at_target_table(real),
        "",
        "### Targets (served default)",
        "",
        *targets_table(real, synthetic, cost),
    ]
    for kind, rows in synthetic.items():
        lines += [
            "",
            f"### Synthetic track, {kind} noise ({seeds} trials, exact truth)",
            "",
            *rules_table(rows, real=False),
        ]
    if synthetic:
        lines += ["", "### ECE of error_probability by budget (synthetic)", ""]
        lines += ece_by_budget_table(synthetic)
    for kind, rows in synthetic.items():
        rel = default_row(rows).reliability
        if rel is not None:
            lines += ["", *reliability_table(kind, rel)]
    if cost is not None:
        lines += ["", "### Serving cost of tag context", "", *cost_lines(cost)]
    return "\n".join(lines)


def nan_safe(value: float) -> float | None:
    """JSON has no NaN: ``None`` instead."""
    return None if math.isnan(value) else value
