"""A self-contained HTML audit report: inline CSS and SVG, no scripts, no external files.

Sections: a summary, a histogram of label-quality scores (flagged examples
stacked on the rest), per-class MISSING/SPURIOUS flag rates, the worst examples
and the per-class table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

import numpy as np
from numpy.typing import NDArray

from labelwatch.datasets import LabeledData
from labelwatch.scoring.cutoffs import Basis, Cutoffs

N_WORST = 50
N_CLASS_BARS = 40
_BINS = 20
_CLEAN, _FLAGGED = "#8da0cb", "#e5604d"
_MISSING, _SPURIOUS = "#e5604d", "#f2a541"

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;width:100%}td,th{padding:3px 8px;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;
font-variant-numeric:tabular-nums}.miss{color:#b3261e}.spur{color:#9a5b00}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dt{color:#666}
svg text{font:11px system-ui,sans-serif;fill:#333}
"""


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def score_histogram_svg(scores: NDArray[np.float64], is_issue: NDArray[np.bool_]) -> str:
    """SVG histogram of ``scores`` ``(N,)`` in ``[0, 1]``; flagged examples stacked on top."""
    width, height, left, bottom, top = 640, 240, 60, 30, 16
    edges = np.linspace(0.0, 1.0, _BINS + 1)
    flagged, _ = np.histogram(scores[is_issue], bins=edges)
    clean, _ = np.histogram(scores[~is_issue], bins=edges)
    peak = max(int((flagged + clean).max()), 1)
    plot_w, plot_h = width - left - 10, height - bottom - top
    bar_w = plot_w / _BINS
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="histogram of label-quality scores">'
    ]
    for b in range(_BINS):
        x = left + b * bar_w
        y_base = float(top + plot_h)
        for count, colour, kind in (
            (clean[b], _CLEAN, "not flagged"),
            (flagged[b], _FLAGGED, "flagged"),
        ):
            h = plot_h * int(count) / peak
            if h <= 0:
                continue
            y_base -= h
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{y_base:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{edges[b]:.2f}-{edges[b + 1]:.2f}: {int(count)} '
                f"{kind}</title></rect>"
            )
    axis_y = top + plot_h
    parts.append(
        f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#333"/>'
    )
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="#333"/>')
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + tick * plot_w
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">{tick:g}</text>')
    for frac in (0.0, 0.5, 1.0):
        y = axis_y - frac * plot_h
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{round(frac * peak)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 2}" text-anchor="middle">'
        "label quality (lower = more likely mislabeled)</text>"
    )
    parts.append(
        f'<rect x="{width - 200}" y="2" width="10" height="10" fill="{_CLEAN}"/>'
        f'<text x="{width - 186}" y="11">not flagged</text>'
        f'<rect x="{width - 100}" y="2" width="10" height="10" fill="{_FLAGGED}"/>'
        f'<text x="{width - 86}" y="11">flagged</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def class_rates_svg(
    class_names: Sequence[str],
    missing_rate: NDArray[np.float64],
    spurious_rate: NDArray[np.float64],
    limit: int = N_CLASS_BARS,
) -> str:
    """Horizontal stacked bars of per-class flag rates ``(K,)`` (fractions of N).

    Shows the ``limit`` classes with the highest total rate, highest first.
    """
    total = missing_rate + spurious_rate
    order = np.argsort(-total, kind="stable")[:limit]
    row_h, left, right, top = 18, 190, 70, 22
    width = 640
    plot_w = width - left - right
    height = top + row_h * len(order) + 6
    peak = max(float(total[order].max()) if order.size else 0.0, 1e-12)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="per-class flag rates">',
        f'<rect x="{left}" y="4" width="10" height="10" fill="{_MISSING}"/>'
        f'<text x="{left + 14}" y="13">MISSING (untagged, flagged)</text>'
        f'<rect x="{left + 230}" y="4" width="10" height="10" fill="{_SPURIOUS}"/>'
        f'<text x="{left + 244}" y="13">SPURIOUS (tagged, flagged)</text>',
    ]
    for row, k in enumerate(order.tolist()):
        y = top + row * row_h
        name = escape(_short(class_names[k]))
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{name}</text>')
        x = float(left)
        for rate, colour, kind in (
            (missing_rate[k], _MISSING, "missing"),
            (spurious_rate[k], _SPURIOUS, "spurious"),
        ):
            w = plot_w * float(rate) / peak
            if w > 0:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" '
                    f'fill="{colour}"><title>{escape(class_names[k])}: {kind} '
                    f"{100 * float(rate):.2f}%</title></rect>"
                )
                x += w
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 12}">{100 * float(total[k]):.2f}%</text>')
    parts.append("</svg>")
    return "".join(parts)


