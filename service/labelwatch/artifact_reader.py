"""Validation of a calibration artifact's JSON document (``labelwatch.calibration``'s reader).

:class:`ArtifactReader` checks every field of a schema version 1 or 2 document and builds
the :class:`~labelwatch.calibration.CalibrationArtifact`; every failure is an
:class:`ArtifactError` naming the source and the field path.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from labelwatch import context_artifact
from labelwatch.scoring import (
    CLEANLAB_RULES,
    CalibrationFit,
    ClassScore,
    FilterBy,
    Pooling,
    Thresholds,
)
from labelwatch.scoring.online import MARGIN_RULES
from labelwatch.scoring.thresholds import EMPTY_SIDE, THRESHOLD_FLOOR, TOLERANCE

if TYPE_CHECKING:
    from labelwatch.calibration import CalibrationArtifact

READABLE_VERSIONS = (1, 2)
"""Versions this module reads."""

DEFAULT_FILTER_BY = FilterBy.CONFIDENT_LEARNING
"""The flag rule of an artifact that records none (written before ``filter_by`` existed)."""


class ArtifactError(ValueError):
    """The artifact is missing, malformed or does not fit; the message names file and field."""


def content_sha256(doc: Mapping[str, object]) -> str:
    """sha256 hex of ``doc``'s canonical JSON (sorted keys, no spaces), ``sha256`` key left out."""
    body = {key: value for key, value in doc.items() if key != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ArtifactReader:
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
        from labelwatch.calibration import CalibrationArtifact  # the value type; no cycle at import

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
