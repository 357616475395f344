"""Label Studio webhook payloads -> examples to score.

Label Studio POSTs ``{"action": "ANNOTATION_CREATED" | "ANNOTATION_UPDATED" | ...,
"annotation": {"id", "result": [...], "completed_by", "updated_at", ...},
"task": {"id", "data": {...}, "project"}, "project": {"id", ...}}``, and for a
deletion ``{"action": "ANNOTATIONS_DELETED", "annotations": [{"id"}, ...],
"project": {...}}`` (ids only: the task is found in labelwatch's own records). A
:class:`ProjectMapping` says which ``data`` key holds the text and which
``Choices`` control holds the tags.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelwatch.codec.labelstudio import example_from_annotation
from labelwatch.domain import LabeledExample

ANNOTATION_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})
DELETE_ACTION = "ANNOTATIONS_DELETED"
WEBHOOK_ACTIONS = ANNOTATION_ACTIONS | {DELETE_ACTION}
"""Every action ``labelwatch label-studio connect`` subscribes the webhook to."""


class PayloadError(ValueError):
    """The webhook body is not an annotation event labelwatch can score (HTTP 400)."""


@dataclass(frozen=True)
class ProjectMapping:
    """Where a project keeps its text (``data[text_key]``) and tags (Choices ``choices_name``)."""

    text_key: str = "text"
    choices_name: str = "labels"


@dataclass(frozen=True)
class Mappings:
    """The mapping of each project (by id), else ``default``."""

    default: ProjectMapping = field(default_factory=ProjectMapping)
    projects: Mapping[int, ProjectMapping] = field(default_factory=dict)

    def for_project(self, project_id: int | None) -> ProjectMapping:
        """The mapping configured for ``project_id``, else the default."""
        if project_id is None:
            return self.default
        return self.projects.get(project_id, self.default)


def load_mappings(path: Path, default: ProjectMapping) -> Mappings:
    """Per-project mappings from a JSON file.

    The format is ``{"projects": {"3": {"text_key": "body", "choices_name": "tags"}}}``.
    A key that a project leaves out takes its value from ``default``. Raises
    ``ValueError`` naming the problem.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the Label Studio project mappings {path}: {exc}") from exc
    projects = raw.get("projects") if isinstance(raw, dict) else None
    if not isinstance(projects, dict):
        raise ValueError(f'{path}: expected {{"projects": {{"<id>": {{...}}}}}}')
    out: dict[int, ProjectMapping] = {}
    for key, value in projects.items():
        if not str(key).isdigit() or not isinstance(value, dict):
            raise ValueError(f"{path}: project {key!r} must be a numeric id mapped to an object")
        unknown = set(value) - {"text_key", "choices_name"}
        if unknown:
            raise ValueError(f"{path}: project {key}: unknown keys {sorted(unknown)}")
        out[int(key)] = ProjectMapping(
            str(value.get("text_key", default.text_key)),
            str(value.get("choices_name", default.choices_name)),
        )
    return Mappings(default, out)


@dataclass(frozen=True)
class AnnotationEvent:
    """One submitted annotation, ready to score and to write back."""

    action: str
    project_id: int
    task_id: int
    annotation_id: int
    version: str  # the annotation's updated_at: writes are idempotent per version
    task_data: Mapping[str, Any]
    choices_name: str  # the Choices' name (from_name), for predictions written back
    to_name: str  # the Choices' toName
    unknown_tags: tuple[str, ...]  # tags not among the model's classes (ignored)
    example: LabeledExample
    reviewer: str = ""  # who saved this version: updated_by, else completed_by ("" unknown)


def _int(value: Any, what: str) -> int:
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PayloadError(f"{what} is missing or not an id")
    try:
        return int(value)
    except ValueError as exc:
        raise PayloadError(f"{what} is not an integer id: {value!r}") from exc


def _user(value: Any) -> str:
    """A Label Studio user as given (an id, or an object with email / id); "" if none."""
    if isinstance(value, dict):
        value = value.get("email") or value.get("id")
    return "" if value is None or isinstance(value, bool) else str(value)


