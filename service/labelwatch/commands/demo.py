"""``labelwatch demo``: stream noisy debtags through the server and watch it catch the noise.

Takes the debtags test split that ships inside the package (6,037 Debian
packages with their tags, never seen by the default model), corrupts one tag
of some packages with a known seed (a tag removed or a wrong one added),
streams the packages through ScoreStream and shows a live view: packages/s,
flags so far, and how many of the flags hit the injected errors. It ends with
a summary that explains its numbers.

Everything it writes goes under --out DIR (default: a new temporary folder,
printed at the start): the results, the probabilities and tags for
`labelwatch audit`, and the outbox of the server it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from labelwatch.default_model import DATA_DIR
from labelwatch_client import ClassIssue, ScoreResult

DEMO_DATA: Path = DATA_DIR / "debtags_test.jsonl.gz"
"""The debtags test split (``{"id", "text", "labels"}`` a line), made by
``scripts/build_demo_data.py`` from ``data/debtags/debtags.jsonl.gz``."""
DETECTION_DOC = "docs/detection.md"
REDRAW_SECONDS = 0.1
"""The live view redraws at most this often (10 times a second)."""
LINE_SECONDS = 2.0
"""Without a terminal, a progress line at most this often."""
QUEUE_DEPTHS = (100, 500)
"""precision@k of the review queue is reported for these k."""
WIDTH = 96
"""The summary's lines are wrapped at this many columns."""


@dataclass(frozen=True)
class NoisyExample:
    """One test package with its (possibly corrupted) tags."""

    id: str
    text: str
    labels: tuple[str, ...]
    flipped: frozenset[tuple[str, str]]  # (class, "MISSING" | "SPURIOUS") injected


