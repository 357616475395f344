"""Load labeled multi-label data for the offline commands (``calibrate``, ``audit``).

Two formats, chosen by file extension:

* ``.npz`` (``numpy.savez``): ``pred_probs`` ``(N, K)`` floats in ``[0, 1]``,
  ``labels`` ``(N, K)`` 0/1 (or bool), optional ``class_names`` ``(K,)`` strings
  ``ids`` ``(N,)`` strings or integers and ``annotator_ids`` ``(N,)`` strings.
  Other arrays are ignored. Object
  arrays (pickles) are refused.
* ``.jsonl``: one JSON object a line,
  ``{"id": "a1", "labels": ["cat", "dog"], "probabilities": [0.9, 0.8, 0.1]}``.
  Class names give the column order of ``probabilities``; they come from the
  caller (``--class-names`` or a calibration artifact) or from an optional
  first line ``{"class_names": ["cat", "dog", "bird"]}``. An optional
  ``"annotator_id"`` (a string) names who labeled the example. Blank lines are
  skipped; other keys are ignored.

Every problem raises :class:`DataError` with one line naming the file, the row
(1-based line for ``.jsonl``, 0-based row index for ``.npz``) and the field. A file
that is not in the format its extension promises (empty, truncated, a pickle, a
single ``.npy`` array, gzip-compressed, ...) is named as what it is; nothing in it is
unpickled or executed.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

FORMATS = (".npz", ".jsonl")


class DataError(ValueError):
    """The data file is unusable; the message names the file, row and field."""


@dataclass(frozen=True)
class LabeledData:
    """A labeled dataset of ``N`` examples over ``K`` classes.

    ``pred_probs``: ``(N, K)`` in ``[0, 1]``, float64 (float32 when an ``.npz`` stores it
    so); ``labels``: ``(N, K)`` bool; ``class_names``: ``K`` unique names; ``ids``: ``N``
    unique ids; ``annotator_ids``: ``N`` annotator ids (``""`` unknown), or None when the
    data names no annotator.
    """

    pred_probs: NDArray[np.float64]
    labels: NDArray[np.bool_]
    class_names: tuple[str, ...]
    ids: tuple[str, ...]
    annotator_ids: tuple[str, ...] | None = None

    @property
    def n_examples(self) -> int:
        """N, the number of examples."""
        return int(self.pred_probs.shape[0])

    @property
    def n_classes(self) -> int:
        """K, the number of classes."""
        return int(self.pred_probs.shape[1])


def load(
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    progress: Callable[[float], None] | None = None,
) -> LabeledData:
    """Load ``path`` (``.npz`` or ``.jsonl``).

    ``class_names``, when given, is the expected class order (e.g. from a
    calibration artifact): a file that names its classes must agree with it.
    ``progress`` is called with the fraction of a ``.jsonl`` file read so far
    (0 to 1, every few thousand lines). Raises :class:`DataError`.
    """
    path = Path(path)
    expected = _check_class_names(class_names, "--class-names") if class_names else None
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown data format {suffix or '(none)'!r}; use .npz or .jsonl")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if suffix == ".npz":
        return _load_npz(path, expected)
    return _load_jsonl(path, expected, progress)


def parse_class_names(text: str) -> tuple[str, ...]:
    """Split a comma-separated ``--class-names`` value; raise :class:`DataError` if bad."""
    return _check_class_names([n.strip() for n in text.split(",")], "--class-names")


def _check_class_names(names: Sequence[str], where: str) -> tuple[str, ...]:
    out = tuple(names)
    if not out:
        raise DataError(f"{where}: no class names given")
    seen: dict[str, int] = {}
    for i, name in enumerate(out):
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: class name #{i} must be a non-empty string")
        if name in seen:
            raise DataError(f"{where}: class name {name!r} appears twice (#{seen[name]}, #{i})")
        seen[name] = i
    return out


def _agree(found: tuple[str, ...], expected: tuple[str, ...] | None, where: str) -> None:
    """Raise unless the file's class names equal the expected ones (same order)."""
    if expected is None or found == expected:
        return
    if len(found) != len(expected):
        raise DataError(
            f"{where}: has {len(found)} classes but {len(expected)} were expected "
            "(from --class-names or the thresholds artifact)"
        )
    i = next(i for i, (a, b) in enumerate(zip(found, expected, strict=True)) if a != b)
    raise DataError(
        f"{where}: class #{i} is {found[i]!r} but {expected[i]!r} was expected "
        "(from --class-names or the thresholds artifact)"
    )


