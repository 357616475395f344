"""Label Studio events stored before the 202, processed from the outbox; per-task leases.

Real SQLite files; two :class:`Outbox` objects on one file stand for two worker
processes (each has its own connection, as ``--workers`` processes do). The
end-to-end versions against a real Label Studio are in test_label_studio_live.py.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from labelwatch.config import Settings
from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.engine import load_pipeline
from labelwatch.labelstudio.processor import AnnotationProcessor
from labelwatch.labelstudio.webhook import (
    DELETE_ACTION,
    Deletion,
    Mappings,
    PayloadError,
    parse_stored,
    receive,
)
from labelwatch.labelstudio.writeback import SUMMARY_KEYS, merged_data, review_prediction
from labelwatch.labelstudio.writequeue import WriteBack, WriteBackQueue
from labelwatch.metrics import Metrics
from labelwatch.outbox import Outbox
from labelwatch.sinks.base import RetryPolicy
from support_delivery import wait_until
from support_server import CLASS_NAMES

MAPPINGS = Mappings()


class Clock:
    """A settable clock (unix seconds) shared by the outboxes of one test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def payload(annotation_id: int, tags: Sequence[str], *, task_id: int = 5, when: str = "t1") -> Any:
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 2},
        "task": {"id": task_id, "data": {"text": f"text of task {task_id}"}},
        "annotation": {
            "id": annotation_id,
            "completed_by": {"id": 9, "email": "ann@example.org"},
            "updated_at": when,
            "result": [
                {
                    "from_name": "labels",
                    "to_name": "text",
                    "type": "choices",
                    "value": {"choices": list(tags)},
                }
            ],
        },
    }


def write(task_id: int, annotation_id: int, **changes: Any) -> WriteBack:
    base = WriteBack(
        project_id=2,
        task_id=task_id,
        annotation_id=annotation_id,
        version="v1",
        label_quality=0.2,
        flagged=True,
        issues=(("cat", "missing", 0.9),),
        suggested=("cat",),
        model_version="m",
        choices_name="labels",
        to_name="text",
    )
    return dataclasses.replace(base, **changes)


def test_a_deletion_is_stored_as_one_row_per_annotation_id() -> None:
    received = receive(
        {"action": DELETE_ACTION, "annotations": [{"id": 4}, {"id": 6}], "project": {"id": 2}},
        MAPPINGS,
        CLASS_NAMES,
    )
    assert received is not None
    assert [(a, action) for a, action, _ in received.rows] == [
        (4, DELETE_ACTION),
        (6, DELETE_ACTION),
    ]
    assert parse_stored(received.rows[1][2], MAPPINGS, CLASS_NAMES) == Deletion(6)
    with pytest.raises(PayloadError):
        receive({"action": DELETE_ACTION}, MAPPINGS, CLASS_NAMES)


def test_a_stored_annotation_event_parses_back_to_the_same_event() -> None:
    body = payload(11, ["cat", "zebra"])
    received = receive(body, MAPPINGS, CLASS_NAMES)
    assert received is not None and received.unknown_tags == ("zebra",)
    ((annotation_id, action, raw),) = received.rows
    assert (annotation_id, action) == (11, "ANNOTATION_CREATED")
    event = parse_stored(raw, MAPPINGS, CLASS_NAMES)
    assert not isinstance(event, Deletion) and event is not None
    assert event.example.id == received.example_id == "ls-2-5-11"
    assert event.example.annotator_id == "ann@example.org"


def test_events_of_one_annotation_are_claimed_one_at_a_time_in_arrival_order(
    tmp_path: Path,
) -> None:
    clock = Clock()
    first, second = (Outbox(tmp_path / "o.sqlite3", clock=clock) for _ in range(2))
    rows = [(1, "ANNOTATION_CREATED", "a"), (2, "ANNOTATION_CREATED", "b")]
    assert first.put_ls_events(rows, max_queued=10)
    assert first.put_ls_events([(1, "ANNOTATION_UPDATED", "c")], max_queued=10)
    claimed = first.claim_ls_events(10, lease_seconds=60)
    assert [(e.annotation_id, e.payload) for e in claimed] == [(1, "a"), (2, "b")]
    # annotation 1's update waits until its creation is done, in any process
    assert second.claim_ls_events(10, lease_seconds=60) == []
    first.finish_ls_event(claimed[0].event_id)
    (update,) = second.claim_ls_events(10, lease_seconds=60)
    assert (update.annotation_id, update.payload) == (1, "c")
    # a process killed while holding annotation 2's event: the lease ends, the event returns
    clock.now += 61
    again = second.claim_ls_events(10, lease_seconds=60)
    assert [(e.annotation_id, e.payload) for e in again] == [(2, "b"), (1, "c")]
    assert first.ls_event_backlog() == (2, 1000.0)
    # the limit is counted across processes and refuses the whole body
    assert not second.put_ls_events([(3, "x", "d")] * 9, max_queued=10)
    assert first.ls_event_backlog()[0] == 2
    first.close()
    second.close()


