"""``labelwatch-client score|info`` (also ``labelwatch score|info``): the client as a command.

Exit status: 0 done; 1 the server refused the request (bad input, auth, ...;
its message is printed); 2 bad usage or a bad local file (the message names
the line and field); 3 the server is unreachable or unavailable. Errors are
one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

import grpc

from labelwatch_client.client import LabelwatchClient
from labelwatch_client.errors import LabelwatchError, ProtocolMismatch
from labelwatch_client.jsonl import ExampleFile, JsonlError, parse_examples, write_results
from labelwatch_client.types import Example, InputKind, ModelInfo, ScoreResult

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

_EXIT_HELP = """\
exit status: 0 done; 1 the server refused the request (its message names the
example id and field); 2 bad arguments or input file (the message names the
line and field); 3 the server is unreachable or unavailable."""

_SCORE_DESCRIPTION = f"""\
Send labeled examples to a labelwatch server and write one verdict per example.

--input is JSONL, one example a line ('-' reads stdin):
  {{"id": "a1", "text": "a red car", "labels": ["red", "vehicle"]}}
  {{"id": "a2", "features": [0.1, 2.3, 0.7], "label_indices": [0, 2]}}
  {{"id": "a3", "probabilities": [0.9, 0.1, 0.8], "labels": ["red"],
   "annotator_id": "ann-7", "metadata": {{"batch": "3"}}}}