_BASIS_NOTE = {
    Basis.CONFIDENT_THRESHOLD: "p is the model's probability of the class; the bound is the "
    "class's confident threshold on the p scale (t1 for missing, 1 \u2212 t0 for spurious).",
    Basis.RANK_CUTOFF: "p is the model's probability of the class. This rule flags, in each "
    "class, the pairs the model disagrees with most, up to the number of errors Confident "
    "Learning estimates there; the bound is that rank cut-off: the p of the last pair taken "
    "in the class (t0 and t1 only set how many are taken).",
    Basis.ARGMAX: "p is the model's probability of the class; this rule flags a tag the "
    "model's yes/no answer (p > 0.5) contradicts.",
    Basis.EXAMPLE_SCORE: "p is the model's probability of the class. This rule flags whole "
    "examples whose score (self-confidence pooled by EMA) is at or below the cut-off, and "
    "names the classes the example's tags disagree with most; there is no per-class bound.",
    Basis.NONE: "p is the model's probability of the class; this rule does not decide by a "
    "bound on p.",
}


def _issue_cells(
    i: int,
    data: LabeledData,
    flags: NDArray[np.bool_],
    t0: NDArray[np.float64],
    t1: NDArray[np.float64],
    cutoffs: Cutoffs | None = None,
) -> str:
    """The suspected issues of example ``i``, each with the bound that really decided it."""
    items = []
    for k in np.flatnonzero(flags[i]).tolist():
        p = float(data.pred_probs[i, k])
        name = escape(data.class_names[k])
        spurious = bool(data.labels[i, k])
        sign, css = ("\u2212", "spur") if spurious else ("+", "miss")
        if cutoffs is None:
            bound: float | None = 1 - float(t0[k]) if spurious else float(t1[k])
            what = ""
        elif cutoffs.basis in (Basis.EXAMPLE_SCORE, Basis.NONE):
            bound, what = None, ""
        else:
            bound = float(cutoffs.p[k, int(spurious)])
            what = " rank cut-off" if cutoffs.basis is Basis.RANK_CUTOFF else ""
        if bound is None and (cutoffs is None or cutoffs.scores is None):
            why = f"p={_fmt(p)}"
        elif bound is None:
            assert cutoffs is not None and cutoffs.scores is not None
            why = (
                f"p={_fmt(p)}; example score {_fmt(float(cutoffs.scores[i]))} \u2264 "
                f"{_fmt(cutoffs.score_cutoff)}"
            )
        else:
            # rounding to 4 digits is monotone, so a true p-vs-bound comparison stays true
            relation = "\u2264" if spurious else "\u2265"
            why = f"p={_fmt(p)} {relation}{what} {_fmt(bound)}"
        items.append(f'<span class="{css}">{sign}{name} ({why})</span>')
    return "<br>".join(items)


