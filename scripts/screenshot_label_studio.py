"""Screenshot of Label Studio's Data Manager sorted by labelwatch's score (for the README).

Starts a throwaway Label Studio and ``labelwatch serve --http-port``, connects a
project with ``labelwatch label-studio connect``, submits annotations as an
annotator would (some with a tag the text lacks, some missing an obvious tag, some
right), waits for labelwatch to write its scores back, adds a Data Manager tab
sorted by ``labelwatch_score`` (worst first) and saves a PNG of it taken by headless
Chromium through chromedriver's WebDriver HTTP API (no Python browser package).

Needs: Label Studio in its own venv (scripts/ci_delivery_deps.sh) and
``apt-get install chromium chromium-driver``. Not run in CI; tests/test_label_studio_live.py
runs :func:`seed` and :func:`sorted_view` (everything but the browser).

    .venv/bin/python scripts/screenshot_label_studio.py  # writes --out (default below)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LS_VENV = Path(os.environ.get("LABELWATCH_LS_VENV", "/opt/labelwatch-ci/label-studio-venv"))
USER, PASSWORD = "reviewer@example.com", "labelwatch-screenshot"
TOKEN = "labelwatch0screenshot0token0123456789abcd"
SECRET = "labelwatch-screenshot-webhook-secret-0123"
SCORE_COLUMN = "tasks:data.labelwatch_score"
SHOWN_COLUMNS = (
    "tasks:id",
    "tasks:data.text",
    SCORE_COLUMN,
    "tasks:data.labelwatch_issues",
    "tasks:data.labelwatch_flagged",
    "tasks:total_annotations",
    "tasks:total_predictions",
)

# Debian package descriptions, and what the annotator does with the model's suggested tags
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("GNOME desktop image viewer for photos, written in C with GTK", "spurious"),
    ("Python 3 library for parsing and validating JSON documents", "ok"),
    ("command-line utility to manage network interfaces and firewall rules", "missing"),
    ("fast C++ library for linear algebra: matrices, vectors and solvers", "ok"),
    ("Perl module to read and write spreadsheet files", "spurious"),
    ("KDE music player with playlists and internet radio, built on Qt", "missing"),
    ("Emacs mode for editing Markdown documents", "ok"),
    ("daemon that serves files over HTTP with TLS, written in Go", "ok"),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.5 s until true; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_json(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=60) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


@dataclass(frozen=True)
class Ls:
    """Label Studio's REST API at ``url`` with a legacy token."""

    url: str
    token: str

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        return http_json(method, self.url + path, body, {"Authorization": f"Token {self.token}"})


def _choices(tags: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {
            "from_name": "labels",
            "to_name": "text",
            "type": "choices",
            "value": {"choices": list(tags)},
        }
    ]


def annotator_tags(
    suggested: Sequence[str], probabilities: Sequence[float], names: Sequence[str], mistake: str
) -> list[str]:
    """The tags an annotator gives: the model's suggestion, with one ``mistake`` or none.

    ``spurious`` adds the class the model finds least likely; ``missing`` leaves out the
    suggested class it finds most likely; ``ok`` keeps the suggestion.

    >>> annotator_tags(["a", "b"], [0.9, 0.6, 0.01], ["a", "b", "c"], "spurious")
    ['a', 'b', 'c']
    >>> annotator_tags(["a", "b"], [0.9, 0.6, 0.01], ["a", "b", "c"], "missing")
    ['b']
    """
    tags = list(suggested)
    if mistake == "spurious":
        return [*tags, names[min(range(len(names)), key=lambda k: probabilities[k])]]
    if mistake == "missing" and tags:
        strongest = max(tags, key=lambda t: probabilities[names.index(t)])
        return [t for t in tags if t != strongest]
    return tags


