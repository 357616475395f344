"""Write an annotation's score back to its Label Studio task.

For each :class:`~labelwatch.labelstudio.writequeue.WriteBack` the task is read,
then its ``data`` gets:

* ``labelwatch_annotations``: per annotation id, the last scored version, its
  score, whether it was flagged, its issues and suggested tags;
* the task's summary over those annotations, where the Data Manager can show,
  sort and filter by it: ``labelwatch_score`` (the lowest label quality, low =
  worst), ``labelwatch_flagged`` (any flagged), ``labelwatch_issues`` (one line,
  of the worst annotation), ``labelwatch_annotation`` and
  ``labelwatch_annotation_version`` (the worst one) and ``labelwatch_model_version``.

While an annotation of the task is flagged the task carries exactly one labelwatch
review prediction: the worst flagged annotation's suggested tags, ``score`` =
``mislabeling`` = the highest error probability of its flagged tags (1 - its label
quality without a tag-context model; Label Studio's "mislabeling" field tells
it apart from pre-annotations made by ``/predict``), ``model_version`` =
labelwatch's. Other review predictions (stale ones, e.g. of an annotation since
corrected) are deleted, and none is left when no annotation is flagged.

A deleted annotation (``WriteBack.deleted``) loses its entry; the summary is
recomputed over the others (and removed when none is left), and the review
prediction follows (deleted when no annotation is flagged any more).

Idempotent per annotation version: writing the same version again leaves the task
as it was (same data, the same single prediction), so a retry after a crash or a
redelivered webhook changes nothing.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from labelwatch.labelstudio.client import LabelStudioClient
from labelwatch.labelstudio.writequeue import WriteBack

_SCORE_TOLERANCE = 1e-6


def issues_line(issues: Any) -> str:
    """``missing 'x' (p=0.97), spurious 'y' (p=0.02)``, or ``""`` for no issues.

    >>> issues_line([("x", "missing", 0.971)])
    "missing 'x' (p=0.97)"
    """
    return ", ".join(f"{kind} {label!r} (p={float(p):.2f})" for label, kind, p in issues)


def choices_result(tags: Any, choices_name: str, to_name: str) -> list[dict[str, Any]]:
    """A Label Studio ``result`` with one multi-label Choices region (empty for no tags)."""
    if not tags:
        return []
    return [
        {
            "from_name": choices_name,
            "to_name": to_name,
            "type": "choices",
            "value": {"choices": list(tags)},
        }
    ]


def _entry(write: WriteBack) -> dict[str, Any]:
    return {
        "version": write.version,
        "score": round(write.label_quality, 6),
        "flagged": write.flagged,
        "issues": issues_line(write.issues),
        "suggested": list(write.suggested),
        "choices_name": write.choices_name,
        "to_name": write.to_name,
        "model_version": write.model_version,
        "error_probability": write.error_probability,
    }


SUMMARY_KEYS = (
    "labelwatch_score",
    "labelwatch_flagged",
    "labelwatch_issues",
    "labelwatch_annotation",
    "labelwatch_annotation_version",
    "labelwatch_model_version",
)


def merged_data(data: dict[str, Any], write: WriteBack) -> dict[str, Any]:
    """The task ``data`` after ``write`` (see the module docstring); ``data`` is not changed."""
    out = dict(data)
    annotations = out.get("labelwatch_annotations")
    entries = dict(annotations) if isinstance(annotations, dict) else {}
    if write.deleted:
        entries.pop(str(write.annotation_id), None)
        if not entries:
            for key in ("labelwatch_annotations", *SUMMARY_KEYS):
                out.pop(key, None)
            return out
    else:
        entries[str(write.annotation_id)] = _entry(write)
    worst_id, worst = min(entries.items(), key=lambda kv: (float(kv[1]["score"]), kv[0]))
    out.update(
        {
            "labelwatch_annotations": entries,
            "labelwatch_score": worst["score"],
            "labelwatch_flagged": any(bool(e.get("flagged")) for e in entries.values()),
            "labelwatch_issues": worst["issues"],
            "labelwatch_annotation": int(worst_id),
            "labelwatch_annotation_version": worst["version"],
            "labelwatch_model_version": worst["model_version"],
        }
    )
    return out


def review_prediction(data: dict[str, Any]) -> dict[str, Any] | None:
    """The review prediction the task should carry after :func:`merged_data`, or None."""
    entries = data.get("labelwatch_annotations") or {}
    flagged = [e for e in entries.values() if e.get("flagged")]
    if not flagged:
        return None
    worst = min(flagged, key=lambda e: float(e["score"]))
    chance = worst.get("error_probability")
    mislabeling = round(1.0 - float(worst["score"]) if chance is None else float(chance), 6)
    return {
        "model_version": worst["model_version"],
        "score": mislabeling,
        "mislabeling": max(mislabeling, _SCORE_TOLERANCE),
        "result": choices_result(worst["suggested"], worst["choices_name"], worst["to_name"]),
    }


def _same(row: dict[str, Any], want: dict[str, Any]) -> bool:
    return bool(
        row.get("model_version") == want["model_version"]
        and row.get("result") == want["result"]
        and abs(float(row.get("score") or 0.0) - float(want["score"])) <= _SCORE_TOLERANCE
    )


class TaskWriter:
    """Writes :class:`WriteBack` results to tasks through ``client``."""

    def __init__(self, client: LabelStudioClient) -> None:
        self._client = client

    def __call__(self, write: WriteBack) -> None:
        """Write ``write``; raises :class:`LabelStudioError` if Label Studio refuses or is down."""
        task = self._client.request("GET", f"/api/tasks/{write.task_id}")
        data = task.get("data") if isinstance(task, dict) else None
        new = merged_data(data if isinstance(data, dict) else {}, write)
        if new != data:
            self._client.request("PATCH", f"/api/tasks/{write.task_id}", {"data": new})
        self._reconcile(write.task_id, review_prediction(new))

    def _reconcile(self, task_id: int, want: dict[str, Any] | None) -> None:
        query = urllib.parse.urlencode({"task": task_id})
        answer = self._client.request("GET", f"/api/predictions/?{query}")
        rows = answer.get("results", []) if isinstance(answer, dict) else answer or []
        # pre-annotations from /predict share the model version but have no mislabeling
        ours = [r for r in rows if isinstance(r, dict) and float(r.get("mislabeling") or 0) > 0]
        keep = next((r for r in ours if want is not None and _same(r, want)), None)
        for row in ours:
            if row is not keep:
                self._client.request("DELETE", f"/api/predictions/{row['id']}/")
        if want is not None and keep is None:
            self._client.request("POST", "/api/predictions/", {"task": task_id, **want})