def worst_table(
    data: LabeledData,
    flags: NDArray[np.bool_],
    label_quality: NDArray[np.float64],
    t0: NDArray[np.float64],
    t1: NDArray[np.float64],
    limit: int = N_WORST,
    cutoffs: Cutoffs | None = None,
) -> str:
    """HTML table of the ``limit`` examples with the lowest label quality."""
    order = np.argsort(label_quality, kind="stable")[:limit]
    rows = [
        "<table><tr><th>#</th><th>index</th><th>id</th><th>label quality</th>"
        "<th>given labels</th><th>suspected issues (+ missing, \u2212 spurious)</th></tr>"
    ]
    for rank, i in enumerate(order.tolist(), start=1):
        given = ", ".join(
            escape(data.class_names[k]) for k in np.flatnonzero(data.labels[i]).tolist()
        )
        rows.append(
            f'<tr><td class="n">{rank}</td><td class="n">{i}</td><td>{escape(data.ids[i])}</td>'
            f'<td class="n">{label_quality[i]:.4f}</td><td>{given or "<em>none</em>"}</td>'
            f"<td>{_issue_cells(i, data, flags, t0, t1, cutoffs)}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def class_table(
    data: LabeledData,
    flags: NDArray[np.bool_],
    t0: NDArray[np.float64],
    t1: NDArray[np.float64],
) -> str:
    """HTML table: per class, tag count, thresholds and flag counts."""
    tagged = data.labels.sum(axis=0)
    missing = (flags & ~data.labels).sum(axis=0)
    spurious = (flags & data.labels).sum(axis=0)
    rows = [
        "<table><tr><th>class</th><th>tagged</th><th>t0</th><th>t1</th>"
        "<th>flagged missing</th><th>flagged spurious</th></tr>"
    ]
    for k, name in enumerate(data.class_names):
        rows.append(
            f"<tr><td>{escape(name)}</td><td class='n'>{int(tagged[k])}</td>"
            f"<td class='n'>{_fmt(float(t0[k]))}</td><td class='n'>{_fmt(float(t1[k]))}</td>"
            f"<td class='n'>{int(missing[k])}</td><td class='n'>{int(spurious[k])}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def render(
    data: LabeledData,
    flags: NDArray[np.bool_],
    label_quality: NDArray[np.float64],
    t0: NDArray[np.float64],
    t1: NDArray[np.float64],
    meta: Mapping[str, str],
    cutoffs: Cutoffs | None = None,
) -> str:
    """The whole report as one HTML document.

    ``flags`` ``(N, K)`` bool, ``label_quality`` ``(N,)``, ``t0``/``t1`` ``(K,)``;
    ``meta`` is shown as the summary list (e.g. data path, rule, mode); ``cutoffs``:
    what the rule compared (without it, every flag is shown against t1 / 1 - t0, right
    for ``confident_learning`` only).
    """
    n = max(data.n_examples, 1)
    is_issue: NDArray[np.bool_] = np.asarray(flags.any(axis=1))
    missing_rate = (flags & ~data.labels).sum(axis=0) / n
    spurious_rate = (flags & data.labels).sum(axis=0) / n
    summary = {
        **meta,
        "examples": str(data.n_examples),
        "classes": str(data.n_classes),
        "examples with an issue": f"{int(is_issue.sum())} ({100 * float(is_issue.mean()):.2f}%)",
        "flagged MISSING tags": str(int((flags & ~data.labels).sum())),
        "flagged SPURIOUS tags": str(int((flags & data.labels).sum())),
    }
    shown = min(N_CLASS_BARS, data.n_classes)
    bars_note = (
        f"<p>The {shown} classes with the highest flag rates of {data.n_classes}.</p>"
        if shown < data.n_classes
        else ""
    )
    worst = min(N_WORST, data.n_examples)
    return "".join(
        [
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            "<title>labelwatch audit</title>",
            f"<style>{_CSS}</style></head><body>",
            "<h1>labelwatch audit</h1><dl>",
            *(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in summary.items()),
            "</dl>",
            '<h2 id="scores">Label-quality scores</h2>',
            score_histogram_svg(label_quality, is_issue),
            '<h2 id="classes">Flag rates per class</h2>',
            "<p>Fraction of all examples flagged, per class.</p>",
            bars_note,
            class_rates_svg(data.class_names, missing_rate, spurious_rate),
            f'<h2 id="worst">The {worst} lowest-scoring examples</h2>',
            f"<p>{_BASIS_NOTE[cutoffs.basis if cutoffs else Basis.CONFIDENT_THRESHOLD]}</p>",
            worst_table(data, flags, label_quality, t0, t1, cutoffs=cutoffs),
            '<h2 id="summary">Per-class summary</h2><details><summary>show all classes</summary>',
            class_table(data, flags, t0, t1),
            "</details></body></html>\n",
        ]
    )
