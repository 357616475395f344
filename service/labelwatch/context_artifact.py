"""JSON form of an artifact's tag-context sections (schema version 2).

Three sections, present together or not at all (K = ``n_classes``, m = context tags)::

    "context": {"tags_per_class": m,
                "tags": [K lists of m class indices],
                "weights": [K lists of m + 2 floats]},       # [intercept, logit(p), tags...]
    "flag_budget": {"default": R in (0, K], "budgets": [B increasing floats in (0, K]],
                    "cutoffs": [B non-increasing error scores in [0, 1]]},
    "error_probability": {"missing":  {"scores": [...], "probabilities": [...]},
                          "spurious": {"scores": [...], "probabilities": [...]}}

Arrays are validated with numpy (K = 10,000 classes load in well under a second); every
failure names the field and, for arrays, the first offending index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from labelwatch.scoring.budget import BudgetCurve
from labelwatch.scoring.context import ContextModel
from labelwatch.scoring.errorprob import ErrorCalibrator, SidedCalibrator

Fail = Callable[[str, str], Exception]
"""``fail(field, problem)`` builds the loader's error."""

SECTIONS = ("context", "flag_budget", "error_probability")


def to_json(
    context: ContextModel, budget: BudgetCurve, calibrator: SidedCalibrator
) -> dict[str, object]:
    """The three sections as plain JSON values."""
    return {
        "context": {
            "tags_per_class": context.m,
            "tags": context.tags.tolist(),
            "weights": context.weights.tolist(),
        },
        "flag_budget": {
            "default": budget.default,
            "budgets": budget.budgets.tolist(),
            "cutoffs": budget.cutoffs.tolist(),
        },
        "error_probability": {
            side: {"scores": cal.scores.tolist(), "probabilities": cal.probabilities.tolist()}
            for side, cal in (("missing", calibrator.missing), ("spurious", calibrator.spurious))
        },
    }


def _get(mapping: object, key: str, field: str, fail: Fail) -> Any:
    if not isinstance(mapping, Mapping):
        raise fail(field.rpartition(".")[0], "must be a JSON object")
    if key not in mapping:
        raise fail(field, "is missing")
    return mapping[key]


