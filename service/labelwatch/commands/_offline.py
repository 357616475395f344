"""Pieces shared by the offline commands (``calibrate``, ``audit``): flags, errors, progress."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from labelwatch.scoring import Pooling

POOLINGS: dict[str, Pooling] = {"ema": Pooling.EMA, "softmin": Pooling.SOFTMIN}
DEFAULT_POOLING = "ema"
DEFAULT_ALPHA = 0.8
DEFAULT_TEMPERATURE = 0.1

DATA_HELP = """\
DATA formats (chosen by extension):
  .npz    arrays pred_probs (N, K) floats in [0, 1], labels (N, K) 0/1, and
          optionally class_names (K,) strings and ids (N,) strings; saved with
          numpy.savez (object arrays / pickles are refused).
  .jsonl  one JSON object a line:
            {"id": "a1", "labels": ["cat"], "probabilities": [0.9, 0.2, 0.1]}
          "probabilities" has one value per class, in the class order given by
          --class-names, by the --thresholds artifact, or by an optional first
          line {"class_names": ["cat", "dog", "bird"]}.
"""


def add_pooling_arguments(parser: argparse.ArgumentParser, *, defaults_shown: str) -> None:
    """Add ``--pooling``, ``--alpha`` and ``--temperature`` (default ``None`` = not given)."""
    parser.add_argument(
        "--pooling",
        choices=sorted(POOLINGS),
        default=None,
        help=f"how per-class scores pool into one label-quality score {defaults_shown}"
        f"(default {DEFAULT_POOLING}).",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=None,
        metavar="A",
        help=f"ema pooling weight in (0, 1] (default {DEFAULT_ALPHA}).",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        metavar="T",
        help=f"softmin pooling temperature, > 0 (default {DEFAULT_TEMPERATURE}).",
    )


def add_class_names_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--class-names a,b,c``."""
    parser.add_argument(
        "--class-names",
        default=None,
        metavar="A,B,C",
        help="comma-separated class names in column order; needed for a .jsonl DATA that has "
        "no class_names first line; checked against DATA's own names otherwise.",
    )


def pooling_settings(args: argparse.Namespace) -> tuple[Pooling, float, float]:
    """``(pooling, alpha, temperature)`` from the flags, defaults filled in.

    Raises ``ValueError`` for an alpha outside ``(0, 1]`` or a temperature ``<= 0``.
    """
    pooling = POOLINGS[args.pooling or DEFAULT_POOLING]
    alpha = DEFAULT_ALPHA if args.alpha is None else float(args.alpha)
    temperature = DEFAULT_TEMPERATURE if args.temperature is None else float(args.temperature)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"--alpha must be in (0, 1], got {alpha}")
    if not temperature > 0.0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    return pooling, alpha, temperature


def pooling_name(pooling: Pooling) -> str:
    """The ``--pooling`` spelling of ``pooling``."""
    return next(name for name, value in POOLINGS.items() if value is pooling)


def fail(command: str, message: str, code: int = 2) -> int:
    """Print ``labelwatch COMMAND: error: MESSAGE`` (one line) to stderr; return ``code``."""
    one_line = " ".join(str(message).split())
    print(f"labelwatch {command}: error: {one_line}", file=sys.stderr)
    return code


class Progress:
    """Progress on stderr: a ``\\r``-updated percentage on a TTY, stage lines otherwise.

    Silent unless ``stream`` is a TTY or the item count (:meth:`set_total`) is at
    least ``large``; redraws at most every ``interval`` seconds.
    """

    def __init__(
        self,
        command: str,
        *,
        stream: TextIO | None = None,
        large: int = 50_000,
        interval: float = 0.25,
    ) -> None:
        self.command = command
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.large = large
        self.total = 0
        self.enabled = self.tty
        self.interval = interval
        self._last_draw = 0.0
        self._stage = ""
        self._started = 0.0

    def set_total(self, total: int) -> None:
        """Set the number of items (examples) the next stages go over."""
        self.total = total
        self.enabled = self.tty or total >= self.large

    def stage(self, name: str) -> None:
        """Start a stage (e.g. ``"scoring"``)."""
        self._stage = name
        self._started = time.perf_counter()
        self._last_draw = 0.0
        if self.enabled:
            end = "" if self.tty else "\n"
            print(f"labelwatch {self.command}: {name} ...", end=end, file=self.stream, flush=True)

    def update(self, done: int) -> None:
        """Report ``done`` of ``total`` items of the current stage (TTY only)."""
        if self.total:
            self.fraction(done / self.total)

    def fraction(self, part: float) -> None:
        """Report the share ``part`` (0 to 1) of the current stage done (TTY only)."""
        if not (self.enabled and self.tty):
            return
        now = time.perf_counter()
        if now - self._last_draw < self.interval and part < 1.0:
            return
        self._last_draw = now
        self.stream.write(f"\rlabelwatch {self.command}: {self._stage} {100.0 * part:5.1f}%")
        self.stream.flush()

    def done(self) -> None:
        """Finish the current stage, printing its duration."""
        if not self.enabled:
            return
        seconds = time.perf_counter() - self._started
        line = f"labelwatch {self.command}: {self._stage} done in {seconds:.1f} s"
        print(f"\r{line}\033[K" if self.tty else line, file=self.stream, flush=True)

    def clear(self) -> None:
        """Erase an unfinished TTY progress line (call before printing an error)."""
        if self.enabled and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
