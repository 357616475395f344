"""Screenshot of one flag review task as Label Studio shows it to a reviewer (for the README).

Starts a throwaway Label Studio and ``labelwatch serve`` with the Label Studio sink,
scores a few packages of the debtags test split through gRPC with tags made wrong on
purpose (the tag the model is surest of left out, or the least likely class added),
waits until the sink has imported their review tasks into the "labelwatch flags"
project, opens one task's labeling view in headless Chromium and saves a PNG.

Reuses the Label Studio and browser helpers of ``scripts/screenshot_label_studio.py``.
Needs: Label Studio in its own venv (scripts/ci_delivery_deps.sh) and
``apt-get install chromium chromium-driver``. Not run in CI.

    .venv/bin/python scripts/screenshot_flag_review.py  # writes --out (default below)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import debtags_data
import grpc
import numpy as np
from screenshot_label_studio import (
    PASSWORD,
    ROOT,
    TOKEN,
    USER,
    Browser,
    Ls,
    annotator_tags,
    free_port,
    login,
    start_label_studio,
    wait_for,
)

from labelwatch import default_model
from labelwatch.model import OnnxModel
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc

PROJECT = "labelwatch flags"  # the sink's default project title
SUMMARY_PREFIX = "labelwatch: label quality"


@dataclass(frozen=True)
class Mislabeled:
    """A debtags package with the tags an annotator got wrong (``mistake``)."""

    package: str
    text: str
    tags: tuple[str, ...]
    mistake: str


def mislabeled_examples(n: int, *, max_chars: int = 320) -> list[Mislabeled]:
    """``n`` short test-split packages, alternately missing their surest tag or given a wrong one.

    Packages whose true tags the model already gets right (each above 0.5) are used, so
    the only issue labelwatch finds is the mistake made here.
    """
    data = debtags_data.load()
    names = list(data.class_names)
    test = data["test"]
    model = OnnxModel(default_model.DEFAULT_MODEL)
    candidates = [
        i
        for i, text in enumerate(test.texts)
        if 80 <= len(text) <= max_chars and test.labels[i].sum() >= 2
    ][:400]
    probabilities = np.asarray(model.predict([test.texts[i] for i in candidates]))
    out: list[Mislabeled] = []
    for row, i in zip(probabilities, candidates, strict=True):
        true = [names[k] for k in np.flatnonzero(test.labels[i])]
        if min(float(row[names.index(t)]) for t in true) < 0.5:
            continue
        mistake = ("missing", "spurious")[len(out) % 2]
        tags = annotator_tags(true, [float(p) for p in row], names, mistake)
        out.append(Mislabeled(test.ids[i], test.texts[i], tuple(tags), mistake))
        if len(out) == n:
            break
    return out


def score(target: str, examples: Sequence[Mislabeled]) -> list[str]:
    """Score ``examples`` (annotator ``ann-7``); return the ids of the flagged ones."""
    request = pb.ScoreRequest(
        examples=[
            pb.Example(
                id=e.package,
                text=e.text,
                labels=list(e.tags),
                annotator_id="ann-7",
                metadata={"dataset": "debtags", "mistake": e.mistake},
            )
            for e in examples
        ]
    )
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=120)
        response = pb_grpc.LabelQualityStub(channel).Score(request, timeout=60)
    return [e.package for e, r in zip(examples, response.results, strict=True) if r.is_issue]


def review_tasks(ls: Ls, expected: int, timeout: float = 120.0) -> tuple[int, list[Any]]:
    """Wait until the project holds ``expected`` tasks; return its id and the tasks by id."""
    found: list[tuple[int, list[Any]]] = []

    def ready() -> bool:
        projects = ls("GET", "/api/projects?page_size=100")["results"]
        ids = [int(p["id"]) for p in projects if p["title"] == PROJECT]
        if not ids:
            return False
        tasks = ls("GET", f"/api/tasks?project={ids[0]}&page_size=100&fields=all")["tasks"]
        found.append((ids[0], sorted(tasks, key=lambda t: int(t["id"]))))
        return len(tasks) >= expected

    wait_for(ready, timeout, f"{expected} review tasks in {PROJECT!r}")
    return found[-1]


def screenshot(
    ls_url: str,
    project_id: int,
    task_id: int,
    probe: str,
    out: Path,
    *,
    chromedriver: str,
    chromium: str,
) -> None:
    """Log in, open the task's labeling view, wait for its summary line and text, save a PNG."""
    browser = Browser(chromedriver, chromium, 1600, 1200)
    try:
        login(browser, ls_url, USER, PASSWORD)
        browser.go(f"{ls_url}/projects/{project_id}/data?task={task_id}")
        wait_for(
            lambda: all(
                s in browser.run("return document.body.innerText") for s in (SUMMARY_PREFIX, probe)
            ),
            90,
            "the labeling view of the task",
        )
        time.sleep(1.5)  # let fonts and layout settle: a picture, not a synchronisation
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(browser.png())
    finally:
        browser.close()


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs/images/label-studio-flag-review.png"
    )
    parser.add_argument("--examples", type=int, default=4, help="packages to score (default 4)")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    labelwatch = str(Path(sys.executable).parent / "labelwatch")
    examples = mislabeled_examples(args.examples)
    with tempfile.TemporaryDirectory(prefix="labelwatch-flag-review-") as tmp:
        ls_dir, lw_dir = Path(tmp) / "ls", Path(tmp) / "lw"
        ls_dir.mkdir()
        ls_port, grpc_port = free_port(), free_port()
        ls = Ls(f"http://127.0.0.1:{ls_port}", TOKEN)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            print("starting Label Studio (first start migrates its database: 1-2 minutes)")
            procs.append(start_label_studio(ls_dir, ls_port))
            wait_for(
                lambda: ls("GET", "/api/projects?page_size=1") is not None, 300, "Label Studio"
            )
            serve = [
                labelwatch, "serve", "--port", str(grpc_port), "--metrics-port", "off",
                "--data-dir", str(lw_dir), "--label-studio-url", ls.url,
            ]  # fmt: skip
            procs.append(subprocess.Popen(serve, env={**os.environ, "LABEL_STUDIO_API_KEY": TOKEN}))
            flagged = score(f"127.0.0.1:{grpc_port}", examples)
            print(f"scored {len(examples)} packages, flagged: {', '.join(flagged)}")
            if not flagged:
                raise RuntimeError("no example was flagged: nothing to review")
            project_id, tasks = review_tasks(ls, len(flagged))
            task = tasks[0]
            print(f"project={project_id} task={task['id']}: {task['data']['labelwatch_summary']}")
            screenshot(
                ls.url, project_id, int(task["id"]), str(task["data"]["text"])[:30], args.out,
                chromedriver=args.chromedriver, chromium=args.chromium,
            )  # fmt: skip
            print(f"wrote {args.out}")
        finally:
            _stop(procs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
