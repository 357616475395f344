"""Label Studio, both ways, against a real Label Studio (see support_delivery.label_studio).

One Label Studio and one labelwatch (in-process, default text model, --http-port)
serve the whole module. The project is connected with `labelwatch label-studio
connect`; annotations are submitted through Label Studio's API as an annotator
would, and Label Studio's own webhooks bring them to labelwatch.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import support_delivery
from labelwatch.cli import main
from labelwatch.errors import StartupError
from labelwatch.labelstudio.http import SECRET_HEADER
from labelwatch.labelstudio.webhook import ProjectMapping, load_mappings, parse_event
from labelwatch.server import RunningServer
from support_delivery import LabelStudio, free_port, label_studio, wait_until
from support_server import running_server

SECRET = "labelwatch-test-webhook-secret-0123456789"
GNOME = "GNOME desktop image viewer for photos written in C with GTK"
NETWORK = "command-line utility to manage network interfaces and firewall rules"
PYTHON = "Python 3 library for parsing and validating JSON documents"
# Label Studio refuses to call loopback/private addresses unless told otherwise
LS_ENV = {"SSRF_PROTECTION_ENABLED": "false", "ML_BLOCK_LOCAL_IP": "false"}


@dataclass
class Setup:
    ls: LabelStudio
    server: RunningServer
    http: str
    project_id: int
    connect_output: str


def _ls_with_local_calls() -> LabelStudio:
    """The session's Label Studio, (re)started so that it may call 127.0.0.1."""
    missing = {k: v for k, v in LS_ENV.items() if os.environ.get(k) != v}
    os.environ.update(LS_ENV)
    running = support_delivery._LS is not None and support_delivery._LS.process is not None
    ls = label_studio()
    if missing and running:  # started by another module without the settings: restart
        ls.stop()
        ls.start(120)
    return ls


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    ls = _ls_with_local_calls()
    with tempfile.TemporaryDirectory(prefix="labelwatch-ls-live-") as tmp:
        secret_file = Path(tmp) / "secret"
        secret_file.write_text(SECRET)
        token_file = Path(tmp) / "token"
        token_file.write_text(ls.token)
        with running_server(
            http_port=free_port(),
            ls_webhook_secret_file=secret_file,
            ls_writeback_url=ls.url,
            label_studio_token_file=token_file,
            sink_retry_initial_seconds=0.5,
            sink_retry_max_seconds=2.0,
        ) as server:
            assert server.label_studio_http is not None
            http = f"http://127.0.0.1:{server.label_studio_http.port}"
            out_file = Path(tmp) / "connect.out"
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = main(
                    [
                        "label-studio",
                        "connect",
                        "--url",
                        ls.url,
                        "--token",
                        ls.token,
                        "--labelwatch-url",
                        http,
                        "--webhook-secret-file",
                        str(secret_file),
                        "--project-title",
                        f"labelwatch live {time.time_ns()}",
                    ]
                )
            output = buf.getvalue()
            out_file.write_text(output)
            assert code == 0, output
            project_id = int(output.split("project=")[1].split()[0])
            yield Setup(ls, server, http, project_id, output)


def _choices(tags: list[str]) -> list[dict[str, Any]]:
    return [
        {"from_name": "labels", "to_name": "text", "type": "choices", "value": {"choices": tags}}
    ]


def _model_tags(server: RunningServer, text: str) -> tuple[list[str], np.ndarray]:
    model = server.pipeline.model
    assert model is not None
    row = model.predict([text])[0]
    names = server.pipeline.spec.class_names
    return [names[k] for k in np.flatnonzero(row >= 0.5)], row


def _import(ls: LabelStudio, project_id: int, texts: list[str]) -> list[int]:
    before = {t["id"] for t in ls.tasks(project_id)}
    ls.request("POST", f"/api/projects/{project_id}/import", [{"data": {"text": t}} for t in texts])
    tasks = [t for t in ls.tasks(project_id) if t["id"] not in before]
    by_text = {t["data"]["text"]: t["id"] for t in tasks}
    return [by_text[t] for t in texts]


