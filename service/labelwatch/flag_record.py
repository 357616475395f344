"""A flag: one scored example with at least one suspected label issue, as delivered downstream.

A :class:`Flag` is what a :class:`~labelwatch.domain.ScoredBatch` row with flags
becomes (:func:`flags_from_batch` builds it one row at a time), what the outbox
reads back, and what every sink gets in its JSON form (:meth:`Flag.to_json`;
``docs/delivery.md`` documents the schema, ``"schema": "labelwatch.flag/v1"``).
While serving, the pipeline stores a batch's flags as columns instead
(:mod:`labelwatch.flag_columns`), which read back as the same :class:`Flag`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from labelwatch.domain import ScoredBatch
from labelwatch.scoring import IssueKind

SCHEMA = "labelwatch.flag/v1"
"""Value of the ``schema`` key of every flag JSON object."""


def dedupe_key(example_id: str, model_version: str, labels: Sequence[str]) -> str:
    """The flag id: sha256 hex of example id, model version and the sorted given labels.

    The same example scored twice by the same model with the same tags yields
    the same key, so it is stored, and delivered, once.

    >>> dedupe_key("a1", "m-1", ["dog", "cat"]) == dedupe_key("a1", "m-1", ["cat", "dog"])
    True
    >>> dedupe_key("a1", "m-1", ["cat"]) == dedupe_key("a1", "m-2", ["cat"])
    False
    """
    # JSON keeps the parts unambiguous (no separator can be forged inside an id)
    material = json.dumps([example_id, model_version, sorted(labels)], ensure_ascii=False)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FlagIssue:
    """One suspected problem with one class: MISSING (should be tagged) or SPURIOUS (should not).

    ``threshold``: the class's confident threshold on the p scale; ``error_probability``:
    the calibrated probability that the tag is wrong (``None``: no tag-context model).
    """

    label: str
    class_index: int
    kind: IssueKind
    probability: float
    threshold: float
    error_probability: float | None = None


@dataclass(frozen=True)
class Flag:
    """A flagged example. ``flagged_at`` is unix seconds; ``position`` is set by the outbox.

    ``text`` is the example's input text, or ``None`` when the example was sent
    as features or probabilities (``input_kind`` says which); the example id and
    ``metadata`` are then the reference to the input.
    """

    flag_id: str
    example_id: str
    labels: tuple[str, ...]
    issues: tuple[FlagIssue, ...]
    suggested_labels: tuple[str, ...]
    label_quality: float
    model_version: str
    annotator_id: str
    metadata: Mapping[str, str]
    text: str | None
    input_kind: str
    flagged_at: float
    position: int = 0

    def with_position(self, position: int) -> Flag:
        """This flag as stored at outbox ``position``."""
        return replace(self, position=position)

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON object (``docs/delivery.md``)."""
        return {
            "schema": SCHEMA,
            "flag_id": self.flag_id,
            "position": self.position,
            "example_id": self.example_id,
            "labels": list(self.labels),
            "issues": [
                {
                    "label": i.label,
                    "class_index": i.class_index,
                    "kind": i.kind.value,
                    "probability": i.probability,
                    "threshold": i.threshold,
                    "error_probability": i.error_probability,
                }
                for i in self.issues
            ],
            "suggested_labels": list(self.suggested_labels),
            "label_quality": self.label_quality,
            "model_version": self.model_version,
            "annotator_id": self.annotator_id,
            "metadata": dict(self.metadata),
            "text": self.text,
            "input_kind": self.input_kind,
            "flagged_at": _iso_utc(self.flagged_at),
            "flagged_at_unix": self.flagged_at,
        }

    def to_json(self) -> str:
        """Compact JSON of :meth:`to_dict` (UTF-8 text, keys in schema order)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Flag:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` for another schema."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} object: schema={data.get('schema')!r}")
        return cls(
            flag_id=str(data["flag_id"]),
            example_id=str(data["example_id"]),
            labels=tuple(data["labels"]),
            issues=tuple(
                FlagIssue(
                    label=str(i["label"]),
                    class_index=int(i["class_index"]),
                    kind=IssueKind(i["kind"]),
                    probability=float(i["probability"]),
                    threshold=float(i["threshold"]),
                    error_probability=(
                        None
                        if i.get("error_probability") is None
                        else float(i["error_probability"])
                    ),
                )
                for i in data["issues"]
            ),
            suggested_labels=tuple(data["suggested_labels"]),
            label_quality=float(data["label_quality"]),
            model_version=str(data["model_version"]),
            annotator_id=str(data["annotator_id"]),
            metadata={str(k): str(v) for k, v in data["metadata"].items()},
            text=None if data["text"] is None else str(data["text"]),
            input_kind=str(data["input_kind"]),
            flagged_at=float(data["flagged_at_unix"]),
            position=int(data.get("position", 0)),
        )

    @classmethod
    def from_json(cls, text: str) -> Flag:
        """Parse :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))


@functools.lru_cache(maxsize=256)
def _iso_utc(unix_seconds: float) -> str:
    """``2026-11-29T08:48:13.123Z``; cached, since every flag of a batch shares its time."""
    moment = datetime.fromtimestamp(unix_seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _input_kind(batch: ScoredBatch, i: int) -> str:
    ex = batch.examples[i]
    if ex.text is not None:
        return "text"
    if ex.features is not None:
        return "features"
    return "probabilities"


def flags_from_batch(
    batch: ScoredBatch, class_names: Sequence[str], *, now: float | None = None
) -> list[Flag]:
    """One :class:`Flag` per example of ``batch`` with at least one flagged class, in order.

    ``class_names`` has length K (the columns of ``batch.flags``); ``now`` is the
    ``flagged_at`` time in unix seconds (default: the current time).
    """
    flagged_at = time.time() if now is None else now
    out: list[Flag] = []
    if not batch.examples:
        return out
    for i in map(int, np.flatnonzero(batch.flags.any(axis=1))):
        ex = batch.examples[i]
        given = tuple(class_names[int(k)] for k in np.flatnonzero(batch.labels[i]))
        suggested = batch.labels[i] ^ batch.flags[i]
        chance = None if batch.error_probability is None else batch.error_probability[i]
        issues = []
        for k in map(int, np.flatnonzero(batch.flags[i])):
            missing = not bool(batch.labels[i, k])
            issues.append(
                FlagIssue(
                    label=class_names[k],
                    class_index=k,
                    kind=IssueKind.MISSING if missing else IssueKind.SPURIOUS,
                    probability=float(batch.probabilities[i, k]),
                    threshold=float(batch.t1[k]) if missing else 1.0 - float(batch.t0[k]),
                    error_probability=None if chance is None else float(chance[k]),
                )
            )
        out.append(
            Flag(
                flag_id=dedupe_key(ex.id, batch.model_version, given),
                example_id=ex.id,
                labels=given,
                issues=tuple(issues),
                suggested_labels=tuple(class_names[int(k)] for k in np.flatnonzero(suggested)),
                label_quality=float(batch.label_quality[i]),
                model_version=batch.model_version,
                annotator_id=ex.annotator_id,
                metadata=dict(ex.metadata),
                text=ex.text,
                input_kind=_input_kind(batch, i),
                flagged_at=flagged_at,
            )
        )
    return out
