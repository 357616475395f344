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
TLS_OVERLAY = K8S / "tls"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
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


def test_server_pods_probe_grpc_health_and_run_locked_down() -> None:
    pod = _docs("StatefulSet")["spec"]["template"]["spec"]
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


def test_each_pod_keeps_its_outbox_on_its_own_persistent_volume_claim() -> None:
    servers = _docs("StatefulSet")
    pod = servers["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    [claim] = [
        t for t in servers["spec"]["volumeClaimTemplates"] if t["metadata"]["name"] == "outbox"
    ]
    assert mounts["/var/lib/labelwatch"] == "outbox"
    # not also a pod volume: that (an emptyDir) would shadow the claim and die with the pod
    assert "outbox" not in {v["name"] for v in pod["volumes"]}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    retention = servers["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert retention == {"whenScaled": "Retain", "whenDeleted": "Retain"}  # may hold flags
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]  # writable


def test_statefulset_is_governed_by_a_headless_service_selecting_its_pods() -> None:
    servers = _docs("StatefulSet")
    services = [
        doc
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == "Service"
    ]
    [governing] = [s for s in services if s["metadata"]["name"] == servers["spec"]["serviceName"]]
    assert governing["spec"]["clusterIP"] == "None"
    pod_labels = servers["spec"]["template"]["metadata"]["labels"]
    assert governing["spec"]["selector"].items() <= pod_labels.items()


def test_pods_run_one_worker_so_the_annotated_metrics_port_sees_every_call() -> None:
    # worker i serves metrics on --metrics-port + i; the prometheus.io/port annotation names
    # one port, so a pod with --workers 2 would hide half of its calls from Prometheus
    settings = _docs("ConfigMap")["data"]
    assert settings.get("LABELWATCH_WORKERS", "1") == "1"
    [container] = _docs("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert not any("--workers" in str(arg) for arg in container.get("args", []))


def _json_patch(document: Any, operations: list[dict[str, Any]]) -> Any:
    """Apply RFC 6902 ``add``/``replace`` operations (what the TLS overlay uses)."""
    for op in operations:
        *parents, last = [part for part in op["path"].split("/")[1:]]
        node = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "add" and isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), op["value"])
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace":
                assert last in node, op["path"]
            node[last] = op["value"]
        else:
            raise AssertionError(f"unsupported op {op['op']}")
    return document


def test_tls_overlay_probes_with_the_healthcheck_and_is_valid(tmp_path: Path) -> None:
    overlay = yaml.safe_load((TLS_OVERLAY / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../"]
    [patch] = overlay["patches"]
    assert patch["target"]["kind"] == "StatefulSet"
    operations = yaml.safe_load((TLS_OVERLAY / patch["path"]).read_text())
    patched = _json_patch(_docs("StatefulSet"), operations)
    pod = patched["spec"]["template"]["spec"]
    [container] = pod["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        # gRPC probes cannot do TLS: each must run the in-container check instead
        assert "grpc" not in container[probe], probe
        assert container[probe]["exec"]["command"][:3] == ["python", "-m", "labelwatch.healthcheck"]
    assert container["readinessProbe"]["exec"]["command"][-2:] == [
        "--service",
        "labelwatch.v1.LabelQuality",
    ]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secret = next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]
    assert env["LABELWATCH_TLS_CERT"] == f"{mounts['tls']}/tls.crt"
    assert env["LABELWATCH_TLS_KEY"] == f"{mounts['tls']}/tls.key"
    assert secret["defaultMode"] & 0o044 == 0o040  # group (fsGroup 10001) reads, others do not
    validate = require_tool("kubernetes-validate", PIP_DEPS_HINT)
    manifest = tmp_path / "statefulset-tls.yaml"
    manifest.write_text(yaml.safe_dump(patched))
    result = _run(validate, "--strict", manifest)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_for_workers_scrapes_one_port_per_worker() -> None:
    path = PROMETHEUS_DIR / "prometheus-workers.yml"
    result = _run(require_tool("promtool"), "check", "config", path)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    [job] = config["scrape_configs"]
    assert job["job_name"] == "labelwatch"
    groups = job["static_configs"]
    assert [g["targets"] for g in groups] == [[f"127.0.0.1:{9464 + i}"] for i in range(len(groups))]
    assert [g["labels"]["worker"] for g in groups] == [str(i) for i in range(len(groups))]
    assert len(groups) >= 2


def test_termination_grace_covers_the_server_drain() -> None:
    pod = _docs("StatefulSet")["spec"]["template"]["spec"]
    grace = float(_docs("ConfigMap")["data"]["LABELWATCH_GRACE_SECONDS"])
    assert grace < pod["terminationGracePeriodSeconds"] <= grace + 10


def test_service_exposes_grpc_and_metrics_ports_of_the_pod() -> None:
    service = _docs("Service")
    [container] = _docs("StatefulSet")["spec"]["template"]["spec"]["containers"]
    pod_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert pod_ports == {"grpc": 50051, "metrics": 9464}
    assert {p["targetPort"] for p in ports.values()} == set(pod_ports)
    annotations = _docs("StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(pod_ports["metrics"])


def test_selectors_of_service_pdb_and_hpa_match_the_statefulset() -> None:
    servers = _docs("StatefulSet")
    pod_labels = servers["spec"]["template"]["metadata"]["labels"]
    assert servers["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert _docs("Service")["spec"]["selector"].items() <= pod_labels.items()
    pdb_selector = _docs("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert pdb_selector.items() <= pod_labels.items()
    target = _docs("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", servers["metadata"]["name"])


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