def test_connect_registers_webhook_and_ml_backend_and_is_idempotent(setup: Setup) -> None:
    hooks = setup.ls.request("GET", f"/api/webhooks/?project={setup.project_id}")
    mine = [h for h in hooks if h["url"] == setup.http + "/webhook"]
    assert len(mine) == 1
    assert set(mine[0]["actions"]) == {"ANNOTATION_CREATED", "ANNOTATION_UPDATED"}
    ml = setup.ls.request("GET", f"/api/ml/?project={setup.project_id}")
    assert [b["url"].rstrip("/") for b in ml] == [setup.http]
    # again, on the existing project: updated, not duplicated
    secret_file = Path(tempfile.mkdtemp()) / "s"
    secret_file.write_text(SECRET)
    code = main(
        [
            *("label-studio", "connect", "--url", setup.ls.url, "--token", setup.ls.token),
            *("--project", str(setup.project_id), "--labelwatch-url", setup.http),
            *("--webhook-secret-file", str(secret_file)),
        ]
    )
    assert code == 0
    hooks = setup.ls.request("GET", f"/api/webhooks/?project={setup.project_id}")
    assert len([h for h in hooks if h["url"] == setup.http + "/webhook"]) == 1
    assert len(setup.ls.request("GET", f"/api/ml/?project={setup.project_id}")) == 1


def test_submitted_annotations_are_scored_and_written_back(setup: Setup) -> None:
    ls, server = setup.ls, setup.server
    names = server.pipeline.spec.class_names
    tags, row = _model_tags(server, GNOME)
    strongest = names[int(np.argmax(row))]
    absent = names[int(np.argmin(row))]
    spurious = [*tags, absent]  # a tag the text clearly lacks
    missing = [t for t in tags if t != strongest]  # the most obvious tag left out
    task_ids = _import(ls, setup.project_id, [GNOME, GNOME + " ", GNOME + "  "])
    for task_id, given in zip(task_ids, [spurious, missing, tags], strict=True):
        ls.request("POST", f"/api/tasks/{task_id}/annotations/", {"result": _choices(given)})

    def data(task_id: int) -> dict[str, Any]:
        task: dict[str, Any] = ls.request("GET", f"/api/tasks/{task_id}")
        return task

    wait_until(
        lambda: all("labelwatch_score" in data(t)["data"] for t in task_ids),
        what="labelwatch_score on all three tasks",
        timeout=30,
        interval=0.5,
    )
    first, second, third = (data(t) for t in task_ids)
    assert first["data"]["labelwatch_flagged"] and "spurious" in first["data"]["labelwatch_issues"]
    assert absent in first["data"]["labelwatch_issues"]
    assert second["data"]["labelwatch_flagged"] and strongest in second["data"]["labelwatch_issues"]
    assert not third["data"]["labelwatch_flagged"]
    assert third["data"]["labelwatch_score"] > 0.5
    assert third["data"]["labelwatch_score"] > max(
        first["data"]["labelwatch_score"], second["data"]["labelwatch_score"]
    )
    version = server.pipeline.model_version
    for task, want_in, want_out in ((first, None, absent), (second, strongest, None)):
        preds = ls.request("GET", f"/api/predictions/?task={task['id']}")
        ours = [p for p in preds if p["model_version"] == version and p["mislabeling"] > 0]
        assert len(ours) == 1
        suggested = ours[0]["result"][0]["value"]["choices"]
        assert want_in is None or want_in in suggested
        assert want_out is None or want_out not in suggested
        assert ours[0]["score"] == pytest.approx(1 - task["data"]["labelwatch_score"], abs=1e-4)
    third_preds = ls.request("GET", f"/api/predictions/?task={task_ids[2]}")
    assert [p for p in third_preds if p["mislabeling"] > 0] == []
    # Label Studio itself asked the connected ML backend (/predict) for a pre-annotation
    pre = [p for p in third_preds if p["model_version"] == version]
    assert pre and "uitoolkit::gtk" in pre[0]["result"][0]["value"]["choices"]
    # the flags also went to the outbox, with the Label Studio ids as metadata
    assert server.delivery is not None
    flags = server.delivery.outbox.flags(limit=1000)
    ours_flags = [f for f in flags if f.metadata.get("ls_task") in {str(t) for t in task_ids}]
    assert {f.metadata["ls_task"] for f in ours_flags} == {str(task_ids[0]), str(task_ids[1])}
    assert all(f.text == GNOME or f.text.startswith(GNOME) for f in ours_flags)


