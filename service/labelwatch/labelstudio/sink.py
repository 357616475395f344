"""Label Studio sink: import each flagged example as a task to review.

On open, the sink finds the project titled ``project`` (or creates it) with a
labeling config made of the model's classes as a multi-label ``Choices``
(classes missing from an existing project's config are added). Each flag
becomes one task:

* ``data``: the text (or a note naming the example when it was not text),
  ``labelwatch_flag_id``, example id, annotator id, label quality, model
  version, flagged-at, metadata and a one-line summary of the suspected issues
  shown above the text;
* ``annotations``: the given tags, i.e. the annotation under review;
* ``predictions``: the tags labelwatch suggests, with ``model_version`` and
  ``score`` = the highest calibrated error probability of the flag's issues (the
  chance that the suggestion is right), or 1 - label quality when the artifact has
  no tag-context model (higher = more likely mislabeled either way).

Label Studio does not deduplicate imports, so before each import the sink asks
for tasks of the project whose ``data.labelwatch_flag_id`` is in the batch and
imports only the others: a flag is never imported twice, even when a crash
made labelwatch deliver it again.

Auth: a legacy API token (``Authorization: Token ...``), or a personal access
token (a JWT), which is exchanged at ``/api/token/refresh/`` for access tokens.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Sequence
from html import unescape
from typing import Any
from xml.sax.saxutils import quoteattr

from labelwatch.flag_record import Flag
from labelwatch.labelstudio.client import LabelStudioClient, LabelStudioError
from labelwatch.sinks.base import PermanentError, RetryableError, SinkUnavailable

log = logging.getLogger(__name__)

FROM_NAME = "labels"
TO_NAME = "text"
_CHOICE_VALUE = re.compile(r"<Choice\s+[^>]*?value=(\"[^\"]*\"|'[^']*')")


def label_config(class_names: Sequence[str]) -> str:
    """The labeling config: summary header, the text, and one multi-label Choice per class.

    >>> print(label_config(["cat", "a&b"]).splitlines()[4])
        <Choice value="cat"/>
    """
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in class_names)
    return (
        "<View>\n"
        '  <Header value="$labelwatch_summary" size="5"/>\n'
        f'  <Text name="{TO_NAME}" value="$text"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="multiple" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>"
    )


def config_choices(config: str) -> list[str]:
    """The ``Choice`` values of a labeling config, in order."""
    return [unescape(m.group(1)[1:-1]) for m in _CHOICE_VALUE.finditer(config)]


def _choices(labels: Sequence[str]) -> list[dict[str, Any]]:
    if not labels:
        return []
    return [
        {
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "choices",
            "value": {"choices": list(labels)},
        }
    ]


def summary(flag: Flag) -> str:
    """The one line shown above the text, e.g. ``label quality 0.12 · suspected: ...``."""
    issues = ", ".join(
        f"{i.kind.value.lower()} {i.label!r} (p={i.probability:.2f})" for i in flag.issues
    )
    who = f" · annotator {flag.annotator_id}" if flag.annotator_id else ""
    return (
        f"labelwatch: label quality {flag.label_quality:.3f} · suspected: {issues}{who} "
        f"· model {flag.model_version}"
    )


def task_for(flag: Flag) -> dict[str, Any]:
    """The import JSON of one flag (see the module docstring)."""
    text = flag.text
    if text is None:
        text = f"(example {flag.example_id} was scored from {flag.input_kind}; no text was sent)"
    return {
        "data": {
            "text": text,
            "labelwatch_flag_id": flag.flag_id,
            "labelwatch_summary": summary(flag),
            "example_id": flag.example_id,
            "annotator_id": flag.annotator_id,
            "label_quality": flag.label_quality,
            "model_version": flag.model_version,
            "flagged_at": flag.to_dict()["flagged_at"],
            "issues": [
                {
                    "label": i.label,
                    "kind": i.kind.value,
                    "probability": i.probability,
                    "error_probability": i.error_probability,
                }
                for i in flag.issues
            ],
            "metadata": dict(flag.metadata),
        },
        "annotations": [{"result": _choices(flag.labels), "ground_truth": False}],
        "predictions": [
            {
                "model_version": flag.model_version,
                "score": review_score(flag),
                "result": _choices(flag.suggested_labels),
            }
        ],
    }


def review_score(flag: Flag) -> float:
    """The review prediction's score in [0, 1]: the highest error probability of the
    flag's issues, or ``1 - label_quality`` without error probabilities."""
    chances = [i.error_probability for i in flag.issues if i.error_probability is not None]
    return max(chances) if chances else 1.0 - flag.label_quality