def _array(
    value: object,
    field: str,
    fail: Fail,
    *,
    shape: tuple[int | None, ...] | None,
    integer: bool = False,
) -> NDArray[Any]:
    """A rectangular numeric array of ``shape`` (``None`` in a slot: any length >= 1)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise fail(field, "must be a rectangular array of numbers") from None
    if arr.dtype == object or (shape is not None and arr.ndim != len(shape)):
        raise fail(field, f"must be a {len(shape or ())}-dimensional array of numbers")
    for axis, want in enumerate(shape or ()):
        if want is not None and arr.shape[axis] != want:
            raise fail(field, f"must have {want} entries along axis {axis}, got {arr.shape[axis]}")
        if arr.shape[axis] == 0:
            raise fail(field, "must not be empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise fail(f"{field}{_where(arr, bad[0])}", "must be finite")
    if integer:
        frac = np.flatnonzero(arr != np.round(arr))
        if frac.size:
            raise fail(f"{field}{_where(arr, frac[0])}", "must be an integer")
        return arr.astype(np.int64)
    return arr


def _where(arr: NDArray[Any], flat: int) -> str:
    return "".join(f"[{i}]" for i in np.unravel_index(int(flat), arr.shape))


def _check_range(
    arr: NDArray[Any], field: str, fail: Fail, lo: float, hi: float, *, lo_open: bool = False
) -> None:
    bad = np.flatnonzero((arr < lo) | (arr > hi) | ((arr == lo) if lo_open else False))
    if bad.size:
        bracket = "(" if lo_open else "["
        value = arr.ravel()[bad[0]]
        raise fail(
            f"{field}{_where(arr, bad[0])}", f"must be in {bracket}{lo}, {hi}], got {value!r}"
        )


def _check_monotone(arr: NDArray[Any], field: str, fail: Fail, *, increasing: bool) -> None:
    steps = np.diff(arr)
    bad = np.flatnonzero(steps < 0 if increasing else steps > 0)
    if bad.size:
        word = "non-decreasing" if increasing else "non-increasing"
        raise fail(f"{field}[{int(bad[0]) + 1}]", f"breaks the {word} order")


def read_context(d: object, k: int, fail: Fail) -> ContextModel:
    """The ``context`` section, checked against K = ``k`` classes."""
    m_value = _get(d, "tags_per_class", "context.tags_per_class", fail)
    if isinstance(m_value, bool) or not isinstance(m_value, int) or not 0 <= m_value <= k - 1:
        raise fail("context.tags_per_class", f"must be an integer in [0, {k - 1}], got {m_value!r}")
    m = m_value
    tags_raw = _get(d, "tags", "context.tags", fail)
    if m == 0:
        if not isinstance(tags_raw, list) or len(tags_raw) != k or any(t != [] for t in tags_raw):
            raise fail("context.tags", f"must be {k} empty lists when tags_per_class is 0")
        tags = np.zeros((k, 0), dtype=np.int64)
    else:
        tags = _array(tags_raw, "context.tags", fail, shape=(k, m), integer=True)
        _check_range(tags, "context.tags", fail, 0, k - 1)
        own = np.flatnonzero((tags == np.arange(k)[:, None]).ravel())
        if own.size:
            raise fail(f"context.tags{_where(tags, own[0])}", "names its own class")
    weights = _array(
        _get(d, "weights", "context.weights", fail), "context.weights", fail, shape=(k, m + 2)
    )
    return ContextModel(tags=tags, weights=weights)


def read_budget(d: object, k: int, fail: Fail) -> BudgetCurve:
    """The ``flag_budget`` section."""
    default = _array(
        _get(d, "default", "flag_budget.default", fail), "flag_budget.default", fail, shape=()
    )
    _check_range(default.reshape(1), "flag_budget.default", fail, 0.0, float(k), lo_open=True)
    budgets = _array(
        _get(d, "budgets", "flag_budget.budgets", fail), "flag_budget.budgets", fail, shape=(None,)
    )
    cutoffs = _array(
        _get(d, "cutoffs", "flag_budget.cutoffs", fail),
        "flag_budget.cutoffs",
        fail,
        shape=(budgets.shape[0],),
    )
    _check_range(budgets, "flag_budget.budgets", fail, 0.0, float(k), lo_open=True)
    _check_monotone(budgets, "flag_budget.budgets", fail, increasing=True)
    _check_range(cutoffs, "flag_budget.cutoffs", fail, 0.0, 1.0)
    _check_monotone(cutoffs, "flag_budget.cutoffs", fail, increasing=False)
    return BudgetCurve(budgets=budgets, cutoffs=cutoffs, default=float(default))


def read_calibrator(d: object, fail: Fail) -> SidedCalibrator:
    """The ``error_probability`` section."""
    sides = []
    for side in ("missing", "spurious"):
        base = f"error_probability.{side}"
        part = _get(d, side, base, fail)
        scores = _array(
            _get(part, "scores", f"{base}.scores", fail), f"{base}.scores", fail, shape=(None,)
        )
        probs = _array(
            _get(part, "probabilities", f"{base}.probabilities", fail),
            f"{base}.probabilities",
            fail,
            shape=(scores.shape[0],),
        )
        for arr, name in ((scores, "scores"), (probs, "probabilities")):
            _check_range(arr, f"{base}.{name}", fail, 0.0, 1.0)
            _check_monotone(arr, f"{base}.{name}", fail, increasing=True)
        sides.append(ErrorCalibrator(scores=scores, probabilities=probs))
    return SidedCalibrator(missing=sides[0], spurious=sides[1])