def test_updated_annotation_is_rescored_without_a_duplicate_prediction(setup: Setup) -> None:
    ls, server = setup.ls, setup.server
    tags, row = _model_tags(server, NETWORK)
    names = server.pipeline.spec.class_names
    absent = names[int(np.argmin(row))]
    [task_id] = _import(ls, setup.project_id, [NETWORK])
    ann = ls.request(
        "POST", f"/api/tasks/{task_id}/annotations/", {"result": _choices([*tags, absent])}
    )
    wait_until(
        lambda: (
            ls.request("GET", f"/api/tasks/{task_id}")["data"].get("labelwatch_flagged") is True
        ),
        what="flagged annotation written back",
        timeout=30,
        interval=0.5,
    )
    ls.request("PATCH", f"/api/annotations/{ann['id']}/", {"result": _choices(tags)})
    wait_until(
        lambda: (
            ls.request("GET", f"/api/tasks/{task_id}")["data"].get("labelwatch_flagged") is False
        ),
        what="the corrected annotation re-scored as fine",
        timeout=30,
        interval=0.5,
    )
    preds = ls.request("GET", f"/api/predictions/?task={task_id}")
    assert len([p for p in preds if p["mislabeling"] > 0]) == 1


def test_webhook_with_a_bad_or_missing_secret_is_refused(setup: Setup) -> None:
    body = {"action": "ANNOTATION_CREATED", "annotation": {}, "task": {}}
    assert _post(setup.http + "/webhook", body, {SECRET_HEADER: "wrong"})[0] == 401
    assert _post(setup.http + "/webhook", body, {SECRET_HEADER: SECRET[:-1]})[0] == 401
    assert _post(setup.http + "/webhook", body)[0] == 401
    status, answer = _post(setup.http + "/webhook", body, {SECRET_HEADER: SECRET})
    assert status == 400 and "data" in answer["error"]


