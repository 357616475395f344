"""Write an annotation's score back to its Label Studio task.

* Every scored annotation: ``labelwatch_score`` (label quality, low = worst),
  ``labelwatch_flagged``, ``labelwatch_issues`` (one line), the annotation id and
  version are merged into the task's ``data``, where the Data Manager can show,
  sort and filter by them (``data.labelwatch_score``).
* A flagged annotation also gets a prediction on the task: the suggested tags,
  ``score`` = ``mislabeling`` = 1 - label quality (Label Studio's own "mislabeling"
  field tells these apart from pre-annotations made by ``/predict``) and
  ``model_version`` = labelwatch's model version.

Idempotent per annotation version: the data fields are overwritten with the same
values, and a prediction is not created when the task already has one from this
model version with the same tags.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from labelwatch.labelstudio.client import LabelStudioClient
from labelwatch.labelstudio.processor import AnnotationScore


def issues_line(score: AnnotationScore) -> str:
    """``missing 'x' (p=0.97), spurious 'y' (p=0.02)``, or ``""`` when not flagged."""
    return ", ".join(f"{kind} {label!r} (p={p:.2f})" for label, kind, p in score.issues)


def choices_result(tags: tuple[str, ...], choices_name: str, to_name: str) -> list[dict[str, Any]]:
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


class TaskWriter:
    """Writes :class:`AnnotationScore` results to tasks through ``client``."""

    def __init__(self, client: LabelStudioClient) -> None:
        self._client = client

    def __call__(self, score: AnnotationScore) -> None:
        """Write ``score``; raises :class:`LabelStudioError` if Label Studio refuses or is down."""
        event = score.event
        data = dict(event.task_data)
        data.update(
            {
                "labelwatch_score": round(score.label_quality, 6),
                "labelwatch_flagged": score.flagged,
                "labelwatch_issues": issues_line(score),
                "labelwatch_annotation": event.annotation_id,
                "labelwatch_annotation_version": event.version,
                "labelwatch_model_version": score.model_version,
            }
        )
        self._client.request("PATCH", f"/api/tasks/{event.task_id}", {"data": data})
        if score.flagged:
            self._predict(score)

    def _predict(self, score: AnnotationScore) -> None:
        event = score.event
        result = choices_result(score.suggested, event.choices_name, event.to_name)
        query = urllib.parse.urlencode({"task": event.task_id})
        existing = self._client.request("GET", f"/api/predictions/?{query}")
        rows = existing.get("results", []) if isinstance(existing, dict) else existing or []
        for row in rows:
            # pre-annotations from /predict share the model version but have no mislabeling
            ours = float(row.get("mislabeling") or 0.0) > 0.0
            if (
                ours
                and row.get("model_version") == score.model_version
                and row.get("result") == result
            ):
                return
        self._client.request(
            "POST",
            "/api/predictions/",
            {
                "task": event.task_id,
                "model_version": score.model_version,
                "score": round(1.0 - score.label_quality, 6),
                "mislabeling": max(round(1.0 - score.label_quality, 6), 1e-6),
                "result": result,
            },
        )
