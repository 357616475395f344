"""A client in another language, given only the .proto, scores against the real server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from labelwatch_client import Example, LabelwatchClient
from support_server import server_process

# slow: npm install and a Node.js client
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "node"


@pytest.fixture(scope="module")
def node_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node/npm are required in CI for the other-language client test")
        pytest.skip("node/npm not installed: the Node.js client example cannot run")
    work = tmp_path_factory.mktemp("node") / "examples" / "node"
    shutil.copytree(EXAMPLE, work)
    shutil.copytree(REPO / "proto", work.parent.parent / "proto")
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent"],
        cwd=work,
        check=True,
        timeout=300,
        capture_output=True,
    )
    return work


def test_node_client_scores_text_with_only_the_proto(node_example: Path, tmp_path: Path) -> None:
    rows = [
        {"id": "py", "text": "Python 3 bindings for the GNOME toolkit", "labels": []},
        {"id": "game", "text": "Real-time strategy game", "labels": ["role::program"]},
    ]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the embedded default model; confident_learning flags the untagged package's likely tags
    # (the default budget rule keeps its few flags for tags an annotator gave or clearly missed)
    with server_process(["--filter-by", "confident_learning"]) as server:
        done = subprocess.run(
            ["node", "score.js", server.target, str(data)],
            cwd=node_example,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in results] == ["py", "game"]
    for result in results:
        assert 0.0 <= result["label_quality"] <= 1.0
        assert result["model_version"].startswith("debtags-tfidf-lr-")
    # an untagged package: whatever the model suspects can only be missing tags
    assert results[0]["is_issue"] is True
    assert {i["kind"] for i in results[0]["issues"]} == {"ISSUE_KIND_MISSING"}


def test_node_client_gets_the_servers_error(node_example: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"id": "x", "text": "t", "labels": ["no-such-tag"]}) + "\n")
    with server_process([]) as server:
        done = subprocess.run(
            ["node", "score.js", server.target, str(data)],
            cwd=node_example,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert "'x'" in done.stderr and "'no-such-tag'" in done.stderr


def test_node_client_sends_probabilities_through_score_batch(
    node_example: Path, tmp_path: Path
) -> None:
    with server_process([]) as server:
        with LabelwatchClient(server.target) as client:
            names = client.model_info().class_names
            # float32 values: what score.js packs is exactly what Score is sent here
            probs = np.full((3, len(names)), 0.001, dtype=np.float32)
            probs[:, names.index("role::program")] = 0.97
            tags = [["role::program"], ["role::program", "game::arcade"], []]
            examples = [
                Example(f"n{i}", probabilities=probs[i].astype(np.float64).tolist(), labels=t)
                for i, t in enumerate(tags)
            ]
            expected = client.score(examples)
        data = tmp_path / "probs.jsonl"
        data.write_text(
            "".join(
                json.dumps({"id": ex.id, "probabilities": ex.probabilities, "labels": ex.labels})
                + "\n"
                for ex in examples
            )
        )
        done = subprocess.run(
            ["node", "score.js", server.target, str(data)],
            cwd=node_example,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert all("suggested_labels" not in r for r in results)  # ScoreBatch's arrays, per example
    assert [r["id"] for r in results] == ["n0", "n1", "n2"]
    assert [r["label_quality"] for r in results] == [r.label_quality for r in expected]
    assert [r["is_issue"] for r in results] == [r.is_issue for r in expected]
    assert any(r["is_issue"] for r in results)
    for got, want in zip(results, expected, strict=True):
        assert got["issues"] == [
            {
                "label": i.label,
                "class_index": i.class_index,
                "kind": f"ISSUE_KIND_{i.kind.value}",
                "probability": i.probability,
                "threshold": i.threshold,
                "error_probability": i.error_probability,
            }
            for i in want.issues
        ]
