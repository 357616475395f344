"""Class-major copies of ``(N, K)`` data: each class's probabilities split by side.

Every one-vs-rest step works on one class at a time, but a column of a row-major
``(N, K)`` array strides through memory. The batch path therefore transposes once,
in cache-sized blocks of examples, and splits each class's probabilities into its
untagged and tagged examples, in example order (what cleanlab's boolean indexing
``p[labels == g]`` yields), ready for exact means (:mod:`.thresholds`) and for
order statistics (:mod:`.flags`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

TILE_BYTES = 2**18
"""Bytes of input per block in :func:`transpose_into` (a block and its transpose stay in cache)."""


def transpose_into(out: NDArray[np.generic], a: NDArray[np.generic]) -> None:
    """Write ``a.T`` (``a`` is ``(N, K)``) into ``out`` (``(K, N)``), block of rows by block.

    Same values as ``out[...] = a.T``; faster on large arrays, whose plain
    transposed copy strides through memory.
    """
    rows = max(256, TILE_BYTES // max(1, a.shape[1] * a.itemsize))
    for start in range(0, a.shape[0], rows):
        out[:, start : start + rows] = a[start : start + rows].T


@dataclass(frozen=True)
class Sides:
    """Per class and side ``g`` (0 untagged, 1 tagged): that side's probabilities.

    ``values[g]`` is ``(K + pairs on side g,)``, of the input's dtype: for each class in turn a
    0.0, then ``p`` of the class's side-g examples in example order; ``starts[g]``
    ``(K,)`` the offsets of those zeros. ``counts`` ``(K, 2)`` int64: untagged and
    tagged examples. ``sums`` ``(K, 2)``, same dtype: per class the sum of ``1 - p``
    over untagged and of ``p`` over tagged examples, each exactly as ``np.sum``
    adds the masked column (0 plus numpy's pairwise sum, which ``np.add.reduceat``
    reproduces from the segment's leading 0.0).
    """

    values: tuple[NDArray[np.float64], NDArray[np.float64]]  # empty if not kept
    starts: tuple[NDArray[np.intp], NDArray[np.intp]]
    counts: NDArray[np.int64]
    sums: NDArray[np.float64]

    def segment(self, c: int, g: int) -> NDArray[np.float64]:
        """``(counts[c, g],)``: class ``c``'s side-``g`` probabilities (a view)."""
        start = int(self.starts[g][c]) + 1
        return self.values[g][start : start + int(self.counts[c, g])]


CHUNK_BYTES = 2**22
"""Classes are split a chunk of about this many bytes of transposed data at a time (in cache)..."""
CHUNK_MIN_CLASSES = 32
"""...but at least this many (narrower chunks read partial cache lines of the input)."""


def split_sides(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], *, keep_values: bool = True
) -> Sides:
    """Split ``(N, K)`` float64/float32 ``probs`` by ``(N, K)`` bool ``tags`` (:class:`Sides`).

    A chunk of classes at a time: transpose it (with a leading 0.0 column), then
    gather each side (``np.take`` of ``np.flatnonzero``, faster than boolean
    indexing on an irregular mask) and sum it while it is in cache.
    ``keep_values=False``: only ``counts`` and ``sums`` are wanted (``values`` empty).
    """
    n, k = probs.shape
    dtype = probs.dtype
    width = max(1, min(k, max(CHUNK_MIN_CLASSES, CHUNK_BYTES // (dtype.itemsize * (n + 1)))))
    n_tagged = int(np.count_nonzero(tags))
    totals = (k * (n + 1) - n_tagged, k + n_tagged)  # with the leading zeros
    values = tuple(np.empty(total if keep_values else 0, dtype=dtype) for total in totals)
    starts = (np.zeros(k + 1, dtype=np.intp), np.zeros(k + 1, dtype=np.intp))
    counts = np.empty((k, 2), dtype=np.int64)
    sums = np.empty((k, 2), dtype=dtype)
    p_t = np.empty((width, n + 1), dtype=dtype)
    p_t[:, 0] = 0.0
    mask = np.empty((width, n + 1), dtype=np.bool_)
    mask[:, 0] = True
    for c0 in range(0, k, width):
        c1 = min(c0 + width, k)
        chunk, chunk_mask = p_t[: c1 - c0], mask[: c1 - c0]
        transpose_into(chunk[:, 1:], probs[:, c0:c1])
        transpose_into(chunk_mask[:, 1:], tags[:, c0:c1])
        for g in (1, 0):
            if g == 0:
                np.logical_not(chunk_mask[:, 1:], out=chunk_mask[:, 1:])
            lengths = np.count_nonzero(chunk_mask, axis=1)
            counts[c0:c1, g] = lengths - 1
            np.cumsum(lengths, out=starts[g][c0 + 1 : c1 + 1])
            starts[g][c0 + 1 : c1 + 1] += starts[g][c0]
            picked = np.flatnonzero(chunk_mask)
            if keep_values:
                out = values[g][starts[g][c0] : starts[g][c1]]
                np.take(chunk.reshape(-1), picked, out=out, mode="clip")
            else:
                out = np.take(chunk.reshape(-1), picked, mode="clip")
            local = starts[g][c0:c1] - starts[g][c0]
            if g == 0:  # cleanlab averages 1 - p on the untagged side
                out = np.subtract(1.0, out, out=None if keep_values else out)
                out[local] = 0.0
            sums[c0:c1, g] = np.add.reduceat(out, local)
    return Sides(
        values=(values[0], values[1]),
        starts=(starts[0][:-1], starts[1][:-1]),
        counts=counts,
        sums=sums,
    )