class LabelStudioSink:
    """Imports flags into the Label Studio project titled ``project`` at ``url``.

    ``token``: legacy API token or personal access token; ``class_names``: the
    model's classes, in order.
    """

    name = "label_studio"

    def __init__(
        self,
        url: str,
        *,
        token: str,
        class_names: Sequence[str],
        project: str = "labelwatch flags",
        max_batch: int = 100,
        timeout_seconds: float = 30.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL must start with http:// or https://, got {url!r}")
        if not token:
            raise ValueError("Label Studio needs an API token (see --label-studio-token-env)")
        self.url = url.rstrip("/")
        self.project_title = project
        self.class_names = tuple(class_names)
        self.max_batch = max_batch
        self._client = LabelStudioClient(self.url, token, timeout_seconds=timeout_seconds)
        self.project_id: int | None = None

    # -- HTTP ------------------------------------------------------------------------------

    def _send(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; Label Studio's failures mapped to the sink's error kinds."""
        try:
            return self._client.request(method, path, body)
        except LabelStudioError as exc:
            message = str(exc)
            if exc.timed_out or exc.status == 429 or exc.status >= 500:
                raise RetryableError(message) from exc
            if exc.status == 0:
                raise SinkUnavailable(message) from exc
            if exc.status in (401, 403):
                raise SinkUnavailable(message + " (check the Label Studio token)") from exc
            if exc.status == 404:
                self.project_id = None  # the project may be gone: look it up again on open
                raise SinkUnavailable(message) from exc
            raise PermanentError(message) from exc

    # -- project -------------------------------------------------------------------------------

    def open(self) -> None:
        """Find or create the project, and make sure its config has every class."""
        if self.project_id is not None:
            return
        query = urllib.parse.urlencode({"title": self.project_title, "page_size": 100})
        answer = self._send("GET", f"/api/projects?{query}")
        projects = answer.get("results", []) if isinstance(answer, dict) else answer
        found = [p for p in projects if p.get("title") == self.project_title]
        if not found:
            created = self._send(
                "POST",
                "/api/projects",
                {
                    "title": self.project_title,
                    "description": "Examples labelwatch flagged as possibly mislabeled. "
                    "The annotation is the given tags; the prediction is labelwatch's suggestion.",
                    "label_config": label_config(self.class_names),
                },
            )
            self.project_id = int(created["id"])
            log.info(
                "event=label_studio_project_created id=%d title=%r classes=%d",
                self.project_id,
                self.project_title,
                len(self.class_names),
            )
            return
        project = min(found, key=lambda p: int(p["id"]))
        project_id = int(project["id"])
        have = config_choices(str(project.get("label_config", "")))
        missing = [c for c in self.class_names if c not in have]
        if missing:
            merged = list(self.class_names) + [c for c in have if c not in self.class_names]
            self._send(
                "PATCH", f"/api/projects/{project_id}", {"label_config": label_config(merged)}
            )
            log.warning(
                "event=label_studio_config_extended id=%d added=%s", project_id, ",".join(missing)
            )
        self.project_id = project_id

    def close(self) -> None:
        """Nothing to release (one HTTP request at a time)."""

    # -- delivery ------------------------------------------------------------------------------

    def existing_flag_ids(self, flag_ids: Sequence[str]) -> set[str]:
        """Which of ``flag_ids`` already are tasks of the project."""
        if self.project_id is None:
            raise SinkUnavailable("no Label Studio project yet")
        query = {
            "filters": {
                "conjunction": "or",
                "items": [
                    {
                        "filter": "filter:tasks:data.labelwatch_flag_id",
                        "operator": "equal",
                        "type": "String",
                        "value": flag_id,
                    }
                    for flag_id in flag_ids
                ],
            }
        }
        params = urllib.parse.urlencode(
            {
                "project": self.project_id,
                "fields": "task_only",
                "page_size": max(100, len(flag_ids) * 2),
                "query": json.dumps(query),
            }
        )
        answer = self._send("GET", f"/api/tasks?{params}")
        tasks = answer.get("tasks", []) if isinstance(answer, dict) else answer
        return {
            str(t["data"].get("labelwatch_flag_id"))
            for t in tasks
            if isinstance(t.get("data"), dict)
        } & set(flag_ids)

    def deliver(self, flags: Sequence[Flag]) -> int:
        """Import the flags of the batch that are not tasks yet; return ``len(flags)``."""
        if self.project_id is None:
            self.open()
        existing = self.existing_flag_ids([f.flag_id for f in flags])
        new = [f for f in flags if f.flag_id not in existing]
        if new:
            answer = self._send(
                "POST",
                f"/api/projects/{self.project_id}/import?return_task_ids=true",
                [task_for(f) for f in new],
            )
            imported = int(answer.get("task_count", 0)) if isinstance(answer, dict) else 0
            if imported != len(new):
                raise RetryableError(
                    f"Label Studio imported {imported} of {len(new)} tasks; will check and retry"
                )
        if existing:
            log.info("event=label_studio_skipped_existing count=%d", len(existing))
        return len(flags)
