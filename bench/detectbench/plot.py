"""The reliability diagram of ``error_probability`` on the synthetic track, as a PNG.

matplotlib is imported here only (the ``bench`` extra: ``pip install '.[bench]'``), so
the rest of the benchmark runs without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from detectbench.metrics import ECE_BINS, Reliability

Panels = Mapping[str, Mapping[float, Reliability]]
"""Per panel title (the noise kind), per flag budget, the pooled reliability bins."""


def reliability_png(panels: Panels, path: Path, *, default_budget: float) -> None:
    """Write one column per noise kind: observed share wrong against mean error probability
    per bin (one line per budget, the default budget drawn thicker), and the flagged pairs
    per bin below it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(5.2 * len(panels), 6.4),
        gridspec_kw={"height_ratios": [3, 1]},
        squeeze=False,
        sharex=True,
    )
    centres = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
    for col, (title, by_budget) in enumerate(panels.items()):
        top, bottom = axes[0][col], axes[1][col]
        top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect")
        width = 0.8 / (ECE_BINS * max(len(by_budget), 1))
        for i, (budget, rel) in enumerate(sorted(by_budget.items())):
            seen = rel.count > 0
            mean_p = rel.prob_sum[seen] / rel.count[seen]
            share = rel.wrong_sum[seen] / rel.count[seen]
            bold = budget == default_budget
            top.plot(
                mean_p,
                share,
                marker="o",
                markersize=5 if bold else 3,
                linewidth=2.2 if bold else 1.0,
                label=f"budget {budget:g} (pooled ECE {rel.ece():.3f})"
                + (", default" if bold else ""),
            )
            offset = (i - (len(by_budget) - 1) / 2) * width
            bottom.bar(centres + offset, rel.count, width=width)
        top.set_title(f"{title} noise")
        top.set_ylabel("share of flagged tags that are wrong")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.legend(loc="upper left", fontsize=8)
        top.grid(alpha=0.3)
        bottom.set_xlabel("error_probability (bin)")
        bottom.set_ylabel("flagged tags")
        bottom.grid(alpha=0.3)
    fig.suptitle("Reliability of error_probability on the synthetic track (all trials pooled)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