def test_ml_backend_predicts_in_the_labeling_config_format(setup: Setup) -> None:
    with urllib.request.urlopen(setup.http + "/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "UP"
    project = setup.ls.request("GET", f"/api/projects/{setup.project_id}")
    version = setup.server.pipeline.model_version
    status, setup_answer = _post(
        setup.http + "/setup", {"project": str(setup.project_id), "schema": project["label_config"]}
    )
    assert status == 200 and setup_answer == {"model_version": version}
    tasks = [{"id": 1, "data": {"text": GNOME}}, {"id": 2, "data": {"text": PYTHON}}]
    status, answer = _post(
        setup.http + "/predict",
        {"tasks": tasks, "label_config": project["label_config"], "project": "1.0"},
    )
    assert status == 200
    assert len(answer["results"]) == 2
    gnome = answer["results"][0]
    assert gnome["model_version"] == version
    [region] = gnome["result"]
    assert (region["from_name"], region["to_name"], region["type"]) == ("labels", "text", "choices")
    assert "uitoolkit::gtk" in region["value"]["choices"]
    assert "implemented-in::python" in answer["results"][1]["result"][0]["value"]["choices"]
    assert 0.5 <= gnome["score"] <= 1.0
    assert _post(setup.http + "/predict", {"tasks": [{"id": 1, "data": {}}]})[0] == 400


def test_parse_event_ignores_other_actions_and_collects_tags() -> None:
    mapping = ProjectMapping(text_key="body", choices_name="tags")
    assert parse_event({"action": "PROJECT_UPDATED"}, mapping, ["a", "b"]) is None
    event = parse_event(
        {
            "action": "ANNOTATION_UPDATED",
            "project": {"id": 7},
            "task": {"id": 3, "data": {"body": "hello"}},
            "annotation": {
                "id": 11,
                "completed_by": 5,
                "updated_at": "2026-01-01T00:00:00Z",
                "result": [
                    {"from_name": "tags", "to_name": "t", "value": {"choices": ["b", "zzz"]}},
                    {"from_name": "other", "to_name": "t", "value": {"choices": ["a"]}},
                ],
            },
        },
        mapping,
        ["a", "b"],
    )
    assert event is not None
    assert event.example.labels.tolist() == [False, True]
    assert event.unknown_tags == ("zzz",)
    assert event.example.annotator_id == "5"
    assert event.example.metadata["ls_annotation"] == "11"
    assert (event.project_id, event.task_id, event.to_name) == (7, 3, "t")


def test_write_back_waits_for_label_studio_to_return(setup: Setup) -> None:
    """Label Studio stopped during write-back: the results arrive after it returns."""
    ls, server = setup.ls, setup.server
    [task_id] = _import(ls, setup.project_id, [PYTHON])
    task = ls.request("GET", f"/api/tasks/{task_id}")
    ls.stop()
    try:
        payload = {
            "action": "ANNOTATION_CREATED",
            "project": {"id": setup.project_id},
            "task": {"id": task_id, "data": task["data"], "project": setup.project_id},
            "annotation": {"id": 999_000 + task_id, "completed_by": 1, "result": _choices([])},
        }
        status, _ = _post(setup.http + "/webhook", payload, {SECRET_HEADER: SECRET})
        assert status == 202
        assert server.label_studio_http is not None
        processor = server.label_studio_http.processor
        wait_until(lambda: processor.pending_writes == 1, what="a pending write-back", timeout=15)
    finally:
        ls.start(120)
    wait_until(
        lambda: "labelwatch_score" in ls.request("GET", f"/api/tasks/{task_id}")["data"],
        what="write-back after Label Studio returned",
        timeout=30,
        interval=0.5,
    )
    done = ls.request("GET", f"/api/tasks/{task_id}")
    assert done["data"]["labelwatch_flagged"] is True  # no tags at all: missing ones flagged
    assert processor.pending_writes == 0


def test_per_project_mapping_file_picks_text_key_and_choices(tmp_path: Path) -> None:
    path = tmp_path / "projects.json"
    path.write_text(json.dumps({"projects": {"7": {"text_key": "body", "choices_name": "tags"}}}))
    mappings = load_mappings(path, ProjectMapping())
    assert mappings.for_project(7) == ProjectMapping("body", "tags")
    assert mappings.for_project(8) == ProjectMapping()
    payload = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 7},
        "task": {"id": 1, "data": {"body": "x"}},
        "annotation": {"id": 2, "result": [{"from_name": "tags", "value": {"choices": ["a"]}}]},
    }
    event = parse_event(payload, mappings, ["a"])
    assert event is not None and event.example.labels.tolist() == [True]
    assert event.choices_name == "tags"
    path.write_text(json.dumps({"projects": {"seven": {}}}))
    with pytest.raises(ValueError, match="numeric id"):
        load_mappings(path, ProjectMapping())


def test_unreadable_mapping_file_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with (
        pytest.raises(StartupError, match=r"bad\.json"),
        running_server(http_port=free_port(), ls_projects=tmp_path / "bad.json"),
    ):
        pass