def seed(
    ls: Ls,
    project_id: int,
    labelwatch_http: str,
    secret: str,
    examples: Sequence[tuple[str, str]] = EXAMPLES,
    *,
    timeout: float = 60.0,
) -> list[int]:
    """Import ``examples`` into the project, annotate them, wait for labelwatch's scores.

    The suggested tags come from labelwatch's ``/predict`` (the ML backend, with the
    secret as Basic auth password), the probabilities from the default model. Returns
    the task ids, in the order of ``examples``.
    """
    import numpy as np

    from labelwatch import default_model
    from labelwatch.calibration import load_artifact
    from labelwatch.model import OnnxModel

    names = list(load_artifact(default_model.DEFAULT_THRESHOLDS).class_names)
    model = OnnxModel(default_model.DEFAULT_MODEL)
    texts = [text for text, _ in examples]
    probabilities = np.asarray(model.predict(texts))
    auth = base64.b64encode(f"labelwatch:{secret}".encode()).decode()
    predicted = http_json(
        "POST",
        labelwatch_http + "/predict",
        {"tasks": [{"id": i, "data": {"text": t}} for i, t in enumerate(texts)]},
        {"Authorization": f"Basic {auth}"},
    )["results"]
    answer = ls(
        "POST",
        f"/api/projects/{project_id}/import?return_task_ids=true",
        [{"data": {"text": t}} for t in texts],
    )
    task_ids = [int(t) for t in answer["task_ids"]]
    for task_id, (_, mistake), pred, row in zip(
        task_ids, examples, predicted, probabilities, strict=True
    ):
        suggested = pred["result"][0]["value"]["choices"] if pred["result"] else []
        tags = annotator_tags(suggested, [float(p) for p in row], names, mistake)
        ls("POST", f"/api/tasks/{task_id}/annotations/", {"result": _choices(tags)})
    wait_for(
        lambda: all("labelwatch_score" in ls("GET", f"/api/tasks/{t}")["data"] for t in task_ids),
        timeout,
        "labelwatch's scores on every task",
    )
    return task_ids


def sorted_view(ls: Ls, project_id: int, title: str = "worst first") -> int:
    """Add a Data Manager tab sorted by ``labelwatch_score`` ascending; return its id."""
    columns = ls("GET", f"/api/dm/columns?project={project_id}")["columns"]
    all_ids = [
        "tasks:" + ("data." if c.get("parent") == "data" else "") + c["id"]
        for c in columns
        if "children" not in c
    ]
    hidden = [c for c in all_ids if c not in SHOWN_COLUMNS]
    print(f"Data Manager columns: {', '.join(all_ids)}; shown: {', '.join(SHOWN_COLUMNS)}")
    view = ls(
        "POST",
        "/api/dm/views/",
        {
            "project": project_id,
            "data": {
                "title": title,
                "ordering": [SCORE_COLUMN],
                "type": "list",
                "target": "tasks",
                "hiddenColumns": {"explore": hidden, "labeling": hidden},
                "columnsDisplayType": {SCORE_COLUMN: "Number"},
                "columnsWidth": {"tasks:data.text": 420, "tasks:data.labelwatch_issues": 380},
            },
        },
    )
    return int(view["id"])


class Browser:
    """Headless Chromium driven through chromedriver's W3C WebDriver HTTP API."""

    def __init__(self, chromedriver: str, chromium: str, width: int, height: int) -> None:
        self._port = free_port()
        self._driver = subprocess.Popen(
            [chromedriver, f"--port={self._port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._base = f"http://127.0.0.1:{self._port}"
        wait_for(
            lambda: http_json("GET", self._base + "/status")["value"]["ready"], 30, "chromedriver"
        )
        caps = {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    f"--window-size={width},{height}",
                    "--hide-scrollbars",
                ],
            },
        }
        session = http_json(
            "POST", self._base + "/session", {"capabilities": {"alwaysMatch": caps}}
        )
        self._session = f"{self._base}/session/{session['value']['sessionId']}"

    def go(self, url: str) -> None:
        http_json("POST", self._session + "/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        return http_json(
            "POST", self._session + "/execute/sync", {"script": script, "args": list(args)}
        )["value"]

    def png(self) -> bytes:
        return base64.b64decode(http_json("GET", self._session + "/screenshot")["value"])

    def close(self) -> None:
        try:
            http_json("DELETE", self._session)
        finally:
            self._driver.terminate()
            self._driver.wait(10)


def login(browser: Browser, ls_url: str, user: str, password: str) -> None:
    browser.go(ls_url + "/user/login/")
    wait_for(
        lambda: browser.run("return !!document.querySelector('input[name=email]')"),
        60,
        "the login form",
    )
    browser.run(
        "document.querySelector('input[name=email]').value = arguments[0];"
        "document.querySelector('input[name=password]').value = arguments[1];"
        "document.querySelector('form').submit();",
        user,
        password,
    )
    wait_for(lambda: "/user/login" not in browser.run("return location.pathname"), 60, "login")


