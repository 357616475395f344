"""Tag-context scoring: a per-class model of p(tag k | model probability, the other given tags).

The annotator's other tags are evidence about each tag (``devel::lang:perl`` without
``implemented-in::perl``). For every class k a logistic regression is fitted on held-out
data with features ``[1, logit(p[k]), tags[j] for j in context[k]]``, where ``context[k]``
holds the ``m`` classes whose given tags carry the most mutual information about tag k.
Its output ``q[i, k]`` estimates the probability that an annotator tags class k of example
i, seeing what the model sees *and* the example's other tags (never tag k itself).

Applying a :class:`ContextModel` costs O(K·m) per example: one gather of ``(n, K, m)``
tags and one multiply-add, so K = 10,000 classes with m = 16 stays cheap. Fitting is
Newton's method (IRLS) with an L2 penalty, vectorised over blocks of classes, numpy only.

:func:`cross_fit` fits ``folds`` models, each on all but one fold, and predicts the left-out
fold, so every calibration example gets an out-of-sample ``q``: the cut-offs and the
error-probability calibrator fitted on those never see a model fitted on the same example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

LOGIT_CLIP = 1e-6
"""Probabilities are clipped to ``[1e-6, 1 - 1e-6]`` before the logit (|logit| <= 13.8)."""

DEFAULT_CONTEXT_TAGS = 16
"""m, the context tags per class (the detection benchmark saturates around 16-32)."""

DEFAULT_L2 = 1.0
"""L2 penalty on every coefficient but the intercept (features are logits and 0/1 tags)."""

DEFAULT_FOLDS = 5
"""k of the k-fold cross-fit."""

MIN_SIDE = 2
"""A class with fewer tagged (or untagged) training examples gets the identity model q = p."""

_NEWTON_STEPS = 30
_BLOCK_BYTES = 32 << 20  # a block of classes' (classes, N, d) design matrix stays under this


@dataclass(frozen=True)
class ContextModel:
    """Fitted per-class logistic models.

    ``tags``: ``(K, m)`` int64 context class indices per class (never the class itself;
    ``m = min(requested m, K - 1)``). ``weights``: ``(K, m + 2)`` float64 coefficients
    ``[intercept, logit(p[k]), tags[context[k][0]], ...]``.
    """

    tags: NDArray[np.int64]
    weights: NDArray[np.float64]

    @property
    def n_classes(self) -> int:
        """K."""
        return int(self.weights.shape[0])

    @property
    def m(self) -> int:
        """Context tags per class."""
        return int(self.tags.shape[1])


def logit(probs: NDArray[np.floating]) -> NDArray[np.float64]:
    """Elementwise ``log(p / (1 - p))`` of ``probs`` clipped to ``[1e-6, 1 - 1e-6]``, float64."""
    p = np.clip(np.asarray(probs, dtype=np.float64), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    out: NDArray[np.float64] = np.log(p) - np.log1p(-p)
    return out


def identity_model(n_classes: int, m: int) -> ContextModel:
    """The model with ``q = p`` for every class (no context used)."""
    m = min(m, max(n_classes - 1, 0))
    weights = np.zeros((n_classes, m + 2), dtype=np.float64)
    weights[:, 1] = 1.0
    tags = np.tile(np.arange(1, m + 1, dtype=np.int64), (n_classes, 1))
    tags = (tags + np.arange(n_classes, dtype=np.int64)[:, None]) % max(n_classes, 1)
    return ContextModel(tags=tags, weights=weights)


def select_context(tags: NDArray[np.bool_], m: int) -> NDArray[np.int64]:
    """``(K, m)``: per class, the ``m`` other classes with the highest mutual information.

    ``tags``: ``(N, K)`` bool. Mutual information of the two binary tag columns, from
    their 2x2 co-occurrence counts; computed a block of classes at a time (memory
    O(block * K)). Ties go to the lower class index.
    """
    n, k = tags.shape
    m = min(m, max(k - 1, 0))
    out = np.zeros((k, m), dtype=np.int64)
    if m == 0:
        return out
    y = tags.astype(np.float32)
    total = float(n)
    ones = y.sum(axis=0).astype(np.float64)
    block = max(1, _BLOCK_BYTES // max(1, 8 * k))
    for lo in range(0, k, block):
        hi = min(lo + block, k)
        n11 = (y[:, lo:hi].T @ y).astype(np.float64)  # (b, K)
        a = ones[lo:hi, None]
        b = ones[None, :]
        cells = (
            (n11, a, b),
            (a - n11, a, total - b),
            (b - n11, total - a, b),
            (total - a - b + n11, total - a, total - b),
        )
        mi = np.zeros_like(n11)
        with np.errstate(divide="ignore", invalid="ignore"):
            for count, row, col in cells:
                term = count / total * np.log(count * total / (row * col))
                mi += np.where(count > 0, term, 0.0)
        mi[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf  # never the class itself
        # stable order: highest information first, lower index on ties
        order = np.argsort(-mi, axis=1, kind="stable")[:, :m]
        out[lo:hi] = order
    return out


def design(
    probs: NDArray[np.floating],
    tags: NDArray[np.bool_],
    context: NDArray[np.int64],
    classes: NDArray[np.int64],
) -> NDArray[np.float64]:
    """``(c, N, m + 2)`` features of the ``(c,)`` class indices ``classes`` for ``(N, K)`` data."""
    sel = context[classes]
    c = sel.shape[0]
    x = np.empty((c, probs.shape[0], sel.shape[1] + 2), dtype=np.float64)
    x[:, :, 0] = 1.0
    x[:, :, 1] = logit(probs[:, classes]).T
    x[:, :, 2:] = np.transpose(tags[:, sel], (1, 0, 2))
    return x


def fit_logistic(x: NDArray[np.float64], y: NDArray[np.bool_], l2: float) -> NDArray[np.float64]:
    """Penalised logistic regressions, one per leading index: ``x`` ``(c, N, d)``, ``y`` ``(c, N)``.

    Returns ``(c, d)`` coefficients maximising the log-likelihood minus
    ``l2 / 2 * |w[1:]|^2`` (Newton's method; the intercept gets a 1e-6 penalty so that a
    class with one side empty stays finite).
    """
    c, _, d = x.shape
    w = np.zeros((c, d), dtype=np.float64)
    target = y.astype(np.float64)
    penalty = np.full(d, l2, dtype=np.float64)
    penalty[0] = 1e-6
    for _ in range(_NEWTON_STEPS):
        z = np.einsum("cnd,cd->cn", x, w)
        mu = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow
        grad = np.einsum("cnd,cn->cd", x, mu - target) + penalty * w
        hess = np.einsum("cnd,cn,cne->cde", x, mu * (1.0 - mu), x, optimize=True)
        hess[:, np.arange(d), np.arange(d)] += penalty
        step = np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        w -= step
        if float(np.abs(step).max(initial=0.0)) < 1e-9:
            break
    return w


def fit_context(
    probs: NDArray[np.floating],
    tags: NDArray[np.bool_],
    *,
    m: int = DEFAULT_CONTEXT_TAGS,
    l2: float = DEFAULT_L2,
) -> ContextModel:
    """Fit the per-class models on ``(N, K)`` held-out probabilities and bool tags.

    Classes with fewer than :data:`MIN_SIDE` tagged or untagged examples keep the
    identity model (``q = p``): there is nothing to learn a correction from.
    """
    n, k = tags.shape
    context = select_context(tags, m)
    model = identity_model(k, context.shape[1])
    weights = model.weights.copy()
    pos = tags.sum(axis=0)
    learnable = np.flatnonzero((pos >= MIN_SIDE) & (n - pos >= MIN_SIDE))
    block = max(1, _BLOCK_BYTES // max(1, 8 * n * (context.shape[1] + 2)))
    for lo in range(0, learnable.shape[0], block):
        part = learnable[lo : lo + block]
        x = design(probs, tags, context, part)
        weights[part] = fit_logistic(x, tags[:, part].T, l2)
    return ContextModel(tags=context, weights=weights)


def context_probabilities(
    model: ContextModel, probs: NDArray[np.floating], tags: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """``(n, K)`` q: the context model's probability that each class is tagged.

    ``probs`` ``(n, K)`` in [0, 1], ``tags`` ``(n, K)`` bool. Row i depends on row i only.
    """
    w = model.weights
    z = logit(probs) * w[:, 1]
    z += w[:, 0]
    if model.m:
        # (n, K, m) gathered tags times (K, m) coefficients, summed over m
        gathered = tags[:, model.tags]
        z += np.einsum("nkm,km->nk", gathered, w[:, 2:], dtype=np.float64)
    out: NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def error_scores(q: NDArray[np.float64], tags: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``(n, K)`` per-pair error score in [0, 1]: ``q`` where untagged, ``1 - q`` where tagged.

    High when the context model disagrees with the given tag; ``1 - error_scores`` is the
    context self-confidence.
    """
    out: NDArray[np.float64] = np.where(tags, 1.0 - q, q)
    return out