# --- what a file really is ----------------------------------------------------------------------

SAVEZ_HINT = "write it with numpy.savez(path, pred_probs=..., labels=...)"


def _head(path: Path, size: int = 8) -> bytes:
    """The first ``size`` bytes of ``path``; :class:`DataError` if it cannot be read."""
    try:
        with path.open("rb") as fh:
            return fh.read(size)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc


def _sniff(head: bytes) -> str | None:
    """Name the formats people mistake for ours, from a file's first bytes (None: unknown).

    >>> _sniff(b"\\x93NUMPY\\x01\\x00"), _sniff(b"\\x80\\x04\\x95"), _sniff(b"{")
    ('a single array saved with numpy.save', 'a Python pickle', None)
    """
    if head.startswith(b"\x93NUMPY"):
        return "a single array saved with numpy.save"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "a zip archive"
    return None


def _reason(exc: BaseException) -> str:
    """A short cause for a corrupt-file message, without numpy's advice to unpickle."""
    text = " ".join(str(exc).split())
    if not text or "pickle" in text:
        return type(exc).__name__
    return text


# --- .npz -------------------------------------------------------------------------------------


_MEMBER_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
"""What reading one array of a corrupt or truncated archive raises."""


def _array(npz: Any, path: Path, name: str) -> NDArray[Any]:
    try:
        arr: NDArray[Any] = np.asarray(npz[name])
    except _MEMBER_ERRORS as exc:
        if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
            # an object array: numpy would need pickle to load it, which we refuse
            raise DataError(
                f"{path}: field {name!r}: object arrays are not allowed (no pickle); "
                "store strings as a fixed-width unicode array, e.g. np.array(names, dtype=str)"
            ) from None
        raise DataError(
            f"{path}: field {name!r}: cannot be read, the archive is corrupt or truncated "
            f"({_reason(exc)})"
        ) from None
    return arr


def _open_npz(path: Path) -> Any:
    """``np.load`` of a file checked to be a zip archive, or a :class:`DataError` saying
    what the file is instead (numpy's own errors would suggest unpickling it)."""
    head = _head(path)
    if not head:
        raise DataError(f"{path}: the file is empty (0 bytes); {SAVEZ_HINT}")
    kind = _sniff(head)
    if kind != "a zip archive":
        what = "not an .npz archive (not a zip file)" if kind is None else f"{kind}, not .npz"
        if kind == "a Python pickle":
            what += " (pickles are never loaded: they can run code)"
        raise DataError(f"{path}: is {what}; {SAVEZ_HINT}")
    try:
        return np.load(path, allow_pickle=False)
    except _MEMBER_ERRORS:
        # the zip directory sits at the end of the file: a cut-off archive fails here
        raise DataError(
            f"{path}: is truncated or corrupt (its zip directory, at the end of the file, "
            f"cannot be read); {SAVEZ_HINT}"
        ) from None


def _first_bad(mask: NDArray[np.bool_]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _npz_matrix(arr: NDArray[Any], path: Path, name: str, shape: tuple[int, ...] | None) -> None:
    if arr.ndim != 2:
        raise DataError(
            f"{path}: field {name!r}: expected a 2-D (N, K) array, got shape {arr.shape}"
        )
    if shape is not None and arr.shape != shape:
        raise DataError(
            f"{path}: field {name!r}: shape {arr.shape} differs from pred_probs shape {shape}"
        )
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{path}: field {name!r}: expected numbers, got dtype {arr.dtype}")


def _npz_strings(arr: NDArray[Any], path: Path, name: str, n: int) -> tuple[str, ...]:
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"{path}: field {name!r}: expected shape ({n},), got {arr.shape}")
    if arr.dtype.kind == "S":
        try:
            return tuple(v.decode("utf-8") for v in arr.tolist())
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: field {name!r}: bytes are not UTF-8") from exc
    if arr.dtype.kind in "Uiu":
        return tuple(str(v) for v in arr.tolist())
    raise DataError(f"{path}: field {name!r}: expected strings, got dtype {arr.dtype}")


