"""Logs: key=value text unchanged; JSON with each field as its own key; secrets masked."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from labelwatch.logs import JsonFormatter, KeyValueFormatter
from support_server import _env


def _record(fmt: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("labelwatch.server", logging.INFO, "", 0, fmt, args, None)
    record.__dict__.update(extra)
    return record


def _json(record: logging.LogRecord) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(JsonFormatter().format(record))
    return parsed


def test_json_logs_carry_the_event_and_each_field_as_its_own_key() -> None:
    record = _record(
        "event=started address=%s:%d classes=%d model=%s ratio=%.2f", "127.0.0.1", 50051, 124,
        "m.onnx", 0.25, worker=1,
    )  # fmt: skip
    out = _json(record)
    assert out["event"] == "started"
    assert out["address"] == "127.0.0.1:50051"
    assert out["classes"] == 124  # numbers stay numbers
    assert out["model"] == "m.onnx"
    assert out["ratio"] == 0.25
    assert out["worker"] == 1  # extra= fields too
    assert "msg" not in out  # no key=value text left over
    assert (out["level"], out["logger"]) == ("info", "labelwatch.server")


def test_free_text_after_the_fields_is_the_json_msg_and_repr_strings_lose_their_quotes() -> None:
    out = _json(_record("event=score_failed code=%s error=%r: nak, retry in %ss", "X", "a b", 5))
    assert out["event"] == "score_failed" and out["code"] == "X" and out["error"] == "a b"
    assert out["msg"] == "nak, retry in 5s"


def test_pairs_passed_as_one_argument_become_fields() -> None:
    out = _json(_record("event=ls_annotation_not_scored %s error=%s", "task=3 annotation=9", "x"))
    assert out == {**out, "event": "ls_annotation_not_scored", "task": "3", "annotation": "9"}
    assert out["error"] == "x"


def test_a_field_named_like_the_envelope_does_not_overwrite_it() -> None:
    out = _json(_record("event=x level=%d msg=%s", 3, "y"))
    assert out["level"] == "info" and out["level_"] == 3 and out["msg_"] == "y"


def test_a_message_without_fields_is_kept_whole() -> None:
    out = _json(_record("plain text %d%%", 5))
    assert out["msg"] == "plain text 5%" and "event" not in out


def test_key_value_text_is_unchanged() -> None:
    line = KeyValueFormatter().format(_record("event=started port=%d: ready", 5, worker=2))
    expected = " level=info logger=labelwatch.server event=started port=5: ready worker=2"
    assert line.endswith(expected)


def test_the_json_config_event_has_every_setting_as_a_field_with_secrets_masked(
    tmp_path: Path,
) -> None:
    out = subprocess.run(
        [
            sys.executable, "-m", "labelwatch.cli", "serve", "--log-format", "json",
            "--thresholds", str(tmp_path / "missing.json"), "--data-dir", str(tmp_path),
            "--webhook-url", "https://user:hunter2@hooks.example/x?token=s3cr3t",
        ],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert out.returncode == 2  # the artifact is missing: start-up stops after the config
    records = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    [config] = [r for r in records if r.get("event") == "config"]
    assert config["webhook_url"] == "https://user:***@hooks.example/x?***"
    assert config["metrics_port"] == "9464" and config["http_port"] == "off"
    assert config["label_studio_project"] == "labelwatch flags"  # a value with a space
    assert "hunter2" not in out.stderr and "s3cr3t" not in out.stderr