@dataclass(frozen=True)
class CrossFit:
    """The k-fold fit: ``fold`` ``(N,)`` int fold of each example, ``models`` one per fold
    (fitted without that fold), ``final`` fitted on every example, ``q`` ``(N, K)`` out-of-fold."""

    fold: NDArray[np.int64]
    models: tuple[ContextModel, ...]
    final: ContextModel
    q: NDArray[np.float64]

    def out_of_fold(
        self, probs: NDArray[np.floating], tags: NDArray[np.bool_]
    ) -> NDArray[np.float64]:
        """``(N, K)`` q of (possibly altered) ``tags`` of the same N examples, each row by the
        model that did not see it."""
        return _out_of_fold(self.models, self.fold, probs, tags)


def _out_of_fold(
    models: tuple[ContextModel, ...],
    fold: NDArray[np.int64],
    probs: NDArray[np.floating],
    tags: NDArray[np.bool_],
) -> NDArray[np.float64]:
    q = np.empty(tags.shape, dtype=np.float64)
    for f, model in enumerate(models):
        rows = fold == f
        q[rows] = context_probabilities(model, probs[rows], tags[rows])
    return q


def fold_of(n: int, folds: int, seed: int = 0) -> NDArray[np.int64]:
    """``(n,)`` fold index of each example: a seeded permutation, folds as equal as possible."""
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n, dtype=np.int64) % folds
    return fold


def cross_fit(
    probs: NDArray[np.floating],
    tags: NDArray[np.bool_],
    *,
    m: int = DEFAULT_CONTEXT_TAGS,
    l2: float = DEFAULT_L2,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> CrossFit:
    """k-fold cross-fit plus the final model on all ``(N, K)`` examples (deterministic).

    With fewer than ``2 * folds`` examples no out-of-sample fit is possible: every example
    is then scored by the identity model (``q = p``).
    """
    n, k = tags.shape
    final = fit_context(probs, tags, m=m, l2=l2)
    models: tuple[ContextModel, ...]
    if n < 2 * folds:
        fold = np.zeros(n, dtype=np.int64)
        models = (identity_model(k, final.m),)
    else:
        fold = fold_of(n, folds, seed)
        models = tuple(
            fit_context(probs[fold != f], tags[fold != f], m=m, l2=l2) for f in range(folds)
        )
    q = _out_of_fold(models, fold, probs, tags)
    return CrossFit(fold=fold, models=models, final=final, q=q)
