"""Label Studio, both ways, against a real Label Studio (see support_delivery.label_studio).

One Label Studio and one labelwatch (in-process, default text model, --http-port)
serve the whole module. The project is connected with `labelwatch label-studio
connect`; annotations are submitted through Label Studio's API as an annotator
would, and Label Studio's own webhooks bring them to labelwatch.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import doctest
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import support_delivery
from labelwatch.cli import main
from labelwatch.errors import StartupError
from labelwatch.flag_record import dedupe_key
from labelwatch.labelstudio import http as ls_http
from labelwatch.labelstudio import writeback as ls_writeback
from labelwatch.labelstudio.client import LabelStudioClient
from labelwatch.labelstudio.http import SECRET_HEADER
from labelwatch.labelstudio.webhook import ProjectMapping, load_mappings, parse_event
from labelwatch.labelstudio.writeback import TaskWriter
from labelwatch.labelstudio.writequeue import WriteBack, WriteBackQueue
from labelwatch.metrics import label_studio as ls_metrics
from labelwatch.outbox import Outbox
from labelwatch.scoring import FilterBy
from labelwatch.server import RunningServer
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_delivery import LabelStudio, label_studio, wait_until
from support_server import _env as support_env
from support_server import running_server, target_of

# slow: a real Label Studio (first start on a fresh database 60-90 s)
pytestmark = pytest.mark.slow

SECRET = "labelwatch-test-webhook-secret-0123456789"
ML_AUTH = {"Authorization": "Basic " + base64.b64encode(f"labelwatch:{SECRET}".encode()).decode()}
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


def _ls_server_settings(ls: LabelStudio, tmp: Path) -> dict[str, Any]:
    """Settings of a labelwatch with webhooks, ML backend and write-back to ``ls``."""
    secret_file = tmp / "secret"
    secret_file.write_text(SECRET)
    token_file = tmp / "token"
    token_file.write_text(ls.token)
    return {
        # the Label Studio mechanics are tested on the rule that flags every confident
        # disagreement (the default budget rule would keep only the likeliest errors)
        "filter_by": FilterBy.CONFIDENT_LEARNING,
        "http_port": 0,  # any free port: read back as server.http_port
        "ls_webhook_secret_file": secret_file,
        "ls_writeback_url": ls.url,
        "label_studio_token_file": token_file,
        "sink_retry_initial_seconds": 0.5,
        "sink_retry_max_seconds": 2.0,
    }


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    ls = _ls_with_local_calls()
    with tempfile.TemporaryDirectory(prefix="labelwatch-ls-live-") as tmp:
        secret_file = Path(tmp) / "secret"
        with running_server(**_ls_server_settings(ls, Path(tmp))) as server:
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
    """The tags the gRPC API suggests for ``text`` given no tags, and the probabilities."""
    with grpc.insecure_channel(target_of(server)) as channel:
        request = pb.ScoreRequest(
            examples=[pb.Example(id="suggest", text=text)], include_probabilities=True
        )
        [result] = pb_grpc.LabelQualityStub(channel).Score(request, timeout=30).results
    return list(result.suggested_labels), np.array(result.probabilities)


def _registry_value(server: RunningServer, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


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
    assert set(mine[0]["actions"]) == {
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATIONS_DELETED",
    }
    ml = setup.ls.request("GET", f"/api/ml/?project={setup.project_id}")
    assert [b["url"].rstrip("/") for b in ml] == [setup.http]
    assert ml[0]["auth_method"] == "BASIC_AUTH" and ml[0]["basic_auth_user"] == "labelwatch"
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
        # the review prediction's score: the annotation's highest error probability
        worst = str(task["data"]["labelwatch_annotation"])
        chance = task["data"]["labelwatch_annotations"][worst]["error_probability"]
        assert chance is not None
        assert ours[0]["score"] == pytest.approx(chance, abs=1e-4)
    third_preds = ls.request("GET", f"/api/predictions/?task={task_ids[2]}")
    assert [p for p in third_preds if p["mislabeling"] > 0] == []
    # Label Studio itself asked the connected ML backend (/predict) for a pre-annotation
    # (with Basic auth: /predict refuses requests without the secret)
    pre = [p for p in third_preds if p["model_version"] == version]
    assert pre and "uitoolkit::gtk" in pre[0]["result"][0]["value"]["choices"]
    assert sorted(pre[0]["result"][0]["value"]["choices"]) == sorted(tags)  # = gRPC's suggestion
    # the flags also went to the outbox, with the Label Studio ids as metadata
    assert server.delivery is not None
    flags = server.delivery.outbox.flags(limit=1000)
    ours_flags = [f for f in flags if f.metadata.get("ls_task") in {str(t) for t in task_ids}]
    assert {f.metadata["ls_task"] for f in ours_flags} == {str(task_ids[0]), str(task_ids[1])}
    assert all(f.text == GNOME or f.text.startswith(GNOME) for f in ours_flags)
    # the HTTP port's metrics saw it all
    assert (
        _registry_value(server, "labelwatch_http_requests_total", path="/webhook", status="202")
        >= 3
    )
    assert (
        _registry_value(server, "labelwatch_http_requests_total", path="/predict", status="200")
        >= 1
    )
    assert _registry_value(server, "labelwatch_ls_annotations_total", outcome="scored") >= 3
    assert _registry_value(server, "labelwatch_ls_annotation_processing_seconds_count") >= 3
    assert _registry_value(server, "labelwatch_ls_writebacks_total", outcome="written") >= 3
    assert server.metrics.registry.get_sample_value("labelwatch_ls_queue_depth") == 0


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

    # the suggestion made for the first version no longer applies: it is removed (after the
    # task's data is written: wait for the removal rather than race it)
    def review_predictions() -> list[dict[str, Any]]:
        preds = ls.request("GET", f"/api/predictions/?task={task_id}")
        return [p for p in preds if p["mislabeling"] > 0]

    wait_until(lambda: review_predictions() == [], what="the stale suggestion removed", timeout=30)
    assert review_predictions() == []
    data = ls.request("GET", f"/api/tasks/{task_id}")["data"]
    assert list(data["labelwatch_annotations"]) == [str(ann["id"])]


def test_webhook_with_a_bad_or_missing_secret_is_refused(setup: Setup) -> None:
    body = {"action": "ANNOTATION_CREATED", "annotation": {}, "task": {}}
    refused = _registry_value(
        setup.server, "labelwatch_http_requests_total", path="/webhook", status="401"
    )
    assert _post(setup.http + "/webhook", body, {SECRET_HEADER: "wrong"})[0] == 401
    assert _post(setup.http + "/webhook", body, {SECRET_HEADER: SECRET[:-1]})[0] == 401
    assert _post(setup.http + "/webhook", body)[0] == 401
    status, answer = _post(setup.http + "/webhook", body, {SECRET_HEADER: SECRET})
    assert status == 400 and "data" in answer["error"]
    assert (
        _registry_value(
            setup.server, "labelwatch_http_requests_total", path="/webhook", status="401"
        )
        == refused + 3
    )


def test_ml_backend_needs_the_secret_as_basic_auth_password(setup: Setup) -> None:
    body = {"tasks": [{"id": 1, "data": {"text": GNOME}}]}
    assert _post(setup.http + "/predict", body)[0] == 401
    wrong = base64.b64encode(b"labelwatch:not-the-secret").decode()
    assert _post(setup.http + "/predict", body, {"Authorization": f"Basic {wrong}"})[0] == 401
    assert _post(setup.http + "/setup", {}, {"Authorization": "Bearer " + SECRET})[0] == 401
    assert _post(setup.http + "/predict", body, ML_AUTH)[0] == 200
    with urllib.request.urlopen(setup.http + "/health", timeout=10) as response:
        assert response.status == 200  # health stays open for probes


def test_ml_backend_predicts_in_the_labeling_config_format(setup: Setup) -> None:
    with urllib.request.urlopen(setup.http + "/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "UP"
    project = setup.ls.request("GET", f"/api/projects/{setup.project_id}")
    version = setup.server.pipeline.model_version
    status, setup_answer = _post(
        setup.http + "/setup",
        {"project": str(setup.project_id), "schema": project["label_config"]},
        ML_AUTH,
    )
    assert status == 200 and setup_answer == {"model_version": version}
    tasks = [{"id": 1, "data": {"text": GNOME}}, {"id": 2, "data": {"text": PYTHON}}]
    status, answer = _post(
        setup.http + "/predict",
        {"tasks": tasks, "label_config": project["label_config"], "project": "1.0"},
        ML_AUTH,
    )
    assert status == 200
    assert len(answer["results"]) == 2
    gnome = answer["results"][0]
    assert gnome["model_version"] == version
    [region] = gnome["result"]
    assert (region["from_name"], region["to_name"], region["type"]) == ("labels", "text", "choices")
    assert "uitoolkit::gtk" in region["value"]["choices"]
    assert "implemented-in::python" in answer["results"][1]["result"][0]["value"]["choices"]
    # the calibrated decision: exactly the gRPC API's suggested_labels for an untagged example
    for text, result in zip([GNOME, PYTHON], answer["results"], strict=True):
        assert sorted(result["result"][0]["value"]["choices"]) == sorted(
            _model_tags(setup.server, text)[0]
        )
    assert 0.5 <= gnome["score"] <= 1.0  # label quality of the suggested tags
    assert _post(setup.http + "/predict", {"tasks": [{"id": 1, "data": {}}]}, ML_AUTH)[0] == 400


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


def _webhook_payload(ls: LabelStudio, project_id: int, task_id: int, tags: list[str]) -> Any:
    """What Label Studio posts for a new annotation of ``task_id`` (read while it is up)."""
    task = ls.request("GET", f"/api/tasks/{task_id}")
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": project_id},
        "task": {"id": task_id, "data": task["data"], "project": project_id},
        "annotation": {
            "id": 900_000 + task_id,
            "completed_by": 1,
            "updated_at": "2026-01-01T00:00:00.000000Z",
            "result": _choices(tags),
        },
    }


def test_write_back_survives_label_studio_down_and_a_labelwatch_restart(setup: Setup) -> None:
    """Label Studio stopped during write-back: the results arrive after it returns, even
    though the labelwatch that scored them was restarted in between (the queue is durable).
    """
    ls = setup.ls
    flagged_id, clean_id = _import(ls, setup.project_id, [PYTHON, NETWORK])
    clean_tags, _ = _model_tags(setup.server, NETWORK)
    payloads = [
        _webhook_payload(ls, setup.project_id, flagged_id, []),  # no tags: missing ones
        _webhook_payload(ls, setup.project_id, clean_id, clean_tags),
    ]
    with tempfile.TemporaryDirectory(prefix="labelwatch-ls-restart-") as tmp:
        settings = _ls_server_settings(ls, Path(tmp))
        settings["data_dir"] = Path(tmp) / "data"
        ls.stop()
        try:
            with running_server(**settings) as first:
                assert first.label_studio_http is not None
                http = f"http://127.0.0.1:{first.label_studio_http.port}"
                for payload in payloads:
                    status, _ = _post(http + "/webhook", payload, {SECRET_HEADER: SECRET})
                    assert status == 202
                wait_until(
                    lambda: (
                        _registry_value(first, "labelwatch_ls_writebacks_total", outcome="retry")
                        >= 1
                        and _registry_value(first, "labelwatch_ls_writeback_pending") == 2
                    ),
                    what="two write-backs waiting for Label Studio",
                    timeout=30,
                )
            # labelwatch is gone; the writes wait in its outbox file
            outbox = Outbox(settings["data_dir"] / "outbox.sqlite3", create=False)
            try:
                assert WriteBackQueue(outbox).pending()[0] == 2
            finally:
                outbox.close()
        finally:
            ls.start(120)
        with running_server(**settings) as second:

            def data(task_id: int) -> dict[str, Any]:
                task: dict[str, Any] = ls.request("GET", f"/api/tasks/{task_id}")
                return dict(task["data"])

            wait_until(
                lambda: all("labelwatch_score" in data(t) for t in (flagged_id, clean_id)),
                what="both write-backs after Label Studio and labelwatch returned",
                timeout=60,
                interval=0.5,
            )
            wait_until(
                lambda: _registry_value(second, "labelwatch_ls_writeback_pending") == 0,
                what="the write-back queue to empty",
                timeout=30,
            )
        flagged, clean = data(flagged_id), data(clean_id)
        assert flagged["labelwatch_flagged"] is True and "missing" in flagged["labelwatch_issues"]
        assert clean["labelwatch_flagged"] is False and clean["labelwatch_score"] > 0.5
        preds = ls.request("GET", f"/api/predictions/?task={flagged_id}")
        assert len([p for p in preds if p["mislabeling"] > 0]) == 1


def test_write_back_is_idempotent_per_annotation_version(setup: Setup) -> None:
    ls, server = setup.ls, setup.server
    [task_id] = _import(ls, setup.project_id, [PYTHON + " again"])
    tags, _ = _model_tags(server, PYTHON)
    write = WriteBack(
        project_id=setup.project_id,
        task_id=task_id,
        annotation_id=777_000 + task_id,
        version="2026-01-01T00:00:00Z",
        label_quality=0.125,
        flagged=True,
        issues=((tags[0], "missing", 0.99),),
        suggested=tuple(tags),
        model_version=server.pipeline.model_version,
        choices_name="labels",
        to_name="text",
    )
    writer = TaskWriter(LabelStudioClient(ls.url, ls.token))

    def state() -> tuple[dict[str, Any], list[Any]]:
        task = ls.request("GET", f"/api/tasks/{task_id}")
        preds = ls.request("GET", f"/api/predictions/?task={task_id}")
        ours = sorted(
            (p["id"], p["score"], json.dumps(p["result"])) for p in preds if p["mislabeling"] > 0
        )
        return task["data"], ours

    writer(write)
    once = state()
    writer(write)
    writer(write)
    assert state() == once  # same data, the same single prediction (same id)
    assert len(once[1]) == 1 and once[0]["labelwatch_score"] == 0.125
    # a second annotator's better annotation: the task keeps the worst one's score and prediction
    other = dataclasses.replace(
        write, annotation_id=write.annotation_id + 1, label_quality=0.9, flagged=False, issues=()
    )
    writer(other)
    data, preds = state()
    assert data["labelwatch_score"] == 0.125 and data["labelwatch_flagged"] is True
    assert preds == once[1]
    # the first annotation corrected (a new version): no flag left, no prediction left
    fixed = dataclasses.replace(
        write, version="2026-01-02T00:00:00Z", label_quality=0.8, flagged=False, issues=()
    )
    writer(fixed)
    data, preds = state()
    assert data["labelwatch_score"] == 0.8 and data["labelwatch_flagged"] is False
    assert preds == []


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
        running_server(http_port=0, ls_projects=tmp_path / "bad.json"),
    ):
        pass


def _screenshot_script() -> Any:
    path = Path(__file__).resolve().parent.parent / "scripts" / "screenshot_label_studio.py"
    spec = importlib.util.spec_from_file_location("screenshot_label_studio", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_screenshot_script_seeds_annotations_and_sorts_the_data_manager_by_score(
    setup: Setup,
) -> None:
    """Everything scripts/screenshot_label_studio.py does but the browser."""
    script = _screenshot_script()
    ls = script.Ls(setup.ls.url, setup.ls.token)
    examples = script.EXAMPLES[:4]
    task_ids = script.seed(ls, setup.project_id, setup.http, SECRET, examples)
    view_id = script.sorted_view(ls, setup.project_id, "worst first (test)")
    query = f"/api/tasks?view={view_id}&project={setup.project_id}&page_size=200&fields=all"
    listed = setup.ls.request("GET", query)["tasks"]
    scores = [t["data"]["labelwatch_score"] for t in listed if "labelwatch_score" in t["data"]]
    assert scores == sorted(scores)  # the tab shows the worst annotations first
    seeded = {t["id"]: t["data"] for t in listed if t["id"] in task_ids}
    assert len(seeded) == len(examples)
    for task_id, (_, mistake) in zip(task_ids, examples, strict=True):
        assert seeded[task_id]["labelwatch_flagged"] is (mistake != "ok"), (mistake, seeded)


@pytest.mark.parametrize(
    "module", [ls_http, ls_metrics, ls_writeback], ids=lambda m: m.__name__.rsplit(".")[-1]
)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def test_screenshot_script_docstring_examples_run() -> None:
    result = doctest.testmod(_screenshot_script())
    assert result.attempted > 0 and result.failed == 0


def test_events_answered_202_survive_a_kill_9_and_are_all_scored_and_written_back(
    setup: Setup,
) -> None:
    """Scoring blocked while events arrive, kill -9 after every 202: a new labelwatch on the
    same outbox scores all of them (the update after the creation) and writes them back."""
    ls = setup.ls
    texts = [GNOME + " (k9)", NETWORK + " (k9)", PYTHON + " (k9)"]
    task_ids = _import(ls, setup.project_id, texts)
    payloads = [_webhook_payload(ls, setup.project_id, t, []) for t in task_ids]
    fixed_tags, _ = _model_tags(setup.server, texts[0])
    update = json.loads(json.dumps(payloads[0]))
    update["action"] = "ANNOTATION_UPDATED"
    update["annotation"]["updated_at"] = "2026-01-02T00:00:00.000000Z"
    update["annotation"]["result"] = _choices(fixed_tags)
    with tempfile.TemporaryDirectory(prefix="labelwatch-ls-kill9-") as tmp:
        settings = _ls_server_settings(ls, Path(tmp))
        settings["data_dir"] = Path(tmp) / "data"
        child_settings = json.dumps(
            {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}
        )
        script = Path(__file__).with_name("support_ls_blocked_child.py")
        log_path = Path(tmp) / "child.log"
        with log_path.open("w") as log_file:
            child = subprocess.Popen(
                [sys.executable, str(script), child_settings],
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                env=support_env(),
            )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert "listening on" in line, log_path.read_text()[-3000:]
            http = f"http://127.0.0.1:{int(line.rsplit(':', 1)[1])}"
            for payload in [*payloads, update]:
                status, answer = _post(http + "/webhook", payload, {SECRET_HEADER: SECRET})
                assert status == 202, answer
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            if child.stdout is not None:
                child.stdout.close()
        outbox = Outbox(settings["data_dir"] / "outbox.sqlite3", create=False)
        try:
            assert outbox.ls_event_backlog()[0] == 4  # all stored, none processed
        finally:
            outbox.close()
        with running_server(**settings) as second:

            def data(task_id: int) -> dict[str, Any]:
                task: dict[str, Any] = ls.request("GET", f"/api/tasks/{task_id}")
                return dict(task["data"])

            def first_is_updated() -> bool:
                entry = data(task_ids[0]).get("labelwatch_annotations", {})
                return (
                    entry.get(str(900_000 + task_ids[0]), {}).get("version")
                    == (update["annotation"]["updated_at"])
                )

            wait_until(
                lambda: first_is_updated() and all("labelwatch_score" in data(t) for t in task_ids),
                what="every event of the killed labelwatch written back",
                timeout=60,
                interval=0.5,
            )
            wait_until(
                lambda: (
                    _registry_value(second, "labelwatch_ls_writeback_pending") == 0
                    and second.metrics.registry.get_sample_value("labelwatch_ls_queue_depth") == 0
                ),
                what="the inbox and the write-back queue to empty",
                timeout=30,
            )
            assert _registry_value(second, "labelwatch_ls_annotations_total", outcome="scored") == 4
        first, *others = (data(t) for t in task_ids)
        assert first["labelwatch_flagged"] is False
        assert all(
            d["labelwatch_flagged"] is True and "missing" in d["labelwatch_issues"] for d in others
        )
        for task_id, want in zip(task_ids, [0, 1, 1], strict=True):
            preds = ls.request("GET", f"/api/predictions/?task={task_id}")
            assert len([p for p in preds if p["mislabeling"] > 0]) == want


def test_a_deleted_annotation_leaves_the_task_summary_and_its_prediction(setup: Setup) -> None:
    ls, server = setup.ls, setup.server
    tags, row = _model_tags(server, NETWORK)
    absent = server.pipeline.spec.class_names[int(np.argmin(row))]
    [task_id] = _import(ls, setup.project_id, [NETWORK + " (deleted)"])
    bad = ls.request(
        "POST", f"/api/tasks/{task_id}/annotations/", {"result": _choices([*tags, absent])}
    )
    good = ls.request("POST", f"/api/tasks/{task_id}/annotations/", {"result": _choices(tags)})

    def data() -> dict[str, Any]:
        return dict(ls.request("GET", f"/api/tasks/{task_id}")["data"])

    wait_until(
        lambda: len(data().get("labelwatch_annotations", {})) == 2,
        what="both annotations written back",
        timeout=30,
        interval=0.5,
    )
    before = data()
    assert before["labelwatch_flagged"] is True and before["labelwatch_annotation"] == bad["id"]
    ls.request("DELETE", f"/api/annotations/{bad['id']}/")
    wait_until(
        lambda: list(data().get("labelwatch_annotations", {})) == [str(good["id"])],
        what="the deleted annotation's entry removed",
        timeout=30,
        interval=0.5,
    )
    after = data()
    assert after["labelwatch_flagged"] is False and after["labelwatch_annotation"] == good["id"]
    assert after["labelwatch_score"] == after["labelwatch_annotations"][str(good["id"])]["score"]
    preds = ls.request("GET", f"/api/predictions/?task={task_id}")
    assert [p for p in preds if p["mislabeling"] > 0] == []
    assert _registry_value(server, "labelwatch_ls_annotations_total", outcome="deleted") >= 1


def test_updating_a_flagged_annotation_records_implicit_verdicts(setup: Setup) -> None:
    """Updated to the suggestion: CONFIRMED; updated with the flagged tag kept: REJECTED."""
    ls, server = setup.ls, setup.server
    names = server.pipeline.spec.class_names
    tags, row = _model_tags(server, GNOME)
    strongest = names[int(np.argmax(row))]
    absent = names[int(np.argmin(row))]
    missing = [t for t in tags if t != strongest]
    spurious = [*tags, absent]
    fixed_id, kept_id = _import(ls, setup.project_id, [GNOME + " (v1)", GNOME + " (v2)"])
    fixed = ls.request("POST", f"/api/tasks/{fixed_id}/annotations/", {"result": _choices(missing)})
    kept = ls.request("POST", f"/api/tasks/{kept_id}/annotations/", {"result": _choices(spurious)})

    def flagged(task_id: int) -> bool:
        return ls.request("GET", f"/api/tasks/{task_id}")["data"].get("labelwatch_flagged") is True

    wait_until(
        lambda: flagged(fixed_id) and flagged(kept_id),
        what="both first versions flagged and written back",
        timeout=30,
        interval=0.5,
    )
    ls.request("PATCH", f"/api/annotations/{fixed['id']}/", {"result": _choices(tags)})
    ls.request("PATCH", f"/api/annotations/{kept['id']}/", {"result": _choices(spurious)})
    version = server.pipeline.model_version
    fixed_flag = dedupe_key(
        f"ls-{setup.project_id}-{fixed_id}-{fixed['id']}",
        version,
        [t for t in missing if t in names],
    )
    kept_flag = dedupe_key(
        f"ls-{setup.project_id}-{kept_id}-{kept['id']}",
        version,
        [t for t in spurious if t in names],
    )
    assert server.delivery is not None
    outbox = server.delivery.outbox

    def verdict(flag_id: str, label: str) -> str | None:
        rows = outbox.verdicts_of([flag_id]).get(flag_id, [])
        return next((v.verdict for v in rows if v.label == label), None)

    wait_until(
        lambda: (
            verdict(fixed_flag, strongest) is not None and verdict(kept_flag, absent) is not None
        ),
        what="implicit verdicts on both updated annotations",
        timeout=30,
        interval=0.5,
    )
    assert verdict(fixed_flag, strongest) == "CONFIRMED"
    assert verdict(kept_flag, absent) == "REJECTED"
    (row_kept,) = [v for v in outbox.verdicts_of([kept_flag])[kept_flag] if v.label == absent]
    assert row_kept.source == "label-studio" and row_kept.reviewer.startswith("label-studio:")
    assert row_kept.kind == "spurious"
    confirmed = sum(
        sample.value
        for metric in server.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "labelwatch_flag_verdicts_total"
        and sample.labels["verdict"] == "CONFIRMED"
    )
    assert confirmed >= 1