Each needs an "id" and one input: "text" or "features" (for the server's model)
or "probabilities" (one per class, from your own model). Tags go in "labels"
(class names) or "label_indices" (0-based). An optional first line
{{"class_names": [...]}} is checked against the server's classes.

--out (default stdout) gets one JSON object a line, in input order:
  {{"index": 0, "id": "a1", "label_quality": 0.41, "is_issue": true,
   "issues": [{{"label": "vehicle", "class_index": 2, "kind": "SPURIOUS",
               "probability": 0.04, "threshold": 0.12}}],
   "suggested_labels": ["red"], "model_version": "m-1a2b3c"}}
label_quality is in [0, 1], lower = more likely mislabeled.

Batches of probabilities or features travel as one array each (the ScoreBatch
call, when numpy is installed), with the same results and messages as one
message per example (Score); batches with text or metadata go through Score.

{_EXIT_HELP}"""


DEFAULT_TARGET = "127.0.0.1:50051"
"""The address `labelwatch serve` listens on without --host/--port."""


class UsageError(Exception):
    """Bad arguments or a bad local file: exit status 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        metavar="HOST:PORT",
        help="the server [default %(default)s, where `labelwatch serve` listens by default].",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="seconds to wait for each answer, retries included [default %(default)s].",
    )
    group.add_argument(
        "--token-env",
        metavar="VAR",
        help="send the bearer token held in environment variable VAR.",
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS (system roots).")
    group.add_argument(
        "--root-certificates", type=Path, metavar="PEM", help="CA bundle to trust (implies --tls)."
    )
    group.add_argument("--client-certificate", type=Path, metavar="PEM", help="for mutual TLS.")
    group.add_argument("--client-key", type=Path, metavar="PEM", help="for mutual TLS.")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``score`` and ``info`` subcommands."""
    score = subparsers.add_parser(
        "score",
        help="score labeled examples (JSONL) on a running server",
        description=_SCORE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument(
        "--input", required=True, metavar="FILE", help="examples, JSONL ('-' = stdin)."
    )
    score.add_argument("--out", type=Path, metavar="FILE", help="results, JSONL [stdout].")
    score.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        metavar="N",
        help="examples per request [default %(default)s].",
    )
    score.add_argument(
        "--include-probabilities",
        action="store_true",
        help='add the model\'s per-class "probabilities" to each result.',
    )
    _add_connection_arguments(score)
    score.set_defaults(func=lambda args: _guarded(args, score.prog, _score))

    info = subparsers.add_parser(
        "info",
        help="describe a running server's model and calibration",
        description="Print the model, classes and per-class thresholds a server uses.",
        epilog=_EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text.")
    _add_connection_arguments(info)
    info.set_defaults(func=lambda args: _guarded(args, info.prog, _info))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``labelwatch-client`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = argparse.ArgumentParser(
        prog="labelwatch-client",
        description="Client of a labelwatch label-quality server.",
        epilog=_EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return func(args)


def _guarded(
    args: argparse.Namespace, prog: str, command: Callable[[argparse.Namespace], int]
) -> int:
    """Run ``command``; turn every expected failure into one stderr line and an exit code."""
    try:
        return command(args)
    except UsageError as exc:
        _complain(prog, str(exc))
        return EXIT_USAGE
    except LabelwatchError as exc:
        if exc.code in _UNREACHABLE:
            _complain(
                prog,
                f"the server at {args.target} is unreachable or unavailable "
                f"({exc.code.name}): {exc.details}",
            )
            return EXIT_UNREACHABLE
        what = "answered" if isinstance(exc, ProtocolMismatch) else "refused the request"
        _complain(prog, f"the server at {args.target} {what} ({exc.code.name}): {exc.details}")
        return EXIT_REFUSED
    except BrokenPipeError:  # stdout closed early (e.g. `| head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        _complain(prog, "interrupted")
        return 130


def _complain(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)


def _read_file(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read ({exc.strerror})") from exc


def _connect(args: argparse.Namespace) -> LabelwatchClient:
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise UsageError(f"--token-env: environment variable {args.token_env} is not set")
    try:
        return LabelwatchClient(
            args.target,
            timeout=args.timeout,
            tls=args.tls,
            root_certificates=_read_file(args.root_certificates, "--root-certificates"),
            certificate_chain=_read_file(args.client_certificate, "--client-certificate"),
            private_key=_read_file(args.client_key, "--client-key"),
            token=token,
        )
    except ValueError as exc:  # messages never contain the token
        raise UsageError(str(exc)) from exc


def _load(path: str) -> ExampleFile:
    try:
        if path == "-":
            return parse_examples(sys.stdin, "<stdin>")
        with open(path, encoding="utf-8") as fh:
            return parse_examples(fh, path)
    except JsonlError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"--input {path}: cannot read ({exc.strerror})") from exc


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    """stdout, or a temporary file renamed to ``path`` only when everything was written."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot write ({exc.strerror})") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fh.fileno(), 0o666 & ~umask)  # as open() would, not mkstemp's 0600
            yield fh
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot write ({exc.strerror})") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _score(args: argparse.Namespace) -> int:
    data = _load(args.input)
    started = time.monotonic()
    flagged = 0
    version = ""
    with _connect(args) as client:
        if data.class_names is not None:
            server_names = client.model_info().class_names
            if data.class_names != server_names:
                raise UsageError(
                    f"{args.input} line {data.header_line}: field 'class_names': "
                    f"{list(data.class_names)} differ from the server's classes "
                    f"{list(server_names)}"
                )
        columnar = _Columnar(client) if importlib.util.find_spec("numpy") else None
        with _output(args.out) as out:
            size = args.batch_size
            for start in range(0, len(data.examples), size):
                batch = data.examples[start : start + size]
                results = None
                if columnar is not None:
                    results = columnar.score(batch, args.include_probabilities)
                if results is None:
                    results = client.score(batch, include_probabilities=args.include_probabilities)
                if [r.id for r in results] != [ex.id for ex in batch]:
                    raise ProtocolMismatch(
                        "the results do not match the request's examples one to one",
                        args.target,
                    )
                write_results(out, results, start)
                flagged += sum(r.is_issue for r in results)
                version = results[-1].model_version if results else version
                if args.out is None:
                    out.flush()
    seconds = time.monotonic() - started
    print(
        f"scored {len(data.examples)} examples in {seconds:.2f} s: {flagged} flagged"
        + (f" (model {version})" if version else ""),
        file=sys.stderr,
    )
    return EXIT_OK


