"""docs/architecture.md matches the code, and imports follow wire -> codec -> engine -> scoring.

Reads the source tree (not the installed copy): the layout is a property of the repository.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from support_tools import REPO

PACKAGE = REPO / "service" / "labelwatch"
DOC = REPO / "docs" / "architecture.md"
TRANSPORTS = (
    "labelwatch.grpc",
    "labelwatch.ingest",
    "labelwatch.ingest_app",
    "labelwatch.ingest_fetch",
    "labelwatch.ingest_messages",
    "labelwatch.ingest_publish",
    "labelwatch.labelstudio",
    "labelwatch.server",
    "labelwatch.workers",
    "labelwatch.commands",
    "labelwatch.cli",
)


def _documented() -> set[str]:
    """The names the layout block of the doc lists under ``service/labelwatch/``."""
    text = DOC.read_text()
    block = text.split("## The packages and what each owns", 1)[1].split("```")[1]
    lines = block.split("service/labelwatch/\n", 1)[1].splitlines()
    return {m.group(1) for line in lines if (m := re.match(r"    (\S+?)/?\s", line))}


def _present() -> set[str]:
    """The top-level modules and packages of ``service/labelwatch``."""
    names = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    names |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    return names


def test_the_layout_doc_names_every_module_and_package_and_only_those() -> None:
    documented, present = _documented(), _present()
    assert sorted(present - documented) == [], "add these to docs/architecture.md"
    assert sorted(documented - present) == [], "docs/architecture.md names what is gone"


def _imports(path: Path) -> set[str]:
    """Every ``labelwatch...`` module and third-party top-level package ``path`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _offending(where: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Modules under ``where`` (relative to the package) that import any of ``forbidden``."""
    root = PACKAGE / where
    files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    bad: dict[str, list[str]] = {}
    for path in files:
        hits = sorted(
            name
            for name in _imports(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        )
        if hits:
            bad[str(path.relative_to(PACKAGE))] = hits
    return bad


@pytest.mark.parametrize(
    ("where", "forbidden"),
    [
        # the codec sits between the wire and the engine: it knows neither transports nor engine
        ("codec", (*TRANSPORTS, "labelwatch.engine", "labelwatch.pipeline", "grpc")),
        # the engine knows no transport
        ("engine", (*TRANSPORTS, "grpc", "nats")),
        ("pipeline.py", (*TRANSPORTS, "labelwatch.engine", "grpc", "nats")),
        ("batcher.py", (*TRANSPORTS, "labelwatch.engine", "grpc", "nats")),
        # scoring is pure numpy
        ("scoring", ("labelwatch.domain", "labelwatch.engine", "labelwatch.codec", *TRANSPORTS)),
    ],
)
def test_imports_flow_one_way(where: str, forbidden: tuple[str, ...]) -> None:
    assert _offending(where, forbidden) == {}


def test_scoring_imports_nothing_of_labelwatch_but_scoring() -> None:
    outside = {
        str(path.relative_to(PACKAGE)): sorted(
            n for n in _imports(path) if n.startswith("labelwatch") and ".scoring" not in n
        )
        for path in (PACKAGE / "scoring").rglob("*.py")
    }
    assert {k: v for k, v in outside.items() if v} == {}


def test_one_adapter_does_not_import_another() -> None:
    """The NATS consumer gets its engine from engine/, not from the gRPC server."""
    assert _offending("ingest_app.py", ("labelwatch.server", "labelwatch.grpc")) == {}
    assert _offending("ingest.py", ("labelwatch.server", "labelwatch.grpc")) == {}
    assert _offending("labelstudio", ("labelwatch.server", "labelwatch.grpc")) == {}


# Known debt, each to be split by responsibility by its owner (remove the entry when done).
OVER_500_LINES: set[str] = set()


def test_every_module_stays_under_500_lines() -> None:
    """A module does one thing; past 500 lines it is time to split it by responsibility."""
    roots = (PACKAGE, REPO / "client" / "labelwatch_client")
    long = {
        str(path.relative_to(REPO))
        for root in roots
        for path in root.rglob("*.py")
        if len(path.read_text().splitlines()) >= 500
    }
    assert long == OVER_500_LINES
