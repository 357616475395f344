"""The calibration artifact: a versioned JSON file of fitted thresholds, tied to a model."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from labelwatch.scoring import CalibrationFit, Pooling, Thresholds, fit_calibration

SCHEMA_VERSION = 1


class ArtifactError(ValueError):
    """The artifact is missing, malformed or does not fit; the message names the field."""


@dataclass(frozen=True)
class CalibrationArtifact:
    """A :class:`CalibrationFit` plus what it was fitted for."""

    fit: CalibrationFit
    class_names: tuple[str, ...]
    model_sha256: str | None
    created_at: str
    epsilon: float = 1e-6
    schema_version: int = SCHEMA_VERSION

    @property
    def n_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN written as null)."""
        fit = self.fit
        th = fit.thresholds

        def pairs(a: np.ndarray) -> list[list[float | None]]:
            return [[None if math.isnan(v) else float(v) for v in row] for row in a.tolist()]

        return {
            "schema_version": self.schema_version,
            "n_classes": self.n_classes,
            "class_names": list(self.class_names),
            "epsilon": self.epsilon,
            "pooling": {
                "method": fit.pooling.value,
                "alpha": fit.alpha,
                "temperature": fit.temperature,
            },
            "thresholds": {
                "t0": th.t0.tolist(),
                "t1": th.t1.tolist(),
                "n_pos": th.n_pos.tolist(),
                "n_neg": th.n_neg.tolist(),
            },
            "margin_cutoffs": {rule: pairs(v) for rule, v in fit.margin_cutoffs.items()},
            "score_cutoff": fit.score_cutoff,
            "calibration": {
                "n_examples": fit.n_examples,
                "flag_rates": {rule: pairs(v) for rule, v in fit.flag_rates.items()},
            },
            "model_sha256": self.model_sha256,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json_dict(
        cls, d: Mapping[str, Any], *, source: str = "artifact"
    ) -> CalibrationArtifact:
        """Validate and build; raise :class:`ArtifactError` naming ``source`` and the field."""
        return _Reader(d, source).artifact()


class _Reader:
    def __init__(self, d: Mapping[str, Any], source: str) -> None:
        if not isinstance(d, Mapping):
            raise ArtifactError(f"{source}: top level must be a JSON object")
        self.d = d
        self.source = source

    def fail(self, field: str, problem: str) -> ArtifactError:
        return ArtifactError(f"{self.source}: field {field!r} {problem}")

    def get(self, mapping: Mapping[str, Any], key: str, field: str) -> Any:
        if not isinstance(mapping, Mapping) or key not in mapping:
            raise self.fail(field, "is missing")
        return mapping[key]

    def number(
        self, value: Any, field: str, lo: float, hi: float, *, lo_open: bool = False
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"must be a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise self.fail(field, f"must be finite, got {value!r}")
        if v < lo or v > hi or (lo_open and v == lo):
            bracket = "(" if lo_open else "["
            raise self.fail(field, f"must be in {bracket}{lo}, {hi}], got {v!r}")
        return v

    def vector(self, value: Any, field: str, k: int, lo: float, hi: float) -> np.ndarray:
        if not isinstance(value, list) or len(value) != k:
            got = len(value) if isinstance(value, list) else type(value).__name__
            raise self.fail(field, f"must be a list of {k} numbers (n_classes), got {got}")
        return np.array(
            [self.number(v, f"{field}[{i}]", lo, hi) for i, v in enumerate(value)], dtype=np.float64
        )

    def counts(self, value: Any, field: str, k: int) -> np.ndarray:
        if not isinstance(value, list) or len(value) != k:
            raise self.fail(field, f"must be a list of {k} integers (n_classes)")
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise self.fail(f"{field}[{i}]", f"must be a non-negative integer, got {v!r}")
        return np.array(value, dtype=np.int64)

    def pairs(self, value: Any, field: str, k: int, lo: float, hi: float) -> np.ndarray:
        if not isinstance(value, list) or len(value) != k:
            raise self.fail(field, f"must be a list of {k} [missing, spurious] pairs")
        out = np.empty((k, 2), dtype=np.float64)
        for i, row in enumerate(value):
            if not isinstance(row, list) or len(row) != 2:
                raise self.fail(f"{field}[{i}]", "must be a pair [missing, spurious]")
            for j, v in enumerate(row):
                out[i, j] = math.nan if v is None else self.number(v, f"{field}[{i}][{j}]", lo, hi)
        return out

    def artifact(self) -> CalibrationArtifact:
        d = self.d
        version = self.get(d, "schema_version", "schema_version")
        if version != SCHEMA_VERSION:
            raise self.fail(
                "schema_version", f"is {version!r}; this labelwatch reads version {SCHEMA_VERSION}"
            )
        names = self.get(d, "class_names", "class_names")
        if not isinstance(names, list) or not names:
            raise self.fail("class_names", "must be a non-empty list of strings")
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise self.fail(f"class_names[{i}]", f"must be a non-empty string, got {name!r}")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise self.fail("class_names", f"has the duplicate name {dup!r}")
        k = len(names)
        n_classes = self.get(d, "n_classes", "n_classes")
        if n_classes != k:
            raise self.fail("n_classes", f"is {n_classes!r} but class_names has {k} names")
        epsilon = self.number(self.get(d, "epsilon", "epsilon"), "epsilon", 0.0, 0.01)
        pooling_d = self.get(d, "pooling", "pooling")
        method = self.get(pooling_d, "method", "pooling.method")
        try:
            pooling = Pooling(method)
        except ValueError:
            choices = ", ".join(p.value for p in Pooling)
            raise self.fail("pooling.method", f"must be one of {choices}, got {method!r}") from None
        alpha = self.number(
            self.get(pooling_d, "alpha", "pooling.alpha"), "pooling.alpha", 0.0, 1.0, lo_open=True
        )
        temperature = self.number(
            self.get(pooling_d, "temperature", "pooling.temperature"),
            "pooling.temperature",
            0.0,
            math.inf,
            lo_open=True,
        )
        th_d = self.get(d, "thresholds", "thresholds")
        t0 = self.vector(self.get(th_d, "t0", "thresholds.t0"), "thresholds.t0", k, 2e-6, 2.0)
        t1 = self.vector(self.get(th_d, "t1", "thresholds.t1"), "thresholds.t1", k, 2e-6, 2.0)
        n_pos = self.counts(self.get(th_d, "n_pos", "thresholds.n_pos"), "thresholds.n_pos", k)
        n_neg = self.counts(self.get(th_d, "n_neg", "thresholds.n_neg"), "thresholds.n_neg", k)
        cal_d = self.get(d, "calibration", "calibration")
        n_examples = self.get(cal_d, "n_examples", "calibration.n_examples")
        if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
            raise self.fail(
                "calibration.n_examples", f"must be a positive integer, got {n_examples!r}"
            )
        bad = np.flatnonzero(n_pos + n_neg != n_examples)
        if bad.size:
            i = int(bad[0])
            raise self.fail(
                f"thresholds.n_pos[{i}]",
                f"+ n_neg[{i}] = {int(n_pos[i] + n_neg[i])} != calibration.n_examples {n_examples}",
            )
        rates_d = self.get(cal_d, "flag_rates", "calibration.flag_rates")
        if not isinstance(rates_d, Mapping):
            raise self.fail("calibration.flag_rates", "must be an object {rule: pairs}")
        flag_rates = {
            rule: self.pairs(v, f"calibration.flag_rates.{rule}", k, 0.0, 1.0)
            for rule, v in rates_d.items()
        }
        cut_d = self.get(d, "margin_cutoffs", "margin_cutoffs")
        if not isinstance(cut_d, Mapping):
            raise self.fail("margin_cutoffs", "must be an object {rule: pairs}")
        margin_cutoffs = {
            rule: self.pairs(v, f"margin_cutoffs.{rule}", k, -1.0, 1.0) for rule, v in cut_d.items()
        }
        score_cutoff = self.number(
            self.get(d, "score_cutoff", "score_cutoff"), "score_cutoff", 0.0, 1.0
        )
        sha = d.get("model_sha256")
        if sha is not None and (
            not isinstance(sha, str)
            or len(sha) != 64
            or any(c not in "0123456789abcdef" for c in sha)
        ):
            raise self.fail("model_sha256", "must be null or 64 lowercase hex digits")
        created_at = self.get(d, "created_at", "created_at")
        if not isinstance(created_at, str):
            raise self.fail("created_at", "must be an ISO-8601 string")
        try:
            datetime.fromisoformat(created_at)
        except ValueError:
            raise self.fail("created_at", f"is not an ISO-8601 time: {created_at!r}") from None
        fit = CalibrationFit(
            thresholds=Thresholds(t0=t0, t1=t1, n_pos=n_pos, n_neg=n_neg),
            margin_cutoffs=margin_cutoffs,
            score_cutoff=score_cutoff,
            pooling=pooling,
            alpha=alpha,
            temperature=temperature,
            n_examples=n_examples,
            flag_rates=flag_rates,
        )
        return CalibrationArtifact(
            fit=fit,
            class_names=tuple(names),
            model_sha256=sha,
            created_at=created_at,
            epsilon=epsilon,
            schema_version=version,
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
    now: datetime | None = None,
) -> CalibrationArtifact:
    """Fit thresholds and cut-offs on held-out ``(N, K)`` data; return the artifact."""
    fit = fit_calibration(pred_probs, labels, pooling=pooling, alpha=alpha, temperature=temperature)
    if len(class_names) != fit.thresholds.t0.shape[0]:
        raise ArtifactError(
            f"class_names has {len(class_names)} names "
            f"but the data has {fit.thresholds.t0.shape[0]} classes"
        )
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat()
    artifact = CalibrationArtifact(
        fit=fit, class_names=tuple(class_names), model_sha256=model_sha256, created_at=stamp
    )
    # validate what we produce with the same reader that loads it
    return CalibrationArtifact.from_json_dict(artifact.to_json_dict(), source="calibrate()")


def save_artifact(artifact: CalibrationArtifact, path: Path) -> None:
    """Write ``artifact`` as JSON atomically (temp file + rename); floats round-trip exactly."""
    path = Path(path)
    text = json.dumps(artifact.to_json_dict(), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_artifact(path: Path, *, expected_model_sha256: str | None = None) -> CalibrationArtifact:
    """Read and validate an artifact; :class:`ArtifactError` names the file and field."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: calibration artifact not found") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    artifact = CalibrationArtifact.from_json_dict(data, source=str(path))
    if expected_model_sha256 is not None and artifact.model_sha256 != expected_model_sha256:
        raise ArtifactError(
            f"{path}: field 'model_sha256' is {artifact.model_sha256}, but the model's sha256 is "
            f"{expected_model_sha256}"
        )
    return artifact
