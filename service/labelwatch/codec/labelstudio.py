"""A Label Studio annotation (task text + chosen tags) -> :class:`LabeledExample`.

Label Studio sends whatever its project offers: a tag that is not among the
model's classes is set aside (reported back as ``unknown_tags``), not refused,
so one stray choice does not cost the annotation its score.

>>> ex, unknown = example_from_annotation(
...     project_id=3, task_id=7, annotation_id=11, text="a zip tool", tags=["b", "x"],
...     annotator="ann@example.com", version="2024-01-01T00:00:00Z", class_names=("a", "b"))
>>> ex.id, ex.labels.tolist(), unknown
('ls-3-7-11', [False, True], ('x',))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labelwatch.domain import LabeledExample


def example_from_annotation(
    *,
    project_id: int,
    task_id: int,
    annotation_id: int,
    text: str,
    tags: Sequence[str],
    annotator: object,
    version: str,
    class_names: Sequence[str],
) -> tuple[LabeledExample, tuple[str, ...]]:
    """The example for one annotation, and the tags that are not among ``class_names``.

    The example's id is ``ls-<project>-<task>-<annotation>``; its metadata names the
    project, task, annotation and annotation version (``updated_at``) it came from.
    """
    index = {name: k for k, name in enumerate(class_names)}
    labels = np.zeros(len(class_names), dtype=np.bool_)
    unknown: list[str] = []
    for tag in tags:
        if tag in index:
            labels[index[tag]] = True
        else:
            unknown.append(tag)
    example = LabeledExample(
        id=f"ls-{project_id}-{task_id}-{annotation_id}",
        labels=labels,
        text=text,
        annotator_id="" if annotator is None else str(annotator),
        metadata={
            "source": "label-studio",
            "ls_project": str(project_id),
            "ls_task": str(task_id),
            "ls_annotation": str(annotation_id),
            "ls_annotation_version": version,
        },
    )
    return example, tuple(unknown)
