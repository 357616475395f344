"""Per-example input limits, checked by the codec before any work is done.

The other limits live where they act: ``--max-message-bytes`` in gRPC itself,
``--max-batch`` in the gRPC codec, ``--max-inflight`` and ``--max-streams`` in
:mod:`labelwatch.security.admission`, ``--max-queued-calls`` in the server.
docs/security.md lists them all with their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_LABELS_PER_EXAMPLE = 1024
"""Most tags (``labels`` plus ``label_indices``) one example may carry."""

DEFAULT_MAX_TEXT_BYTES = 64 * 1024
"""Most UTF-8 bytes in one example's ``text``."""


@dataclass(frozen=True)
class ExampleLimits:
    """Bounds on one example; violations are INVALID_ARGUMENT naming example id and field."""

    max_labels: int = DEFAULT_MAX_LABELS_PER_EXAMPLE
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES

    def __post_init__(self) -> None:
        if self.max_labels < 1 or self.max_text_bytes < 1:
            raise ValueError(
                f"limits must be >= 1, got max_labels={self.max_labels}, "
                f"max_text_bytes={self.max_text_bytes}"
            )

    def label_problem(self, n_labels: int, n_indices: int) -> str | None:
        """Why ``n_labels`` names plus ``n_indices`` indices are too many, or None."""
        total = n_labels + n_indices
        if total <= self.max_labels:
            return None
        return (
            f"{total} tags given; at most {self.max_labels} per example (--max-labels-per-example)"
        )

    def text_problem(self, text: str) -> str | None:
        """Why ``text`` is too long, or None. Counts UTF-8 bytes."""
        if len(text) * 4 <= self.max_text_bytes:  # cannot exceed: skip encoding
            return None
        size = len(text.encode("utf-8", "surrogatepass"))
        if size <= self.max_text_bytes:
            return None
        return (
            f"{size} bytes of UTF-8; at most {self.max_text_bytes} per example (--max-text-bytes)"
        )
