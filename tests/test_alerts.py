"""The shipped Prometheus alerting rules and config: valid, and unit-tested with promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from support_tools import REPO, require_tool

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_alert_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_shipped_prometheus_config_is_valid_and_loads_the_alerts() -> None:
    result = _promtool("check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = _load(PROMETHEUS_DIR / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    [job] = config["scrape_configs"]
    assert job["job_name"] == "labelwatch"  # the alerts and the dashboard select job="labelwatch"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9464"]


def test_every_alert_is_shown_firing_in_a_unit_test() -> None:
    rules = [r for g in _load(ALERTS)["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    fired = {
        case["alertname"]
        for test in _load(ALERTS_TEST)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert names - fired == set(), f"alerts never shown firing in {ALERTS_TEST.name}"
    assert fired <= names


def test_every_alert_has_severity_summary_and_description() -> None:
    for group in _load(ALERTS)["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert rule["annotations"]["description"], rule["alert"]


def test_alerts_cover_the_required_conditions() -> None:
    names = {r["alert"] for g in _load(ALERTS)["groups"] for r in g["rules"]}
    assert {
        "LabelwatchDriftHigh",
        "LabelwatchFlagRateSpike",
        "LabelwatchSinkBacklogGrowing",
        "LabelwatchSinkOldestPendingTooOld",
        "LabelwatchHighErrorRatio",
        "LabelwatchHighLatencyP99",
        "LabelwatchModelNotLoaded",
        "LabelwatchTargetDown",
    } <= names