def test_two_processes_never_hold_writes_of_the_same_task_at_once(tmp_path: Path) -> None:
    clock = Clock()
    boxes = [Outbox(tmp_path / "o.sqlite3", clock=clock) for _ in range(2)]
    one, two = (WriteBackQueue(box) for box in boxes)
    one.put(write(5, 50))
    one.put(write(5, 51))
    one.put(write(6, 60))
    (a,) = one.claim(1)  # the oldest: task 5, annotation 50
    assert a.write.annotation_id == 50
    held = two.claim(10)
    assert [c.write.task_id for c in held] == [6]  # task 5 is leased by the first process
    # a newer version of the leased write does not free its task
    one.put(write(5, 50, version="v2"))
    assert two.claim(10) == []
    one.done(a.write)  # v1 done; v2 is still queued
    assert sorted((c.write.annotation_id, c.write.version) for c in two.claim(10)) == [
        (50, "v2"),
        (51, "v1"),
    ]
    assert one.claim(10) == []
    # a crashed holder's lease expires
    clock.now += 121
    assert len(one.claim(10)) == 3
    for box in boxes:
        box.close()


def test_deleting_an_annotation_recomputes_the_summary_and_prediction() -> None:
    data = merged_data({"text": "x"}, write(5, 50, label_quality=0.2))
    data = merged_data(data, write(5, 51, label_quality=0.9, flagged=False, issues=()))
    assert (data["labelwatch_annotation"], data["labelwatch_flagged"]) == (50, True)
    after = merged_data(data, write(5, 50, version="deleted:1", deleted=True))
    assert list(after["labelwatch_annotations"]) == ["51"]
    assert (after["labelwatch_annotation"], after["labelwatch_score"]) == (51, 0.9)
    assert after["labelwatch_flagged"] is False and review_prediction(after) is None
    empty = merged_data(after, write(5, 51, version="deleted:2", deleted=True))
    assert empty == {"text": "x"}
    assert not set(SUMMARY_KEYS) & set(empty)


def test_events_stored_while_scoring_is_blocked_are_all_processed_once_it_runs(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    pipeline = load_pipeline(Settings(), Metrics(CollectorRegistry()), outbox=outbox)  # default
    names = tuple(pipeline.spec.class_names)
    tag = "uitoolkit::gtk"
    gate = threading.Event()

    def score(batch: Sequence[LabeledExample]) -> ScoredBatch:
        gate.wait(30)
        return pipeline.score(batch)

    processor = AnnotationProcessor(
        outbox,
        score,
        names,
        MAPPINGS,
        writeback=True,
        policy=RetryPolicy(initial_seconds=0.05, max_seconds=0.1),
    )
    processor.start()
    try:
        for i in range(5):
            received = receive(payload(100 + i, [tag], task_id=7), MAPPINGS, names)
            assert received is not None
            assert outbox.put_ls_events(received.rows, max_queued=100)
            processor.wake()
        deletion = receive({"action": DELETE_ACTION, "annotations": [{"id": 100}]}, MAPPINGS, ())
        assert deletion is not None and outbox.put_ls_events(deletion.rows, max_queued=100)
        assert processor.depth >= 5  # at most one is being scored
        gate.set()
        wait_until(lambda: processor.depth == 0, what="every stored event processed", timeout=30)
    finally:
        processor.close()
    queue = WriteBackQueue(outbox)
    writes = {c.write.annotation_id: c.write for c in queue.claim(100)}
    assert sorted(writes) == [100, 101, 102, 103, 104]
    assert writes[100].deleted and not writes[101].deleted
    assert outbox.ls_annotation(100) is None
    seen = outbox.ls_annotation(101)
    assert seen is not None and (seen.task_id, seen.annotator) == (7, "ann@example.org")
    assert json.loads(seen.payload)["given"] == [tag]
    assert np.isclose(writes[101].label_quality, writes[102].label_quality)
    outbox.close()