def load_test_split(path: Path, limit: int | None = None) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(id, text, tags)`` of the test split's packages, in file order.

    ``path``: a gzip JSON Lines file; rows with a ``split`` key other than ``"test"`` are
    skipped (the full ``data/debtags/debtags.jsonl.gz`` works too). ``limit``: keep only
    the first ``limit`` packages (``None``: the whole split).
    """
    rows: list[tuple[str, str, tuple[str, ...]]] = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("split", "test") == "test":
                rows.append((row["id"], row["text"], tuple(row["labels"])))
                if limit is not None and len(rows) >= limit:
                    break
    return rows


def inject_noise(
    rows: Sequence[tuple[str, str, tuple[str, ...]]],
    class_names: Sequence[str],
    *,
    rate: float,
    seed: int,
) -> list[NoisyExample]:
    """Corrupt a ``rate`` fraction of examples: drop one given tag or add one absent tag."""
    rng = np.random.default_rng(seed)
    out: list[NoisyExample] = []
    for package, text, tags in rows:
        given = [t for t in tags if t in class_names]
        if rng.random() >= rate:
            out.append(NoisyExample(package, text, tuple(given), frozenset()))
            continue
        if given and rng.random() < 0.5:
            dropped = given[int(rng.integers(len(given)))]
            noisy = tuple(t for t in given if t != dropped)
            out.append(NoisyExample(package, text, noisy, frozenset({(dropped, "MISSING")})))
        else:
            absent = [c for c in class_names if c not in given]
            added = absent[int(rng.integers(len(absent)))]
            out.append(
                NoisyExample(package, text, (*given, added), frozenset({(added, "SPURIOUS")}))
            )
    return out


def review_key(result: ScoreResult) -> tuple[float, float]:
    """Where a flagged package sits in the review queue: lower = reviewed first.

    First the highest ``error_probability`` among its issues, negated, when the server
    sends that field (0 otherwise); then its label quality, lowest first, which also
    orders the many packages whose error probability reaches the calibrator's cap.
    """
    chances = [
        float(p)
        for p in (getattr(issue, "error_probability", None) for issue in result.issues)
        if p is not None and p > 0.0
    ]
    return (-max(chances) if chances else 0.0, result.label_quality)


@dataclass
class Tally:
    """Running counts of class-level flags against the injected flips."""

    seen: int = 0
    flagged_examples: int = 0
    flags: int = 0
    true_flags: int = 0
    injected: int = 0
    queue: list[tuple[tuple[float, float], int, bool]] = field(default_factory=list)
    """Flagged packages: ``(review_key, arrival order, carries an injected flip)``."""
    ranked_by_error_probability: bool = False

    @property
    def precision(self) -> float:
        """Share of class-level flags that hit an injected flip."""
        return self.true_flags / self.flags if self.flags else 0.0

    @property
    def recall(self) -> float:
        """Share of injected flips that were flagged."""
        return self.true_flags / self.injected if self.injected else 0.0

    @property
    def flags_per_package(self) -> float:
        """Class-level flags per package seen (the review volume)."""
        return self.flags / self.seen if self.seen else 0.0

    def add(self, example: NoisyExample, result: ScoreResult) -> None:
        """Count one scored package."""
        self.seen += 1
        hits = {(i.label, i.kind.value) for i in result.issues}
        self.flags += len(hits)
        self.true_flags += len(hits & example.flipped)
        if result.is_issue:
            self.flagged_examples += 1
            key = review_key(result)
            self.ranked_by_error_probability |= key[0] < 0.0
            self.queue.append((key, len(self.queue), bool(example.flipped)))

    def precision_at(self, k: int) -> tuple[int, int]:
        """``(hits, n)``: of the first ``n = min(k, queue length)`` packages of the review
        queue, ``hits`` carry an injected flip."""
        top = sorted(self.queue)[:k]
        return sum(1 for _, _, hit in top if hit), len(top)


class LiveView:
    """The demo's progress display: a redrawn screen on a terminal, lines otherwise.

    Draws at most once per ``interval`` seconds on a terminal (``line_interval``
    otherwise) by ``clock`` (seconds), plus the last frame (``final=True``).
    """

    def __init__(
        self,
        out: TextIO,
        *,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
        interval: float = REDRAW_SECONDS,
        line_interval: float = LINE_SECONDS,
    ) -> None:
        self.out = out
        self.tty = tty
        self.clock = clock
        self.interval = interval if tty else line_interval
        self.started = clock()
        self._last: float | None = None
        self.draws = 0

    def update(self, tally: Tally, latest: Sequence[str], *, final: bool = False) -> None:
        """Redraw if ``interval`` has passed since the last draw, or if ``final``."""
        now = self.clock()
        if not final and self._last is not None and now - self._last < self.interval:
            return
        if not final and self._last is None and now - self.started < self.interval:
            return
        self._last = now
        self.draws += 1
        rate = tally.seen / max(now - self.started, 1e-9)
        line = (
            f"{tally.seen:,} scored, {rate:,.0f}/s, {tally.flagged_examples:,} flagged, "
            f"{tally.flags_per_package:.2f} flags per package, precision {tally.precision:.2f}, "
            f"recall {tally.recall:.2f}"
        )
        if self.tty:
            frame = "\x1b[2J\x1b[H" + line + "\nlatest flags:\n" + "\n".join(latest) + "\n"
            self.out.write(frame)
            self.out.flush()
        elif not final:
            print(line, file=self.out, flush=True)


def summary(tally: Tally, seconds: float, noise: float) -> list[str]:
    """The closing lines: each number of the run in plain words."""
    n = tally.seen
    share = 100.0 * tally.flagged_examples / n if n else 0.0
    order = (
        "the highest error probability of its flags (ties: lowest label quality first)"
        if tally.ranked_by_error_probability
        else "label quality, lowest first"
    )
    lines = [
        f"done: {n:,} packages in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} a second)",
        "",
        "What the numbers mean",
        f"  We corrupted {tally.injected:,} of the {n:,} packages on purpose (about "
        f"{noise:.0%}): one tag removed or one wrong tag added each.",
        f"  Flag volume: labelwatch raised {tally.flags:,} flags (a flag is one tag of one "
        f"package that it suspects): {tally.flags_per_package:.2f} flags per package, on "
        f"{tally.flagged_examples:,} packages ({share:.0f}%).",
        f"  Recall {tally.recall:.2f}: {tally.true_flags:,} of the {tally.injected:,} injected "
        "errors were flagged.",
        f"  Precision {tally.precision:.2f}: {tally.true_flags:,} of the {tally.flags:,} flags "
        "point at an injected error.",
        "  The split's own tags contain real errors (tags never added, tags copied between "
        "sibling packages); flags on those count as wrong here although many are right: "
        f"see {DETECTION_DOC}.",
        f"  The review queue: the {tally.flagged_examples:,} flagged packages ordered by {order}. "
        "A reviewer who works down it finds an injected error in",
    ]
    lines = [_wrap(line) for line in lines]
    for k in QUEUE_DEPTHS:
        hits, top = tally.precision_at(k)
        if top == 0:
            lines.append(f"    precision@{k}: no package was flagged")
            continue
        shown = f"all {top} flagged packages" if top < k else f"the first {k}"
        lines.append(f"    precision@{k} {hits / top:.2f}: {hits} of {shown}")
    lines.append(
        f"  (Picking packages at random would find one in {1 / noise:.0f}, precision {noise:.2f}.)"
        if noise > 0
        else "  (No noise was injected: every flag here points at the split's own tags.)"
    )
    return lines


def _wrap(line: str) -> str:
    """``line`` wrapped at :data:`WIDTH`, continuation lines indented two more spaces."""
    indent = line[: len(line) - len(line.lstrip())]
    return (
        textwrap.fill(
            line, WIDTH, initial_indent="", subsequent_indent=indent + "  ", break_long_words=False
        )
        if line.strip()
        else line
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="stream noisy debtags through the server and watch it catch the noise",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--target", help="HOST:PORT of a running server (default: start one on the default model)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="debtags JSONL.gz (default: the test split inside the package)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="stream only the first LIMIT test packages (default: the whole test split, "
        "6,037 packages)",
    )
    parser.add_argument("--noise", type=float, default=0.1, help="fraction of packages corrupted")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--batch", type=int, default=32, help="examples per stream message")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for everything the demo writes (default: a new temporary folder)",
    )
    parser.set_defaults(func=run)


@contextlib.contextmanager
def _server(target: str | None, data_dir: Path) -> Iterator[str]:
    if target:
        yield target
        return
    from labelwatch.config import Settings
    from labelwatch.engine import with_default_model
    from labelwatch.server import start

    # the demo's flags are throwaway: its server keeps its outbox under --out
    base = Settings(port=0, metrics_port=None, data_dir=data_dir)
    settings = with_default_model(base)
    if settings.model is None:
        raise SystemExit("labelwatch demo: the embedded default model is not installed")
    running = start(settings)
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        running.stop(2.0)


def _batches(examples: Sequence[NoisyExample], size: int) -> Iterator[list[NoisyExample]]:
    for start in range(0, len(examples), size):
        yield list(examples[start : start + size])


def _error(message: str) -> int:
    print(f"labelwatch demo: error: {message}", file=sys.stderr)
    return 2


def _out_dir(given: Path | None) -> Path:
    if given is None:
        return Path(tempfile.mkdtemp(prefix="labelwatch-demo-"))
    if given.exists() and not given.is_dir():
        raise ValueError(f"--out {given}: exists and is not a folder")
    given.mkdir(parents=True, exist_ok=True)
    return given


def run(args: argparse.Namespace) -> int:
    """Run the demo; return the exit code."""
    from labelwatch_client import Example, LabelwatchClient, LabelwatchError

    if args.limit is not None and args.limit < 1:
        return _error(f"--limit must be >= 1, got {args.limit}")
    if not 0.0 <= args.noise <= 1.0:
        return _error(f"--noise must be in [0, 1], got {args.noise}")
    data = args.data if args.data is not None else DEMO_DATA
    if not data.is_file():
        where = "pass --data PATH to debtags.jsonl.gz" if args.data else "reinstall labelwatch"
        return _error(f"{data} not found; {where}")
    try:
        out_dir = _out_dir(args.out)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    print(f"writing to {out_dir}")
    results_path = out_dir / "results.jsonl"
    view = LiveView(sys.stdout, tty=sys.stdout.isatty())
    with (
        _server(args.target, out_dir / "server") as target,
        LabelwatchClient(target, timeout=None) as client,
    ):
        info = client.model_info()
        class_names = list(info.class_names)
        rows = load_test_split(data, args.limit)
        examples = inject_noise(rows, class_names, rate=args.noise, seed=args.seed)
        tally = Tally(injected=sum(len(e.flipped) for e in examples))
        print(
            f"model {info.name} ({len(class_names)} classes), streaming {len(examples):,} "
            f"packages, {tally.injected:,} tag errors injected (seed {args.seed})"
        )
        latest: list[str] = []
        started = time.perf_counter()
        view.started = view.clock()
        batches = list(_batches(examples, args.batch))
        requests = (
            [Example(id=e.id, text=e.text, labels=list(e.labels)) for e in batch]
            for batch in batches
        )
        probs: list[tuple[float, ...]] = []
        stream = client.score_stream(requests, include_probabilities=True)
        try:
            with results_path.open("w", encoding="utf-8") as out:
                for batch, results in zip(batches, stream, strict=True):
                    for example, result in zip(batch, results, strict=True):
                        tally.add(example, result)
                        if result.is_issue:
                            latest = [_describe(example, result.issues), *latest][:5]
                        probs.append(result.probabilities or ())
                        record = result.to_json()
                        record.pop("probabilities", None)
                        out.write(json.dumps(record) + "\n")
                    view.update(tally, latest)
        except LabelwatchError as exc:
            print(f"\nlabelwatch demo: error: {exc}", file=sys.stderr)
            return 1
        view.update(tally, latest, final=True)
    elapsed = time.perf_counter() - started
    print("\n".join(["", *summary(tally, elapsed, args.noise), ""]))
    npz = out_dir / "demo.npz"
    _save_npz(npz, examples, probs, class_names)
    print(f"in {out_dir}:")
    print("  results.jsonl  one JSON line per package (lowest label_quality = worst)")
    print("  demo.npz       the model's probabilities, the noisy tags and the injected errors")
    print("the HTML audit report of this run:")
    print(
        f"  cd {out_dir} && {self_command()} audit --data demo.npz --out audit.jsonl "
        "--html report.html"
    )
    return 0


def self_command() -> str:
    """How to run this same ``labelwatch`` from any folder: ``labelwatch`` when that is the
    one on PATH, else its absolute path (e.g. ``/path/to/.venv/bin/labelwatch``), or
    ``python -m labelwatch.cli`` with this interpreter."""
    script = Path(sys.argv[0])
    if script.name != "labelwatch":
        return f"{sys.executable} -m labelwatch.cli"
    found = shutil.which("labelwatch")
    if found is not None and Path(found).resolve() == script.resolve():
        return "labelwatch"
    return str(script.resolve())


def _save_npz(
    path: Path,
    examples: Sequence[NoisyExample],
    probs: Sequence[Sequence[float]],
    class_names: Sequence[str],
) -> None:
    """Write what ``labelwatch audit`` reads: pred_probs, labels, class_names, ids; and
    ``injected`` ``(N, K)`` int8, 1 where the demo flipped the tag."""
    index = {name: k for k, name in enumerate(class_names)}
    labels = np.zeros((len(examples), len(class_names)), dtype=np.int8)
    injected = np.zeros_like(labels)
    for i, example in enumerate(examples):
        labels[i, [index[t] for t in example.labels]] = 1
        injected[i, [index[t] for t, _ in example.flipped]] = 1
    np.savez_compressed(
        path,
        pred_probs=np.asarray(probs, dtype=np.float64),
        labels=labels,
        class_names=np.asarray(class_names, dtype=str),
        ids=np.asarray([e.id for e in examples], dtype=str),
        injected=injected,
    )


def _describe(example: NoisyExample, issues: Sequence[ClassIssue]) -> str:
    parts = ", ".join(f"{i.kind.value} {i.label}" for i in issues)
    injected = ", ".join(f"{kind} {label}" for label, kind in sorted(example.flipped)) or "none"
    return f"  {example.id}: suspects {parts} (injected: {injected})"
