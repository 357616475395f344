"""``labelwatch models compare``: how the shadow model flags traffic, next to the live one.

Reads the ``labelwatch_shadow_*`` counters from one or more ``/metrics`` endpoints
(one per worker; their values add up) and prints, per (live, shadow) version pair:
examples compared, the share flagged identically, the label-quality correlation,
the flag rate under each model, and per class the flag rates and their agreement
(tags flagged by both / tags flagged by either), least agreeing first.
"""

from __future__ import annotations

import argparse
import math
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

_DESCRIPTION = """\
Compare the shadow model (serve --shadow-version V) with the live one, from the
labelwatch_shadow_* metrics of one or more servers or workers, e.g.

  labelwatch models compare --metrics-url http://127.0.0.1:9464/metrics

Per class: the flag rate (flagged tags per compared example) under each model,
and the agreement, tags flagged by both / tags flagged by either (1 = the same
tags flagged; empty when neither flagged any).
"""


@dataclass
class PairStats:
    """Summed shadow counters of one (live_version, shadow_version) pair."""

    examples: float = 0.0
    agreeing: float = 0.0
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    classes: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )

    def correlation(self) -> float:
        """Pearson correlation of live and shadow label quality (NaN if undefined)."""
        n = self.examples
        if n < 2:
            return math.nan
        s = self.sums
        cov = s["product"] / n - (s["live"] / n) * (s["shadow"] / n)
        var_x = s["live_sq"] / n - (s["live"] / n) ** 2
        var_y = s["shadow_sq"] / n - (s["shadow"] / n) ** 2
        if var_x <= 0 or var_y <= 0:
            return math.nan
        return max(-1.0, min(1.0, cov / math.sqrt(var_x * var_y)))

    def flag_rate(self, model: str) -> float:
        """Flagged tags per compared example under ``model`` (live or shadow)."""
        total = sum(c[model] for c in self.classes.values())
        return total / self.examples if self.examples else math.nan


def agreement(counts: dict[str, float]) -> float:
    """Tags flagged by both / tags flagged by either (NaN when neither flagged one).

    >>> agreement({"live": 4, "shadow": 2, "both": 2}), agreement({"live": 0, "shadow": 0})
    (0.5, nan)
    """
    either = counts.get("live", 0.0) + counts.get("shadow", 0.0) - counts.get("both", 0.0)
    return counts.get("both", 0.0) / either if either > 0 else math.nan


def collect(texts: Iterable[str]) -> dict[tuple[str, str], PairStats]:
    """Sum the shadow counters of every exposition text in ``texts``, per version pair."""
    pairs: dict[tuple[str, str], PairStats] = defaultdict(PairStats)
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                labels = sample.labels
                if "live_version" not in labels:
                    continue
                stats = pairs[(labels["live_version"], labels["shadow_version"])]
                if sample.name == "labelwatch_shadow_examples_total":
                    stats.examples += sample.value
                elif sample.name == "labelwatch_shadow_examples_agreeing_total":
                    stats.agreeing += sample.value
                elif sample.name == "labelwatch_shadow_label_quality_sums_total":
                    stats.sums[labels["term"]] += sample.value
                elif sample.name == "labelwatch_shadow_class_flags_total":
                    stats.classes[labels["class"]][labels["flagged_by"]] += sample.value
    return dict(pairs)


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def report(pairs: dict[tuple[str, str], PairStats], *, top: int) -> str:
    """The text ``labelwatch models compare`` prints."""
    if not pairs:
        return (
            "no shadow comparisons in these metrics: is the server running with "
            "--shadow-version, and has it scored traffic yet?\n"
        )
    lines: list[str] = []
    for (live, shadow), s in sorted(pairs.items()):
        n = s.examples
        lines.append(f"live {live} vs shadow {shadow}: {int(n)} examples compared")
        lines.append(f"  examples flagged identically: {_fmt(s.agreeing / n if n else math.nan)}")
        lines.append(f"  label-quality correlation:    {_fmt(s.correlation(), 4)}")
        lines.append(
            f"  flag rate (tags/example):     live {_fmt(s.flag_rate('live'), 4)}  "
            f"shadow {_fmt(s.flag_rate('shadow'), 4)}"
        )
        rows = sorted(
            s.classes.items(),
            key=lambda item: (_sort_agreement(item[1]), item[0]),
        )
        if rows:
            lines.append(f"  {'class':<32} {'live':>8} {'shadow':>8} {'agreement':>10}")
            for name, counts in rows[:top]:
                lines.append(
                    f"  {name:<32} {_fmt(counts['live'] / n if n else math.nan, 4):>8} "
                    f"{_fmt(counts['shadow'] / n if n else math.nan, 4):>8} "
                    f"{_fmt(agreement(counts)):>10}"
                )
            if len(rows) > top:
                lines.append(f"  ... {len(rows) - top} more classes (--top)")
    return "\n".join(lines) + "\n"


def _sort_agreement(counts: dict[str, float]) -> float:
    value = agreement(counts)
    return 2.0 if math.isnan(value) else value


def _fetch(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode("utf-8")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``models`` subcommand (``models compare``)."""
    parser = subparsers.add_parser("models", help="inspect the served and shadow models")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    compare = sub.add_parser(
        "compare",
        help="shadow vs live model agreement, from the metrics endpoint(s)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument(
        "--metrics-url",
        action="append",
        required=True,
        metavar="URL",
        help="a /metrics URL; repeat it for each worker (their counts add up)",
    )
    compare.add_argument("--top", type=int, default=20, help="classes shown (default 20)")
    compare.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per scrape (default 10)"
    )
    compare.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Scrape, sum and print; 1 when an endpoint cannot be read."""
    urls: Sequence[str] = args.metrics_url
    texts = []
    for url in urls:
        try:
            texts.append(_fetch(url, args.timeout))
        except (OSError, ValueError) as exc:
            print(f"labelwatch models compare: error: cannot read {url}: {exc}", file=sys.stderr)
            return 1
    sys.stdout.write(report(collect(texts), top=args.top))
    return 0