class _Columnar:
    """Scores a batch with ScoreBatch when it fits; else says None (the caller uses Score).

    It fits when every example gives the same numeric input, of the length the
    server's model takes, with no metadata and tags it can send unchanged (names
    it knows, no class twice, not both names and indices): then the server sees
    exactly what Score would send, and answers (or refuses) alike.
    """

    def __init__(self, client: LabelwatchClient) -> None:
        self._client = client
        self._info: ModelInfo | None = None

    def score(
        self, batch: Sequence[Example], include_probabilities: bool
    ) -> list[ScoreResult] | None:
        """The results of ``batch`` through ScoreBatch, or None when it does not fit."""
        if not batch or any(ex.metadata or (ex.labels and ex.label_indices) for ex in batch):
            return None
        if all(ex.probabilities is not None for ex in batch):
            kind = "probabilities"
        elif all(ex.features is not None for ex in batch):
            kind = "features"
        else:
            return None
        if self._info is None:
            self._info = self._client.model_info()
        info = self._info
        if kind == "features" and info.input_kind is not InputKind.FEATURES:
            return None
        width = len(info.class_names) if kind == "probabilities" else info.input_shape[-1]
        rows = [ex.probabilities if kind == "probabilities" else ex.features for ex in batch]
        if any(len(row or ()) != width for row in rows):
            return None
        index = {name: k for k, name in enumerate(info.class_names)}
        tags: list[list[int]] = []
        for ex in batch:
            if any(name not in index for name in ex.labels):
                return None  # Score names the unknown class
            given = [index[name] for name in ex.labels] or list(ex.label_indices)
            if len(set(given)) != len(given):
                return None  # Score counts repeats towards --max-labels-per-example
            tags.append(given)
        import numpy as np  # only here: the client needs only grpcio and protobuf

        # float64 as read: probabilities scored exactly, features rounded as Score rounds them
        table = np.array(rows, dtype=np.float64)
        annotators = [ex.annotator_id for ex in batch]
        return self._client.score_batch(
            [ex.id for ex in batch],
            probabilities=table if kind == "probabilities" else None,
            features=table if kind == "features" else None,
            tags=tags,
            annotator_ids=annotators if any(annotators) else None,
            include_probabilities=include_probabilities,
        ).results()


def _info(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        info = client.model_info()
    if args.json:
        print(json.dumps(info.to_json(), indent=2, ensure_ascii=False))
    else:
        print(format_model_info(info, args.target))
    return EXIT_OK


def format_model_info(info: ModelInfo, target: str = "") -> str:
    """The model info as an aligned, human-readable block of text."""
    cal = info.calibration
    shape = ", ".join("N" if d < 0 else str(d) for d in info.input_shape)
    rows = [
        ("server", f"{target} (labelwatch {info.server_version})".strip()),
        ("model", info.name),
        ("version", info.version),
        ("sha256", info.sha256 or "(no model loaded)"),
        ("input", f"{info.input_kind.value.lower()}, shape ({shape})"),
        ("classes", str(len(info.class_names))),
        (
            "calibration",
            f"{cal.calibration_size} examples, created {cal.created_at or '?'}, "
            f"schema {cal.schema_version}",
        ),
        ("flag rule", cal.filter_by),
        ("pooling", f"{cal.pooling} (alpha {cal.alpha:g}, temperature {cal.temperature:g})"),
    ]
    lines = [f"{key:<12} {value}" for key, value in rows]
    if cal.classes:
        width = max(5, *(len(c.label) for c in cal.classes))
        lines.append("")
        lines.append(
            f"{'class':<{width}}  {'t0':>6}  {'t1':>6}  {'tagged':>7}  {'untagged':>8}  "
            f"{'missing':>7}  {'spurious':>8}"
        )
        lines.extend(
            f"{c.label:<{width}}  {c.t0:>6.3f}  {c.t1:>6.3f}  {c.n_pos:>7}  {c.n_neg:>8}  "
            f"{c.missing_rate:>7.1%}  {c.spurious_rate:>8.1%}"
            for c in cal.classes
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
