"""Verdicts on flags: ``labelwatch_flag_verdicts_total{verdict, class}``.

The ``class`` label is capped like the scoring server's per-class series: the
first ``max_class_series`` classes of the model keep their name, the others (and
names the model does not have) are counted under ``__other__``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter

from labelwatch.metrics.drift import DEFAULT_MAX_CLASS_SERIES, OTHER_CLASS
from labelwatch.outbox import VerdictRow

VERDICTS = ("CONFIRMED", "REJECTED")


class VerdictMetrics:
    """The verdict counter on ``registry`` for a model with ``class_names``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        class_names: Sequence[str],
        *,
        max_class_series: int = DEFAULT_MAX_CLASS_SERIES,
    ) -> None:
        self._index = {name: k for k, name in enumerate(class_names)}
        self._max = max_class_series
        self.verdicts = Counter(
            "labelwatch_flag_verdicts_total",
            "Reviewers' verdicts on flagged classes, as recorded (a changed verdict counts "
            "again under its new value), by verdict and class.",
            ["verdict", "class"],
            registry=registry,
        )

    def class_label(self, label: str) -> str:
        """The ``class`` label value of ``label``.

        >>> VerdictMetrics(CollectorRegistry(), ["a", "b"], max_class_series=1).class_label("b")
        '__other__'
        """
        k = self._index.get(label)
        return label if k is not None and k < self._max else OTHER_CLASS

    def count(self, row: VerdictRow) -> None:
        """Count one new or changed verdict."""
        self.verdicts.labels(row.verdict, self.class_label(row.label)).inc()
