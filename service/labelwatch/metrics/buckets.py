"""Histogram bucket bounds shared by several families (changing them changes every chart)."""

from __future__ import annotations

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Upper bounds, in seconds, of the server-side latency histograms (RPCs, model, scoring)."""
