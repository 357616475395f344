"""The calibration artifact: a versioned JSON file of fitted thresholds, tied to a model.

``labelwatch calibrate`` writes it (:func:`calibrate` + :func:`save_artifact`);
``labelwatch serve``/``audit`` read it (:func:`load_artifact`), which validates every
field and raises :class:`ArtifactError` naming the file and the field. Layout
(schema version 2; K = ``n_classes``; "pairs" are K ``[missing, spurious]`` lists)::

    {"schema_version": 2, "n_classes": K, "class_names": [K names],
     "epsilon": 1e-06,
     "pooling": {"method": "exponential_moving_average" | "softmin",
                 "alpha": (0, 1], "temperature": > 0, "class_score": "self_confidence",
                 "probabilities": "model" | "context"},  # v2; absent = "model"
     "filter_by": a FilterBy value (optional; absent = "confident_learning"),
     "thresholds": {"t0": [K], "t1": [K], "n_pos": [K ints], "n_neg": [K ints]},
     "margin_cutoffs": {"prune_by_noise_rate": pairs, "prune_by_class": pairs,
                        "both": pairs},
     "score_cutoff": float | null,
     "calibration": {"n_examples": N, "flag_rates": {rule: pairs, ... every rule}},
     "model_sha256": "64 hex digits" | null, "created_at": "ISO-8601 UTC",
     "context": ..., "flag_budget": ..., "error_probability": ...,  # optional, together
     "sha256": "64 hex digits"}

Version 2 adds the tag-context sections (:mod:`labelwatch.context_artifact`; the
``budget`` rule, ``class_score`` ``context_self_confidence`` and per-flag error
probabilities need them) and ``sha256``: the hash of the document's canonical JSON
(keys sorted, no spaces) without that key, so an edited file is refused. Version 1
files (no sections, no hash) still load and behave exactly as before.

``filter_by`` is the flag rule the artifact was chosen to be served with; ``labelwatch
serve`` uses it unless ``--filter-by`` is given. It was added within schema version 1:
older artifacts without it load as ``confident_learning`` (the server's rule before), and
older readers ignore it.

``null`` stands for NaN ("this cut-off flags nothing"; JSON has no NaN). Floats are
written with ``repr`` precision, so save + load gives back the same bits.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from labelwatch import context_artifact
from labelwatch.scoring import (
    CLEANLAB_RULES,
    CalibrationFit,
    ClassScore,
    FilterBy,
    Pooling,
    Thresholds,
)
from labelwatch.scoring.budget import DEFAULT_BUDGET
from labelwatch.scoring.online import MARGIN_RULES, fit_calibration
from labelwatch.scoring.thresholds import EMPTY_SIDE, THRESHOLD_FLOOR, TOLERANCE

SCHEMA_VERSION = 2
"""Version of the JSON layout this module writes."""

READABLE_VERSIONS = (1, 2)
"""Versions this module reads."""

DEFAULT_FILTER_BY = FilterBy.CONFIDENT_LEARNING
"""The flag rule of an artifact that records none (written before ``filter_by`` existed)."""


class ArtifactError(ValueError):
    """The artifact is missing, malformed or does not fit; the message names file and field."""


@dataclass(frozen=True)
class CalibrationArtifact:
    """A :class:`CalibrationFit` plus what it was fitted for.

    ``created_at``: ISO-8601 UTC time of fitting; ``epsilon``: the fuzzy
    comparison margin the rules apply (cleanlab's 1e-6, fixed); ``filter_by``: the flag
    rule to serve the thresholds with (``labelwatch serve`` uses it without ``--filter-by``).
    """

    fit: CalibrationFit
    class_names: tuple[str, ...]
    model_sha256: str | None
    created_at: str
    filter_by: FilterBy = DEFAULT_FILTER_BY
    epsilon: float = TOLERANCE
    schema_version: int = SCHEMA_VERSION

    @property
    def n_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    def to_json_dict(self) -> dict[str, object]:
        """The JSON document (plain dicts, lists, floats, ints, strings; NaN as ``None``)."""
        fit = self.fit
        th = fit.thresholds
        doc: dict[str, object] = {
            "schema_version": self.schema_version,
            "n_classes": self.n_classes,
            "class_names": list(self.class_names),
            "epsilon": self.epsilon,
            "pooling": {
                "method": fit.pooling.value,
                "alpha": fit.alpha,
                "temperature": fit.temperature,
                "class_score": fit.method.value,
                "probabilities": "context" if fit.context_quality else "model",
            },
            "filter_by": self.filter_by.value,
            "thresholds": {
                "t0": [float(v) for v in th.t0.tolist()],
                "t1": [float(v) for v in th.t1.tolist()],
                "n_pos": [int(v) for v in th.n_pos.tolist()],
                "n_neg": [int(v) for v in th.n_neg.tolist()],
            },
            "margin_cutoffs": {rule: _pairs(v) for rule, v in fit.margin_cutoffs.items()},
            "score_cutoff": None if math.isnan(fit.score_cutoff) else fit.score_cutoff,
            "calibration": {
                "n_examples": fit.n_examples,
                "flag_rates": {rule: _pairs(v) for rule, v in fit.flag_rates.items()},
            },
            "model_sha256": self.model_sha256,
            "created_at": self.created_at,
        }
        if fit.context is not None and fit.budget is not None and fit.error_calibrator is not None:
            doc |= context_artifact.to_json(fit.context, fit.budget, fit.error_calibrator)
        if self.schema_version >= 2:
            doc["sha256"] = content_sha256(doc)
        return doc

    @classmethod
    def from_json_dict(cls, d: object, *, source: str = "artifact") -> CalibrationArtifact:
        """Validate a JSON document and build the artifact.

        Raises :class:`ArtifactError` ``"{source}: field '{path}' {problem}"``.
        """
        return _Reader(source).artifact(d)


def content_sha256(doc: Mapping[str, object]) -> str:
    """sha256 hex of ``doc``'s canonical JSON (sorted keys, no spaces), ``sha256`` key left out."""
    body = {key: value for key, value in doc.items() if key != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pairs(a: NDArray[np.float64]) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in a.tolist()]


class _Reader:
    """Validation helpers; every failure names ``source`` and the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, problem: str) -> ArtifactError:
        return ArtifactError(f"{self.source}: field {field!r} {problem}")

    def get(self, mapping: object, key: str, field: str) -> object:
        if not isinstance(mapping, Mapping):
            parent = field.rpartition(".")[0] or "(top level)"
            raise self.fail(parent, "must be a JSON object")
        if key not in mapping:
            raise self.fail(field, "is missing")
        return mapping[key]

    def number(
        self, value: object, field: str, lo: float, hi: float, *, lo_open: bool = False
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"must be a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise self.fail(field, f"must be finite, got {v!r}")
        if v < lo or v > hi or (lo_open and v == lo):
            raise self.fail(field, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")
        return v

    def integer(self, value: object, field: str, lo: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(field, f"must be an integer >= {lo}, got {value!r}")
        return value

    def items(self, value: object, field: str, k: int, what: str) -> list[object]:
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list of {k} {what}, got {type(value).__name__}")
        if len(value) != k:
            raise self.fail(field, f"must have n_classes = {k} entries, got {len(value)}")
        return value

    def vector(
        self, value: object, field: str, k: int, lo: float, hi: float
    ) -> NDArray[np.float64]:
        entries = self.items(value, field, k, "numbers")
        return np.array([self.number(v, f"{field}[{i}]", lo, hi) for i, v in enumerate(entries)])

    def counts(self, value: object, field: str, k: int) -> NDArray[np.int64]:
        entries = self.items(value, field, k, "integers")
        ints = [self.integer(v, f"{field}[{i}]", 0) for i, v in enumerate(entries)]
        return np.array(ints, dtype=np.int64).reshape(k)

    def pairs(
        self, value: object, field: str, k: int, lo: float, hi: float, *, nullable: bool
    ) -> NDArray[np.float64]:
        out = np.empty((k, 2), dtype=np.float64)
        for i, row in enumerate(self.items(value, field, k, "[missing, spurious] pairs")):
            if not isinstance(row, list) or len(row) != 2:
                raise self.fail(f"{field}[{i}]", f"must be a pair [missing, spurious], got {row!r}")
            for j, v in enumerate(row):
                if v is None and nullable:
                    out[i, j] = math.nan
                else:
                    out[i, j] = self.number(v, f"{field}[{i}][{j}]", lo, hi)
        return out

    def rule_map(
        self, value: object, field: str, required: Sequence[FilterBy], k: int, **bounds: float
    ) -> dict[str, NDArray[np.float64]]:
        if not isinstance(value, Mapping):
            raise self.fail(field, "must be a JSON object {rule: pairs}")
        known = {rule.value for rule in FilterBy}
        for rule in value:
            if rule not in known:
                raise self.fail(f"{field}.{rule}", f"is not a rule; rules: {', '.join(known)}")
        for rule in required:
            if rule.value not in value:
                raise self.fail(f"{field}.{rule.value}", "is missing")
        nullable = field == "margin_cutoffs"
        return {
            rule: self.pairs(pairs, f"{field}.{rule}", k, nullable=nullable, **bounds)
            for rule, pairs in value.items()
        }

    def enum_value(
        self, value: object, field: str, enum: type[Pooling] | type[ClassScore] | type[FilterBy]
    ) -> str:
        choices = [member.value for member in enum]
        if value not in choices:
            raise self.fail(field, f"must be one of {', '.join(choices)}, got {value!r}")
        assert isinstance(value, str)
        return value

    def artifact(self, d: object) -> CalibrationArtifact:
        if not isinstance(d, Mapping):
            raise ArtifactError(f"{self.source}: the top level must be a JSON object")
        version = self.get(d, "schema_version", "schema_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise self.fail(
                "schema_version",
                f"is {version!r}; this labelwatch reads versions "
                + ", ".join(str(v) for v in READABLE_VERSIONS),
            )
        names = self.class_names(self.get(d, "class_names", "class_names"))
        k = len(names)
        if self.get(d, "n_classes", "n_classes") != k:
            raise self.fail("n_classes", f"is {d['n_classes']!r} but class_names has {k} names")
        epsilon = self.number(self.get(d, "epsilon", "epsilon"), "epsilon", 0.0, 1.0)
        if epsilon != TOLERANCE:
            raise self.fail("epsilon", f"must be {TOLERANCE!r} (the rules' fixed margin)")
        fit = self.fit(d, k, version)
        sha = d.get("model_sha256")
        if sha is not None and (
            not isinstance(sha, str) or len(sha) != 64 or set(sha) - set("0123456789abcdef")
        ):
            raise self.fail("model_sha256", f"must be null or 64 lowercase hex digits, got {sha!r}")
        artifact = CalibrationArtifact(
            fit=fit,
            class_names=names,
            model_sha256=sha,
            created_at=self.created_at(self.get(d, "created_at", "created_at")),
            filter_by=FilterBy(
                self.enum_value(d.get("filter_by", DEFAULT_FILTER_BY.value), "filter_by", FilterBy)
            ),
            epsilon=epsilon,
            schema_version=int(version),
        )
        if artifact.filter_by is FilterBy.BUDGET and fit.context is None:
            raise self.fail("filter_by", "is 'budget', which needs the 'context' section")
        if version >= 2:  # after the fields: a broken field gets its own precise message
            self.check_sha256(d)
        return artifact

    def check_sha256(self, d: Mapping[str, object]) -> None:
        stored = self.get(d, "sha256", "sha256")
        if not isinstance(stored, str) or len(stored) != 64:
            raise self.fail("sha256", "must be 64 lowercase hex digits")
        try:
            actual = content_sha256(d)
        except (TypeError, ValueError) as exc:  # NaN or a non-JSON value somewhere
            raise self.fail("sha256", f"cannot be checked: {exc}") from None
        if actual != stored:
            raise self.fail(
                "sha256",
                "does not match the content: the file was edited or damaged after "
                "`labelwatch calibrate` wrote it (re-run calibrate)",
            )

    def sections(self, d: Mapping[str, object], k: int, version: int) -> dict[str, object]:
        """The tag-context sections as :class:`CalibrationFit` fields (empty: none)."""
        present = [key for key in context_artifact.SECTIONS if d.get(key) is not None]
        if not present:
            return {}
        if version < 2:
            raise self.fail(present[0], "needs schema_version 2")
        for key in context_artifact.SECTIONS:
            if key not in present:
                raise self.fail(key, f"is missing (it comes with {present[0]!r})")
        return {
            "context": context_artifact.read_context(d["context"], k, self.fail),
            "budget": context_artifact.read_budget(d["flag_budget"], k, self.fail),
            "error_calibrator": context_artifact.read_calibrator(d["error_probability"], self.fail),
        }

    def class_names(self, names: object) -> tuple[str, ...]:
        if not isinstance(names, list) or not names:
            raise self.fail("class_names", "must be a non-empty list of strings")
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise self.fail(f"class_names[{i}]", f"must be a non-empty string, got {name!r}")
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                raise self.fail(f"class_names[{i}]", f"repeats the name {name!r}")
            seen.add(name)
        return tuple(names)

    def created_at(self, value: object) -> str:
        if not isinstance(value, str):
            raise self.fail("created_at", f"must be an ISO-8601 string, got {value!r}")
        try:
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise self.fail("created_at", f"is not an ISO-8601 time: {value!r}") from None
        if stamp.utcoffset() != timezone.utc.utcoffset(None):
            raise self.fail("created_at", f"must be in UTC (offset +00:00), got {value!r}")
        return value

    def fit(self, d: Mapping[str, object], k: int, version: int) -> CalibrationFit:
        pooling_d = self.get(d, "pooling", "pooling")
        method = self.enum_value(
            self.get(pooling_d, "method", "pooling.method"), "pooling.method", Pooling
        )
        score = self.get(pooling_d, "class_score", "pooling.class_score")
        class_score = self.enum_value(score, "pooling.class_score", ClassScore)
        alpha = self.get(pooling_d, "alpha", "pooling.alpha")
        temperature = self.get(pooling_d, "temperature", "pooling.temperature")
        th_d = self.get(d, "thresholds", "thresholds")
        lo, hi = THRESHOLD_FLOOR, EMPTY_SIDE
        t0 = self.vector(self.get(th_d, "t0", "thresholds.t0"), "thresholds.t0", k, lo, hi)
        t1 = self.vector(self.get(th_d, "t1", "thresholds.t1"), "thresholds.t1", k, lo, hi)
        n_pos = self.counts(self.get(th_d, "n_pos", "thresholds.n_pos"), "thresholds.n_pos", k)
        n_neg = self.counts(self.get(th_d, "n_neg", "thresholds.n_neg"), "thresholds.n_neg", k)
        cal_d = self.get(d, "calibration", "calibration")
        n = self.integer(
            self.get(cal_d, "n_examples", "calibration.n_examples"), "calibration.n_examples", 1
        )
        for i in np.flatnonzero(n_pos + n_neg != n).tolist():
            raise self.fail(
                f"thresholds.n_pos[{i}]",
                f"+ n_neg[{i}] = {int(n_pos[i] + n_neg[i])} but calibration.n_examples is {n}",
            )
        rates = self.get(cal_d, "flag_rates", "calibration.flag_rates")
        cutoffs = self.get(d, "margin_cutoffs", "margin_cutoffs")
        score_cutoff = self.get(d, "score_cutoff", "score_cutoff")
        extra = self.sections(d, k, version)
        source = pooling_d.get("probabilities", "model") if isinstance(pooling_d, Mapping) else None
        if source not in ("model", "context"):
            raise self.fail("pooling.probabilities", f"must be model or context, got {source!r}")
        if source == "context" and not extra:
            raise self.fail(
                "pooling.probabilities", "is 'context' but there is no 'context' section"
            )
        return CalibrationFit(
            thresholds=Thresholds(t0=t0, t1=t1, n_pos=n_pos, n_neg=n_neg),
            margin_cutoffs=self.rule_map(
                cutoffs, "margin_cutoffs", MARGIN_RULES, k, lo=-1.0, hi=1.0
            ),
            score_cutoff=(
                math.nan
                if score_cutoff is None
                else self.number(score_cutoff, "score_cutoff", 0.0, 1.0)
            ),
            pooling=Pooling(method),
            alpha=self.number(alpha, "pooling.alpha", 0.0, 1.0, lo_open=True),
            temperature=self.number(
                temperature, "pooling.temperature", 0.0, math.inf, lo_open=True
            ),
            n_examples=n,
            flag_rates=self.rule_map(
                rates,
                "calibration.flag_rates",
                tuple(FilterBy) if extra else CLEANLAB_RULES,
                k,
                lo=0.0,
                hi=1.0,
            ),
            method=ClassScore(class_score),
            context_quality=source == "context",
            **extra,  # type: ignore[arg-type]
        )


def calibrate(
    pred_probs: ArrayLike,
    labels: ArrayLike,
    class_names: Sequence[str],
    *,
    model_sha256: str | None = None,
    pooling: Pooling = Pooling.EMA,
    alpha: float = 0.8,
    temperature: float = 0.1,
    filter_by: FilterBy = DEFAULT_FILTER_BY,
    method: ClassScore = ClassScore.SELF_CONFIDENCE,
    context_tags: int | None = None,
    flag_budget: float = DEFAULT_BUDGET,
    context_quality: bool = False,
    now: datetime | None = None,
) -> CalibrationArtifact:
    """Fit the artifact on held-out ``(N, K)`` probabilities and bool tags.

    ``class_names``: K names; ``model_sha256``: the model file's hash (ties the
    artifact to it); ``filter_by``: the flag rule recorded for serving; ``method``: the
    per-class score pooled into label quality; ``context_tags``: m context tags per
    class for the tag-context model (``None``: none, so no ``budget`` rule and no error
    probabilities); ``flag_budget``: the budget served by default; ``context_quality``:
    label quality pooled from the tag-context probabilities; ``now``: the
    creation time (default: the current UTC time).
    Raises :class:`ArtifactError` when the result would not load back (bad class
    names, alpha outside (0, 1], ...), ``ValueError`` for empty data or a budget
    outside (0, K].
    """
    fit = fit_calibration(
        pred_probs,
        labels,
        pooling=pooling,
        alpha=alpha,
        temperature=temperature,
        method=method,
        context_tags=context_tags,
        flag_budget=flag_budget,
        context_quality=context_quality,
    )
    k = fit.thresholds.t0.shape[0]
    if len(class_names) != k:
        raise ArtifactError(
            f"calibrate(): field 'class_names' has {len(class_names)} names "
            f"but the data has {k} classes"
        )
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    artifact = CalibrationArtifact(
        fit=fit,
        class_names=tuple(class_names),
        model_sha256=model_sha256,
        created_at=stamp.isoformat(timespec="seconds"),
        filter_by=FilterBy(filter_by),
    )
    # What we hand out must pass the checks it will meet when loaded.
    return CalibrationArtifact.from_json_dict(artifact.to_json_dict(), source="calibrate()")


def save_artifact(artifact: CalibrationArtifact, path: Path | str) -> None:
    """Write ``artifact`` to ``path`` as JSON, atomically (temp file + ``os.replace``).

    Readers see the old file or the new one, never a partial write. Raises
    ``OSError`` when the directory is not writable.
    """
    path = Path(path)
    text = json.dumps(artifact.to_json_dict(), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_artifact(
    path: Path | str, *, expected_model_sha256: str | None = None
) -> CalibrationArtifact:
    """Read and validate the artifact at ``path``.

    ``expected_model_sha256``: refuse an artifact made for another model (an
    artifact without a hash is accepted). Raises :class:`ArtifactError` naming
    ``path`` and the field for a missing/unreadable file, invalid JSON, any
    invalid field, or a hash mismatch (both hashes named).
    """
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(
            f"{path}: calibration artifact not found (make one with `labelwatch calibrate`)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read the calibration artifact: {exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    artifact = CalibrationArtifact.from_json_dict(data, source=str(path))
    if (
        expected_model_sha256 is not None
        and artifact.model_sha256 is not None
        and artifact.model_sha256 != expected_model_sha256
    ):
        raise ArtifactError(
            f"{path}: field 'model_sha256' is {artifact.model_sha256}, made for another model: "
            f"the model's sha256 is {expected_model_sha256}; re-run `labelwatch calibrate`"
        )
    return artifact
