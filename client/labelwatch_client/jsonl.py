"""JSONL files of examples (input of ``score``) and of results (its output).

Input: one :meth:`Example.from_json` object a line; blank lines are skipped. An
optional first line ``{"class_names": ["cat", "dog"]}`` (the header that
``labelwatch audit`` reads) states the class order the file's ``probabilities``
and ``label_indices`` assume. Output: one audit-format object a line,
``{"index": i, **ScoreResult.to_json()}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from labelwatch_client.errors import ExampleFormatError
from labelwatch_client.types import Example, ScoreResult


class JsonlError(ValueError):
    """A line of a JSONL file is unusable; the message names the file, line and field."""


@dataclass(frozen=True)
class ExampleFile:
    """The parsed examples of one file; ``lines[i]`` is the 1-based line of ``examples[i]``."""

    examples: tuple[Example, ...]
    lines: tuple[int, ...]
    class_names: tuple[str, ...] | None
    """From the optional header line, else None."""
    header_line: int | None = None


def _objects(name: str, lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise JsonlError(
                f"{name} line {number}: invalid JSON: {exc.msg} (column {exc.colno})"
            ) from exc
        if not isinstance(obj, dict):
            raise JsonlError(
                f"{name} line {number}: expected a JSON object, got {type(obj).__name__}"
            )
        yield number, obj


def _header(name: str, number: int, obj: dict[str, Any]) -> tuple[str, ...] | None:
    if "class_names" not in obj or "id" in obj:
        return None
    names = obj["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise JsonlError(
            f"{name} line {number}: field 'class_names': must be a non-empty list of strings"
        )
    return tuple(names)


def parse_examples(lines: Iterable[str], name: str = "<input>") -> ExampleFile:
    """Parse JSONL ``lines`` (e.g. an open file) named ``name`` in messages.

    Raises :class:`JsonlError` ("NAME line N: field 'F': problem") for the first
    bad line, including an id already used on an earlier line.
    """
    examples: list[Example] = []
    numbers: list[int] = []
    first_line: dict[str, int] = {}
    class_names = None
    header_line = None
    try:
        for number, obj in _objects(name, lines):
            if not numbers and class_names is None:
                class_names = _header(name, number, obj)
                if class_names is not None:
                    header_line = number
                    continue
            try:
                example = Example.from_json(obj)
            except ExampleFormatError as exc:
                raise JsonlError(f"{name} line {number}: {exc}") from exc
            if example.id in first_line:
                raise JsonlError(
                    f"{name} line {number}: field 'id': {example.id!r} is already used on "
                    f"line {first_line[example.id]}; ids must be unique"
                )
            first_line[example.id] = number
            examples.append(example)
            numbers.append(number)
    except UnicodeDecodeError as exc:
        raise JsonlError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return ExampleFile(tuple(examples), tuple(numbers), class_names, header_line)


def result_line(index: int, result: ScoreResult) -> str:
    """One output line (with its newline): ``{"index": index, ...result}``."""
    return json.dumps({"index": index, **result.to_json()}, ensure_ascii=False) + "\n"


def write_results(out: TextIO, results: Iterable[ScoreResult], start: int = 0) -> int:
    """Write ``results`` numbered from ``start``; return how many were written."""
    n = 0
    for n, result in enumerate(results, start=1):
        out.write(result_line(start + n - 1, result))
    return n
