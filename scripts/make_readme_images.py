#!/usr/bin/env python3
"""Draw the README's pictures of ``labelwatch demo`` and of the audit HTML report.

Runs the demo on the whole shipped test split (its own server, a temporary folder), then
``labelwatch audit --html`` on the probabilities and tags the demo saved, exactly as the demo
tells its user to, and takes two screenshots with headless Chromium:

* ``docs/images/demo-summary.png``: the demo's output as a terminal shows it (the captured
  text, rendered in a monospace ``<pre>``);
* ``docs/images/audit-report.png``: the top of the HTML report (summary and histogram),
  and ``docs/images/audit-report-worst.png``: its table of the lowest-scoring packages,
  each flag beside the bound that decided it (that section of the report, cut out of the
  generated page with its own style sheet).

Needs the installed labelwatch (``make install``) and Chromium (``apt-get install chromium``
on Debian). Nothing here is edited by hand: re-run it when the demo or the report changes::

    .venv/bin/python scripts/make_readme_images.py
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
WIDTH = 1100
LINE_PX = 19
TERMINAL = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>
html,body{{margin:0;background:#1e1e1e}}
pre{{margin:0;padding:14px 18px;color:#e6e6e6;font:14px/{line}px "DejaVu Sans Mono",monospace;
white-space:pre-wrap}}
.prompt{{color:#8ae234}}
</style></head><body><pre><span class="prompt">$ labelwatch demo</span>
{text}</pre></body></html>
"""


BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
"""The venv's bin first on PATH: the demo then prints its commands as plain ``labelwatch``."""


def labelwatch(*args: str) -> list[str]:
    """``labelwatch ARGS``: the console script beside this Python."""
    return [str(BIN / "labelwatch"), *args]


def screenshot(chromium: str, page: Path, out: Path, height: int) -> None:
    """Save ``page`` (a local HTML file) as a ``WIDTH`` x ``height`` PNG at ``out``."""
    with tempfile.TemporaryDirectory(prefix="labelwatch-chromium-") as profile:
        subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}",
                f"--screenshot={out}", page.as_uri(),
            ],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


def terminal_page(text: str, path: Path) -> int:
    """Write ``text`` as a terminal-like HTML page; return its height in pixels."""
    path.write_text(TERMINAL.format(line=LINE_PX, text=html.escape(text.rstrip())))
    lines = 1 + sum(1 + len(line) // 100 for line in text.rstrip().splitlines())
    return lines * LINE_PX + 30


def section(page: str, first: str, after: str) -> str:
    """The part of a report ``page`` from ``<h2 id="first">`` up to ``<h2 id="after">``, as a
    page of its own with the report's head (its style sheet)."""
    head = page[: page.index("<body>") + len("<body>")]
    start, end = page.index(f'<h2 id="{first}">'), page.index(f'<h2 id="{after}">')
    return f"{head}{page[start:end]}</body></html>\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder for the PNGs")
    parser.add_argument("--limit", type=int, default=None, help="demo packages (default: all)")
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        raise SystemExit(f"Chromium not found at {args.chromium}: apt-get install chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="labelwatch-readme-images-") as tmp:
        work = Path(tmp)
        limit = ["--limit", str(args.limit)] if args.limit else []
        demo = subprocess.run(
            labelwatch("demo", "--out", str(work / "demo"), *limit),
            check=True, capture_output=True, text=True, timeout=900, env=ENV,
        )  # fmt: skip
        # the temporary folder's name changes every run: show the default one's shape
        text = demo.stdout.replace(str(work / "demo"), "/tmp/labelwatch-demo-3kq9x0ye")
        page = work / "demo.html"
        screenshot(args.chromium, page, args.out / "demo-summary.png", terminal_page(text, page))

        # relative paths: the report names its data file as the user typed it
        report = work / "demo" / "report.html"
        subprocess.run(
            labelwatch(
                "audit", "--data", "demo.npz", "--out", "audit.jsonl", "--html", "report.html"
            ),
            check=True, capture_output=True, text=True, timeout=300, cwd=work / "demo", env=ENV,
        )  # fmt: skip
        screenshot(args.chromium, report, args.out / "audit-report.png", 590)
        worst = work / "worst.html"
        worst.write_text(section(report.read_text(), "worst", "summary"))
        screenshot(args.chromium, worst, args.out / "audit-report-worst.png", 700)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