def _load_npz(path: Path, expected: tuple[str, ...] | None) -> LabeledData:
    npz = _open_npz(path)
    with npz:
        if not npz.files:
            raise DataError(f"{path}: the archive holds no arrays; {SAVEZ_HINT}")
        for name in ("pred_probs", "labels"):
            if name not in npz.files:
                raise DataError(
                    f"{path}: field {name!r} is missing (the file has: {', '.join(npz.files)})"
                )
        probs = _array(npz, path, "pred_probs")
        _npz_matrix(probs, path, "pred_probs", None)
        n, k = probs.shape
        if n == 0 or k == 0:
            raise DataError(f"{path}: field 'pred_probs': empty array of shape {probs.shape}")
        raw_labels = _array(npz, path, "labels")
        _npz_matrix(raw_labels, path, "labels", probs.shape)
        names = (
            _npz_strings(_array(npz, path, "class_names"), path, "class_names", k)
            if "class_names" in npz.files
            else None
        )
        ids = (
            _npz_strings(_array(npz, path, "ids"), path, "ids", n)
            if "ids" in npz.files
            else tuple(str(i) for i in range(n))
        )
        annotators = (
            _npz_strings(_array(npz, path, "annotator_ids"), path, "annotator_ids", n)
            if "annotator_ids" in npz.files
            else None
        )
    if probs.dtype != np.float32:  # float32 stays: the audit then equals cleanlab's float32 run
        probs = probs.astype(np.float64, copy=False)
    bad = ~np.isfinite(probs)
    if bad.any():
        i, j = _first_bad(bad)
        raise DataError(
            f"{path} row {i}: field 'pred_probs[{i}, {j}]': {probs[i, j].item()} is not finite"
        )
    bad = (probs < 0.0) | (probs > 1.0)
    if bad.any():
        i, j = _first_bad(bad)
        value = probs[i, j].item()
        raise DataError(
            f"{path} row {i}: field 'pred_probs[{i}, {j}]': {value!r} is outside [0, 1]"
        )
    bad = (raw_labels != 0) & (raw_labels != 1)
    if bad.any():
        i, j = _first_bad(bad)
        raise DataError(
            f"{path} row {i}: field 'labels[{i}, {j}]': {raw_labels[i, j].item()!r} is not 0 or 1"
        )
    if names is None:
        names = expected if expected is not None else tuple(str(j) for j in range(k))
    else:
        names = _check_class_names(names, f"{path}: field 'class_names'")
    _agree(names, expected, f"{path}: field 'class_names'")
    first: dict[str, int] = {}
    for i, id_ in enumerate(ids):
        if id_ in first:
            raise DataError(f"{path} row {i}: field 'ids': {id_!r} duplicates row {first[id_]}")
        first[id_] = i
    return LabeledData(
        pred_probs=np.ascontiguousarray(probs),
        labels=np.ascontiguousarray(raw_labels == 1),
        class_names=names,
        ids=ids,
        annotator_ids=annotators,
    )


# --- .jsonl -----------------------------------------------------------------------------------


PROGRESS_EVERY_LINES = 4096
"""How often :func:`load` reports the fraction of a JSONL file read."""


def _lines(
    path: Path, progress: Callable[[float], None] | None = None
) -> Iterator[tuple[int, str, bool]]:
    """Yield ``(1-based line number, stripped text, ends with a newline)`` of non-blank lines.

    A file whose first bytes show another format (gzip, zip, pickle, ``.npy``) is refused
    before any line is read.
    """
    kind = _sniff(_head(path))
    if kind is not None:
        raise DataError(
            f"{path}: is {kind}, not JSON Lines text (one JSON object a line, UTF-8)"
            + ("; decompress it first (gunzip)" if kind == "gzip-compressed" else "")
        )
    read = 0
    try:
        size = max(1, path.stat().st_size)
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                read += len(raw)
                if progress is not None and number % PROGRESS_EVERY_LINES == 0:
                    progress(read / size)
                try:
                    text = raw.decode("utf-8").strip()
                except UnicodeDecodeError as exc:
                    where = read - len(raw) + exc.start
                    raise DataError(
                        f"{path}: not UTF-8 text ({exc.reason} at byte {where})"
                    ) from exc
                if text:
                    yield number, text, raw.endswith(b"\n")
        if progress is not None:
            progress(1.0)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc


