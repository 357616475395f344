"""``labelwatch demo``: stream noisy debtags through the server and watch it catch the noise.

Takes the shipped debtags test split, flips some tags with a known seed (a
missing tag dropped or a spurious one added), streams the packages through
ScoreStream, and shows a live view: examples/s, flags so far, and running
precision/recall of the flags against the injected flips.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelwatch_client import ClassIssue

DEFAULT_DATA = Path("data/debtags/debtags.jsonl.gz")


@dataclass(frozen=True)
class NoisyExample:
    """One test package with its (possibly corrupted) tags."""

    id: str
    text: str
    labels: tuple[str, ...]
    flipped: frozenset[tuple[str, str]]  # (class, "MISSING" | "SPURIOUS") injected


def load_test_split(path: Path, limit: int | None = None) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(id, text, tags)`` of the test split's packages, in file order.

    ``limit``: keep only the first ``limit`` packages (``None``: the whole split).
    """
    rows: list[tuple[str, str, tuple[str, ...]]] = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("split") == "test":
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


@dataclass
class Tally:
    """Running counts of class-level flags against the injected flips."""

    seen: int = 0
    flagged_examples: int = 0
    flags: int = 0
    true_flags: int = 0
    injected: int = 0

    @property
    def precision(self) -> float:
        """Share of class-level flags that hit an injected flip."""
        return self.true_flags / self.flags if self.flags else 0.0

    @property
    def recall(self) -> float:
        """Share of injected flips that were flagged."""
        return self.true_flags / self.injected if self.injected else 0.0


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
        "--data", type=Path, default=DEFAULT_DATA, help=f"debtags JSONL.gz (default {DEFAULT_DATA})"
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
        "--out", type=Path, default=Path("demo-results.jsonl"), help="where to write results"
    )
    parser.set_defaults(func=run)


@contextlib.contextmanager
def _server(target: str | None) -> Iterator[str]:
    if target:
        yield target
        return
    from labelwatch.config import Settings
    from labelwatch.engine import with_default_model
    from labelwatch.server import start

    with tempfile.TemporaryDirectory(prefix="labelwatch-demo-") as data_dir:
        # the demo's flags are throwaway: keep them out of the user's outbox
        base = Settings(port=0, metrics_port=None, data_dir=Path(data_dir))
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


def run(args: argparse.Namespace) -> int:
    """Run the demo; return the exit code."""
    from labelwatch_client import Example, LabelwatchClient, LabelwatchError

    if args.limit is not None and args.limit < 1:
        print(f"labelwatch demo: error: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    if not args.data.is_file():
        print(
            f"labelwatch demo: error: {args.data} not found; run from the labelwatch source "
            "tree or pass --data PATH to debtags.jsonl.gz",
            file=sys.stderr,
        )
        return 2
    live = sys.stdout.isatty()
    with _server(args.target) as target, LabelwatchClient(target, timeout=None) as client:
        info = client.model_info()
        class_names = list(info.class_names)
        rows = load_test_split(args.data, args.limit)
        examples = inject_noise(rows, class_names, rate=args.noise, seed=args.seed)
        tally = Tally(injected=sum(len(e.flipped) for e in examples))
        print(
            f"model {info.name} ({len(class_names)} classes), streaming {len(examples)} "
            f"packages, {tally.injected} tag flips injected (seed {args.seed})"
        )
        latest: list[str] = []
        started = time.perf_counter()
        batches = list(_batches(examples, args.batch))
        requests = (
            [Example(id=e.id, text=e.text, labels=list(e.labels)) for e in batch]
            for batch in batches
        )
        probs: list[tuple[float, ...]] = []
        stream = client.score_stream(requests, include_probabilities=True)
        try:
            with args.out.open("w", encoding="utf-8") as out:
                for batch, results in zip(batches, stream, strict=True):
                    for example, result in zip(batch, results, strict=True):
                        tally.seen += 1
                        hits = {(i.label, i.kind.value) for i in result.issues}
                        tally.flags += len(hits)
                        tally.true_flags += len(hits & example.flipped)
                        if result.is_issue:
                            tally.flagged_examples += 1
                            latest = [_describe(example, result.issues), *latest][:5]
                        probs.append(result.probabilities or ())
                        record = result.to_json()
                        record.pop("probabilities", None)
                        out.write(json.dumps(record) + "\n")
                    _show(tally, started, latest, live)
        except LabelwatchError as exc:
            print(f"\nlabelwatch demo: error: {exc}", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - started
    print(
        f"\ndone: {tally.seen} packages in {elapsed:.1f} s ({tally.seen / elapsed:.0f}/s); "
        f"{tally.flagged_examples} flagged; class-level precision {tally.precision:.2f}, "
        f"recall {tally.recall:.2f} against the injected flips"
    )
    print(f"results: {args.out} (one JSON line per package, lowest label_quality = worst)")
    npz = args.out.with_suffix(".npz")
    _save_npz(npz, examples, probs, class_names)
    print(
        f"the model's probabilities and the noisy tags are in {npz}; for the HTML audit report:\n"
        f"  labelwatch audit --data {npz} --out {args.out.with_suffix('.audit.jsonl')} "
        f"--html {args.out.with_suffix('.html')}"
    )
    return 0


def _save_npz(
    path: Path,
    examples: Sequence[NoisyExample],
    probs: Sequence[Sequence[float]],
    class_names: Sequence[str],
) -> None:
    """Write what ``labelwatch audit`` reads: pred_probs, labels, class_names, ids."""
    index = {name: k for k, name in enumerate(class_names)}
    labels = np.zeros((len(examples), len(class_names)), dtype=np.int8)
    for i, example in enumerate(examples):
        labels[i, [index[t] for t in example.labels]] = 1
    np.savez_compressed(
        path,
        pred_probs=np.asarray(probs, dtype=np.float64),
        labels=labels,
        class_names=np.asarray(class_names, dtype=str),
        ids=np.asarray([e.id for e in examples], dtype=str),
    )


def _describe(example: NoisyExample, issues: Sequence[ClassIssue]) -> str:
    parts = ", ".join(f"{i.kind.value} {i.label}" for i in issues)
    injected = ", ".join(f"{kind} {label}" for label, kind in sorted(example.flipped)) or "none"
    return f"  {example.id}: suspects {parts} (injected: {injected})"


def _show(tally: Tally, started: float, latest: list[str], live: bool) -> None:
    rate = tally.seen / max(time.perf_counter() - started, 1e-9)
    line = (
        f"{tally.seen} scored, {rate:.0f}/s, {tally.flagged_examples} flagged, "
        f"precision {tally.precision:.2f}, recall {tally.recall:.2f}"
    )
    if live:
        sys.stdout.write("\x1b[2J\x1b[H" + line + "\nlatest flags:\n" + "\n".join(latest) + "\n")
        sys.stdout.flush()
    elif tally.seen % 512 < 32:
        print(line, flush=True)
