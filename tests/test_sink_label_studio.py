"""The Label Studio sink against a real Label Studio (its own venv, SQLite, on 127.0.0.1).

Label Studio starts once per test session (60-90 s on a fresh database). Without
its venv (scripts/ci_delivery_deps.sh makes it) these tests skip, except in CI.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from labelwatch.labelstudio.sink import LabelStudioSink, config_choices, label_config
from labelwatch.metrics import DeliveryMetrics
from labelwatch.outbox import Outbox
from labelwatch.sinks.base import RetryPolicy, SinkWorker
from support_delivery import LabelStudio, label_studio, make_flag, wait_until

# slow: a real Label Studio (first start on a fresh database 60-90 s)
pytestmark = pytest.mark.slow

CLASSES = ("cat", "dog", "bird & fish", 'say "hi"')
FAST = RetryPolicy(max_attempts=5, initial_seconds=0.1, max_seconds=1.0)


@pytest.fixture
def ls() -> LabelStudio:
    return label_studio()


@pytest.fixture
def title() -> str:
    return f"labelwatch test {uuid.uuid4().hex[:8]}"


class Harness:
    """An outbox with a started Label Studio sink worker."""

    def __init__(self, tmp: Path, ls: LabelStudio, title: str) -> None:
        self.registry = CollectorRegistry()
        self.metrics = DeliveryMetrics(self.registry)
        self.outbox = Outbox(tmp / "outbox.sqlite3")
        self.metrics.track(self.outbox, ["label_studio"])
        self.sink = LabelStudioSink(
            ls.url, token=ls.token, class_names=CLASSES, project=title, max_batch=20
        )
        self.worker = SinkWorker(
            self.sink,
            self.outbox,
            self.metrics,
            policy=FAST,
            rng=random.Random(0),
            poll_seconds=0.2,
        )
        self.worker.start()

    def pending(self) -> float:
        value = self.registry.get_sample_value(
            "labelwatch_outbox_pending", {"sink": "label_studio"}
        )
        return value if value is not None else -1.0

    def stop(self) -> None:
        self.worker.stop(10.0)
        self.outbox.close()


def project_tasks(ls: LabelStudio, title: str) -> list[dict[str, Any]]:
    project = ls.project(title)
    assert project is not None, f"no project {title!r}"
    return sorted(ls.tasks(int(project["id"])), key=lambda t: int(t["id"]))


def test_label_config_lists_every_class_as_a_multi_label_choice() -> None:
    config = label_config(CLASSES)
    assert 'choice="multiple"' in config
    assert config_choices(config) == list(CLASSES)


def test_the_project_is_created_with_the_model_classes(ls: LabelStudio, title: str) -> None:
    sink = LabelStudioSink(ls.url, token=ls.token, class_names=CLASSES, project=title)
    sink.open()
    project = ls.project(title)
    assert project is not None and int(project["id"]) == sink.project_id
    assert config_choices(project["label_config"]) == list(CLASSES)
    assert 'choice="multiple"' in project["label_config"]


def test_an_existing_project_is_reused_and_new_classes_are_added(
    ls: LabelStudio, title: str
) -> None:
    first = LabelStudioSink(ls.url, token=ls.token, class_names=CLASSES[:2], project=title)
    first.open()
    second = LabelStudioSink(ls.url, token=ls.token, class_names=CLASSES, project=title)
    second.open()
    assert second.project_id == first.project_id
    project = ls.project(title)
    assert project is not None
    assert config_choices(project["label_config"]) == list(CLASSES)


def test_each_flag_becomes_a_task_with_the_tags_to_review_and_the_suggestion(
    tmp_path: Path, ls: LabelStudio, title: str
) -> None:
    h = Harness(tmp_path, ls, title)
    flags = [make_flag(i) for i in range(45)]
    h.outbox.write(flags)
    wait_until(lambda: h.pending() == 0, 120, "45 flags imported", interval=0.5)
    h.stop()
    tasks = project_tasks(ls, title)
    assert [t["data"]["labelwatch_flag_id"] for t in tasks] == [f.flag_id for f in flags]
    task, flag = tasks[0], h.outbox.flags(limit=1)[0]
    assert task["data"]["text"] == flag.text
    assert task["data"]["example_id"] == flag.example_id
    assert task["data"]["annotator_id"] == flag.annotator_id
    assert "missing 'dog'" in task["data"]["labelwatch_summary"]
    (annotation,) = task["annotations"]
    assert annotation["result"][0]["value"]["choices"] == list(flag.labels)
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == flag.model_version
    assert prediction["score"] == pytest.approx(1 - flag.label_quality)
    assert prediction["result"][0]["value"]["choices"] == list(flag.suggested_labels)


def test_a_flag_delivered_again_is_not_imported_twice(
    tmp_path: Path, ls: LabelStudio, title: str
) -> None:
    h = Harness(tmp_path, ls, title)
    h.outbox.write([make_flag(i) for i in range(12)])
    wait_until(lambda: h.pending() == 0, 60, "first import", interval=0.5)
    h.outbox.set_cursor("sink", "label_studio", 0)  # `labelwatch flags replay`
    h.outbox.write([make_flag(i) for i in range(12, 15)])
    wait_until(lambda: h.pending() == 0, 60, "the replay", interval=0.5)
    h.stop()
    ids = [t["data"]["labelwatch_flag_id"] for t in project_tasks(ls, title)]
    assert len(ids) == 15 and len(set(ids)) == 15


def test_a_text_less_flag_names_its_example(tmp_path: Path, ls: LabelStudio, title: str) -> None:
    h = Harness(tmp_path, ls, title)
    base = make_flag(0)
    no_text = dataclasses.replace(base, text=None, input_kind="features")
    h.outbox.write([no_text])
    wait_until(lambda: h.pending() == 0, 60, "import", interval=0.5)
    h.stop()
    (task,) = project_tasks(ls, title)
    assert "ex-0" in task["data"]["text"] and "features" in task["data"]["text"]


def test_label_studio_down_keeps_the_backlog_which_drains_in_order_when_back(
    tmp_path: Path, ls: LabelStudio, title: str
) -> None:
    h = Harness(tmp_path, ls, title)
    flags = [make_flag(i) for i in range(30)]
    h.outbox.write(flags[:5])
    wait_until(lambda: h.pending() == 0, 60, "import while up", interval=0.5)
    ls.stop()
    try:
        for start in range(5, 30, 5):
            h.outbox.write(flags[start : start + 5])
        wait_until(
            lambda: (
                (
                    h.registry.get_sample_value(
                        "labelwatch_deliveries_total",
                        {"sink": "label_studio", "outcome": "unavailable"},
                    )
                    or 0
                )
                > 0
            ),
            30,
            "an unavailable attempt",
        )
        assert h.pending() == 25
    finally:
        label_studio()  # restart on the migrated database
    wait_until(lambda: h.pending() == 0, 120, "the backlog to drain", interval=0.5)
    h.stop()
    assert h.outbox.dead_letters() == []
    ids = [t["data"]["labelwatch_flag_id"] for t in project_tasks(ls, title)]
    assert ids == [f.flag_id for f in flags]


def test_a_personal_access_token_works_too(ls: LabelStudio, title: str) -> None:
    pat = str(ls.request("POST", "/api/token/")["token"])  # a JWT refresh token
    sink = LabelStudioSink(ls.url, token=pat, class_names=CLASSES, project=title)
    sink.open()
    flags = [make_flag(i) for i in range(3)]
    assert sink.deliver(flags) == 3
    assert sink.existing_flag_ids([f.flag_id for f in flags]) == {f.flag_id for f in flags}