def parse_event(
    payload: Any, mappings: ProjectMapping | Mappings, class_names: Sequence[str]
) -> AnnotationEvent | None:
    """The annotation event in ``payload``, or None for actions labelwatch ignores.

    Raises :class:`PayloadError` for a malformed annotation event (no text under
    ``mapping.text_key``, missing ids, ...).
    """
    if not isinstance(payload, dict):
        raise PayloadError("the body must be a JSON object")
    action = payload.get("action")
    if action not in ANNOTATION_ACTIONS:
        return None
    annotation = payload.get("annotation")
    task = payload.get("task")
    if not isinstance(annotation, dict) or not isinstance(task, dict):
        raise PayloadError(f"{action} without 'annotation' and 'task' objects")
    data = task.get("data")
    if not isinstance(data, dict):
        raise PayloadError("task.data is missing")
    project = payload.get("project") or task.get("project") or annotation.get("project")
    project_id = _int(project, "project id")
    mapping = mappings.for_project(project_id) if isinstance(mappings, Mappings) else mappings
    text = data.get(mapping.text_key)
    if not isinstance(text, str):
        raise PayloadError(
            f"task.data has no text under {mapping.text_key!r} (keys: {sorted(data)}); "
            "set --ls-text-key"
        )
    task_id = _int(task.get("id"), "task.id")
    annotation_id = _int(annotation.get("id"), "annotation.id")
    tags: list[str] = []
    to_name = "text"
    for item in annotation.get("result") or []:
        if not isinstance(item, dict) or item.get("from_name") != mapping.choices_name:
            continue
        to_name = str(item.get("to_name") or to_name)
        value = item.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if isinstance(choices, list):
            tags.extend(str(c) for c in choices)
    annotator = _user(annotation.get("completed_by"))
    reviewer = _user(annotation.get("updated_by")) or annotator
    version = str(annotation.get("updated_at") or annotation.get("created_at") or "")
    example, unknown = example_from_annotation(
        project_id=project_id,
        task_id=task_id,
        annotation_id=annotation_id,
        text=text,
        tags=tags,
        annotator=annotator,
        version=version,
        class_names=class_names,
    )
    return AnnotationEvent(
        action=str(action),
        project_id=project_id,
        task_id=task_id,
        annotation_id=annotation_id,
        version=version,
        task_data=data,
        choices_name=mapping.choices_name,
        to_name=to_name,
        unknown_tags=unknown,
        example=example,
        reviewer=reviewer,
    )


@dataclass(frozen=True)
class Received:
    """A webhook body checked and split into inbox rows ``(annotation_id, action, payload)``.

    ``payload`` is JSON that :func:`parse_stored` reads back; ``example_id`` and
    ``unknown_tags`` are for the 202 answer (annotation events only).
    """

    rows: tuple[tuple[int, str, str], ...]
    example_id: str = ""
    unknown_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Deletion:
    """Label Studio deleted annotation ``annotation_id``."""

    annotation_id: int


def receive(
    payload: Any, mappings: ProjectMapping | Mappings, class_names: Sequence[str]
) -> Received | None:
    """Check ``payload`` and split it into inbox rows; None for actions labelwatch ignores.

    Raises :class:`PayloadError` for a malformed event of an action it handles.
    """
    if isinstance(payload, dict) and payload.get("action") == DELETE_ACTION:
        items = payload.get("annotations")
        if not isinstance(items, list):
            raise PayloadError(f"{DELETE_ACTION} without an 'annotations' list")
        ids = [_int(item, "annotations[].id") for item in items]
        return Received(
            tuple(
                (i, DELETE_ACTION, json.dumps({"action": DELETE_ACTION, "annotation_id": i}))
                for i in ids
            )
        )
    event = parse_event(payload, mappings, class_names)
    if event is None:
        return None
    raw = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return Received(
        ((event.annotation_id, event.action, raw),), event.example.id, event.unknown_tags
    )


def parse_stored(
    payload: str, mappings: ProjectMapping | Mappings, class_names: Sequence[str]
) -> AnnotationEvent | Deletion | None:
    """An inbox row's payload (from :func:`receive`) as the event to process.

    Raises :class:`PayloadError` if it no longer parses (e.g. the mappings changed).
    """
    body = json.loads(payload)
    if isinstance(body, dict) and body.get("action") == DELETE_ACTION:
        return Deletion(_int(body.get("annotation_id"), "annotation_id"))
    return parse_event(body, mappings, class_names)