def _parse(path: Path, number: int, text: str, complete: bool = True) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        # a cut-off copy ends mid-line: say so rather than only where the JSON broke
        cut = "" if complete else "; the file ends inside this line (truncated?)"
        raise DataError(
            f"{path} line {number}: invalid JSON: {exc.msg} (column {exc.colno}){cut}"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} line {number}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _jsonl_id(value: Any, where: str) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: field 'id': must be a non-empty string (got {value!r})")


def _jsonl_probs(value: Any, where: str, k: int) -> list[float]:
    if not isinstance(value, list):
        raise DataError(f"{where}: field 'probabilities': must be a list of {k} numbers")
    if len(value) != k:
        raise DataError(
            f"{where}: field 'probabilities': has {len(value)} values, expected {k} (one per class)"
        )
    for j, p in enumerate(value):
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise DataError(f"{where}: field 'probabilities[{j}]': {p!r} is not a number")
        if not math.isfinite(p):
            raise DataError(f"{where}: field 'probabilities[{j}]': {p} is not finite")
        if not 0.0 <= p <= 1.0:
            raise DataError(f"{where}: field 'probabilities[{j}]': {p!r} is outside [0, 1]")
    return value


def _jsonl_labels(value: Any, where: str, index: dict[str, int]) -> list[int]:
    if not isinstance(value, list):
        raise DataError(f"{where}: field 'labels': must be a list of class names")
    out: list[int] = []
    for name in value:
        k = index.get(name) if isinstance(name, str) else None
        if k is None:
            raise DataError(f"{where}: field 'labels': unknown class name {name!r}")
        out.append(k)
    return out


def _objects(
    path: Path, progress: Callable[[float], None] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(1-based line number, parsed object)`` for each non-blank line."""
    for number, text, complete in _lines(path, progress):
        yield number, _parse(path, number, text, complete)


def _load_jsonl(
    path: Path,
    expected: tuple[str, ...] | None,
    progress: Callable[[float], None] | None = None,
) -> LabeledData:
    objects = _objects(path, progress)
    first = next(objects, None)
    if first is None:
        raise DataError(f"{path}: no examples (the file is empty)")
    names = expected
    if "class_names" in first[1]:
        where = f"{path} line {first[0]}: field 'class_names'"
        raw = first[1]["class_names"]
        if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
            raise DataError(f"{where}: must be a list of strings")
        names = _check_class_names(raw, where)
        _agree(names, expected, where)
        rows = objects
    else:
        rows = _chain(first, objects)
    if names is None:
        raise DataError(
            f"{path}: the class order is unknown; give --class-names a,b,c, or --thresholds, "
            'or start the file with a line {"class_names": ["a", "b", "c"]}'
        )
    index = {name: k for k, name in enumerate(names)}
    k = len(names)
    probs: list[list[float]] = []
    tags: list[list[int]] = []
    ids: list[str] = []
    annotators: list[str] = []
    first_line: dict[str, int] = {}
    for number, obj in rows:
        where = f"{path} line {number}"
        for field in ("id", "labels", "probabilities"):
            if field not in obj:
                raise DataError(f"{where}: field {field!r} is missing")
        id_ = _jsonl_id(obj["id"], where)
        if id_ in first_line:
            raise DataError(f"{where}: field 'id': {id_!r} duplicates line {first_line[id_]}")
        first_line[id_] = number
        ids.append(id_)
        who = obj.get("annotator_id", "")
        if not isinstance(who, str):
            raise DataError(f"{where}: field 'annotator_id': must be a string")
        annotators.append(who)
        probs.append(_jsonl_probs(obj["probabilities"], where, k))
        tags.append(_jsonl_labels(obj["labels"], where, index))
    if not ids:
        raise DataError(f"{path}: no examples (only a class_names line)")
    labels = np.zeros((len(ids), k), dtype=np.bool_)
    for i, row in enumerate(tags):
        labels[i, row] = True
    return LabeledData(
        pred_probs=np.asarray(probs, dtype=np.float64).reshape(len(ids), k),
        labels=labels,
        class_names=names,
        ids=tuple(ids),
        annotator_ids=tuple(annotators) if any(annotators) else None,
    )


def _chain(
    head: tuple[int, dict[str, Any]], rest: Iterator[tuple[int, dict[str, Any]]]
) -> Iterator[tuple[int, dict[str, Any]]]:
    yield head
    yield from rest