def screenshot(
    ls_url: str,
    project_id: int,
    view_id: int,
    worst_text: str,
    out: Path,
    *,
    chromedriver: str,
    chromium: str,
) -> None:
    """Log in, open the sorted tab, wait until its first row shows, save a PNG to ``out``."""
    browser = Browser(chromedriver, chromium, 1600, 900)
    try:
        login(browser, ls_url, USER, PASSWORD)
        browser.go(f"{ls_url}/projects/{project_id}/data?tab={view_id}")
        probe = worst_text[:30]
        wait_for(
            lambda: probe in browser.run("return document.body.innerText"),
            90,
            "the Data Manager rows",
        )
        time.sleep(1.0)  # let column widths and fonts settle: a picture, not a synchronisation
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(browser.png())
    finally:
        browser.close()


def start_label_studio(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """Label Studio on 127.0.0.1:``port`` with its SQLite database and log under ``data_dir``.

    The user ``USER``/``PASSWORD`` with the legacy token ``TOKEN`` is made on the first start.
    """
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LABELWATCH_")},
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "HOME": str(data_dir),
    }
    cmd = [
        str(LS_VENV / "bin" / "label-studio"), "start", "--no-browser",
        "--internal-host", "127.0.0.1", "-p", str(port),
        "--data-dir", str(data_dir), "-db", str(data_dir / "ls.sqlite3"),
        "--username", USER, "--password", PASSWORD,
        "--user-token", TOKEN, "--enable-legacy-api-token",
    ]  # fmt: skip
    log = (data_dir / "label-studio.log").open("ab")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs/images/label-studio-data-manager.png"
    )
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    labelwatch = str(Path(sys.executable).parent / "labelwatch")
    with tempfile.TemporaryDirectory(prefix="labelwatch-screenshot-") as tmp:
        ls_dir, lw_dir = Path(tmp) / "ls", Path(tmp) / "lw"
        ls_dir.mkdir()
        ls_port, http_port = free_port(), free_port()
        ls = Ls(f"http://127.0.0.1:{ls_port}", TOKEN)
        env = {**os.environ, "LABELWATCH_LS_WEBHOOK_SECRET": SECRET, "LABEL_STUDIO_API_KEY": TOKEN}
        procs: list[subprocess.Popen[bytes]] = []
        try:
            print("starting Label Studio (first start migrates its database: 1-2 minutes)")
            procs.append(start_label_studio(ls_dir, ls_port))
            wait_for(
                lambda: ls("GET", "/api/projects?page_size=1") is not None, 300, "Label Studio"
            )
            serve = [
                labelwatch, "serve", "--port", str(free_port()), "--metrics-port", "off",
                "--http-port", str(http_port), "--data-dir", str(lw_dir),
                "--ls-writeback-url", ls.url,
                # every confident disagreement, so each seeded mistake shows up flagged
                "--filter-by", "confident_learning",
            ]  # fmt: skip
            procs.append(subprocess.Popen(serve, env=env))
            lw_http = f"http://127.0.0.1:{http_port}"
            wait_for(
                lambda: http_json("GET", lw_http + "/health")["status"] == "UP", 120, "labelwatch"
            )
            connect = [
                labelwatch, "label-studio", "connect", "--url", ls.url,
                "--labelwatch-url", lw_http, "--project-title", "Debian package tags",
            ]  # fmt: skip
            out = subprocess.run(
                connect, env=env, check=True, capture_output=True, text=True
            ).stdout
            print(out, end="")
            project_id = int(out.split("project=")[1].split()[0])
            task_ids = seed(ls, project_id, lw_http, SECRET)
            view_id = sorted_view(ls, project_id)
            scores = {t: ls("GET", f"/api/tasks/{t}")["data"]["labelwatch_score"] for t in task_ids}
            worst = min(task_ids, key=lambda t: scores[t])
            worst_text = ls("GET", f"/api/tasks/{worst}")["data"]["text"]
            screenshot(
                ls.url, project_id, view_id, worst_text, args.out,
                chromedriver=args.chromedriver, chromium=args.chromium,
            )  # fmt: skip
            print(f"wrote {args.out}")
        finally:
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
