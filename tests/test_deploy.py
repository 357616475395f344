"""Deployment files: Kubernetes manifests, Dockerfile and Grafana dashboard, checked offline."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support_tools import (
    PIP_DEPS_HINT,
    REPO,
    alert_exprs,
    dashboard,
    dashboard_exprs,
    require_tool,
)

K8S = REPO / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
METRICS_DOC = REPO / "docs" / "metrics.md"


def _run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=120, check=False
    )


def _docs(kind: str) -> dict[str, Any]:
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind:
                return dict(doc)
    raise AssertionError(f"no {kind} in {K8S}")


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(manifest: Path) -> None:
    validate = require_tool("kubernetes-validate", PIP_DEPS_HINT)
    result = _run(validate, "--strict", manifest)
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_yaml_passes_yamllint() -> None:
    yamllint = require_tool("yamllint", PIP_DEPS_HINT)
    result = _run(yamllint, "--strict", "-c", REPO / "deploy" / ".yamllint", REPO / "deploy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint() -> None:
    hadolint = require_tool("hadolint", PIP_DEPS_HINT)
    result = _run(hadolint, REPO / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_deployment_probes_grpc_health_and_runs_locked_down() -> None:
    pod = _docs("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    assert container["readinessProbe"]["grpc"]["service"] == "labelwatch.v1.LabelQuality"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["resources"]["requests"] and container["resources"]["limits"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "/var/lib/labelwatch" in mounts  # the outbox
    assert "/models" in mounts
    assert "/tmp" in mounts  # writable scratch under a read-only root


def test_termination_grace_covers_the_server_drain() -> None:
    pod = _docs("Deployment")["spec"]["template"]["spec"]
    grace = float(_docs("ConfigMap")["data"]["LABELWATCH_GRACE_SECONDS"])
    assert grace < pod["terminationGracePeriodSeconds"] <= grace + 10


def test_service_exposes_grpc_and_metrics_ports_of_the_pod() -> None:
    service = _docs("Service")
    [container] = _docs("Deployment")["spec"]["template"]["spec"]["containers"]
    pod_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert pod_ports == {"grpc": 50051, "metrics": 9464}
    assert {p["targetPort"] for p in ports.values()} == set(pod_ports)
    annotations = _docs("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(pod_ports["metrics"])


def test_selectors_of_service_pdb_and_hpa_match_the_deployment() -> None:
    deployment = _docs("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert _docs("Service")["spec"]["selector"].items() <= pod_labels.items()
    pdb_selector = _docs("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert pdb_selector.items() <= pod_labels.items()
    target = _docs("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_dockerfile_runs_the_server_as_non_root_with_the_documented_interface() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:\S+-slim", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS build$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS runtime$", text, re.M)
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert 'ENTRYPOINT ["labelwatch"]' in text
    assert 'CMD ["serve", "--host", "0.0.0.0"]' in text
    assert re.search(r"^EXPOSE 50051 9464$", text, re.M)
    assert "labelwatch.healthcheck" in text
    assert '"/src[server]"' in text


def test_dashboard_panels_are_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "labelwatch" and board["id"] is None
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            refs = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert refs <= variables, (panel["title"], refs)


def test_dashboard_covers_the_required_views() -> None:
    exprs = "\n".join(dashboard_exprs())
    for needed in (
        "grpc_server_handled_total",  # throughput
        "histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket",
        "labelwatch_class_flag_rate",  # flag rate by class
        "labelwatch_drift_ratio",
        "labelwatch_outbox_pending",  # sink backlog
    ):
        assert needed in exprs, needed


_METRIC = re.compile(r"\b((?:labelwatch|grpc_server|process|python)_[a-z0-9_]+)")


def _base_name(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def test_dashboard_and_alerts_use_only_documented_metrics() -> None:
    documented = METRICS_DOC.read_text()
    used = {_base_name(m) for e in dashboard_exprs() + alert_exprs() for m in _METRIC.findall(e)}
    assert used
    missing = sorted(m for m in used if f"`{m}" not in documented)
    assert missing == [], f"not in docs/metrics.md: {missing}"


def test_scripts_pass_shellcheck() -> None:
    shellcheck = require_tool("shellcheck")
    scripts = [
        REPO / "scripts" / "ci_system_deps.sh",
        REPO / "scripts" / "container_build_and_run.sh",
        *sorted((REPO / "scripts" / "container").glob("*.sh")),
    ]
    result = subprocess.run(
        [shellcheck, "-x", *map(str, scripts)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
