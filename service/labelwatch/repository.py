"""A versioned model repository on disk: which version to serve, and its files.

Layout (``labelwatch serve --model-repository DIR``)::

    DIR/
        1/  model.onnx        (optional: a thresholds-only version scores client
            thresholds.json    probabilities) + the artifact of `labelwatch calibrate`
        2/  ...
        current               (optional) a symlink to a version folder, or a file
                              holding one version name

The served version is the one ``current`` names, else the highest version name
(names compare as "natural" keys: ``v2 < v10``, ``9 < 10``). A version name is a
path-safe token: 1-64 characters from ``[A-Za-z0-9._-]``, starting with a letter or
digit. Entries starting with ``.`` are ignored (copy a new version in as ``.tmp-3``
and rename it to ``3`` when it is complete); plain files other than ``current`` are
ignored too.

Anything else that makes the choice ambiguous or impossible (the folder missing or
unreadable, two ``current`` markers, a folder or marker naming something that is not
a path-safe token, a chosen version without a readable ``thresholds.json``) raises
:class:`RepositoryError`, whose message is the one log line an operator needs. Nothing
here loads a model: :mod:`labelwatch.engine.models` does, from the :class:`ModelVersion`
returned.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.onnx"
THRESHOLDS_FILE = "thresholds.json"
CURRENT_MARKER = "current"

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TOKEN_RULE = "1-64 characters from [A-Za-z0-9._-], starting with a letter or digit"
_MARKER_MAX_BYTES = 256


class RepositoryError(Exception):
    """The repository does not name one loadable version; the message says why and where."""


def is_version_name(name: str) -> bool:
    """True when ``name`` is a path-safe version token.

    >>> [is_version_name(n) for n in ("3", "v2.1-rc_1", "../x", "a b", ".tmp", "")]
    [True, True, False, False, False, False]
    """
    return _TOKEN.fullmatch(name) is not None


def version_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Natural sort key: digit runs compare as numbers.

    >>> sorted(["10", "9", "v10", "v2", "2026-12-01"], key=version_key)
    ['9', '10', '2026-12-01', 'v2', 'v10']
    """
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


@dataclass(frozen=True)
class ModelVersion:
    """One version folder: its name, the model file (None: thresholds only), the artifact."""

    name: str
    directory: Path
    model: Path | None
    thresholds: Path

    def fingerprint(self) -> tuple[object, ...]:
        """Name, size and mtime (ns) of each file: changes when a version's files change."""
        parts: list[object] = [self.name]
        for path in (self.model, self.thresholds):
            if path is None:
                parts.append(None)
                continue
            try:
                st = path.stat()
            except OSError:
                parts.append(None)
                continue
            parts.append((st.st_size, st.st_mtime_ns))
        return tuple(parts)


class ModelRepository:
    """Reads ``root`` (see the module docs); every method re-reads the disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _entries(self) -> list[os.DirEntry[str]]:
        if not self.root.exists():
            raise RepositoryError(f"model repository {self.root} does not exist")
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {self.root} is not a directory")
        try:
            with os.scandir(self.root) as it:
                return list(it)
        except OSError as exc:
            raise RepositoryError(f"model repository {self.root} cannot be read: {exc}") from exc

    def versions(self) -> list[str]:
        """Every version name, lowest first; :class:`RepositoryError` on a bad folder name."""
        names: list[str] = []
        for entry in self._entries():
            if entry.name.startswith(".") or _is_marker(entry.name):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks: a linked version folder counts
            except OSError:
                is_dir = False
            if not is_dir:
                continue
            if not is_version_name(entry.name):
                raise RepositoryError(
                    f"model repository {self.root}: version folder {entry.name!r} is not a "
                    f"path-safe name ({_TOKEN_RULE}); rename or remove it"
                )
            names.append(entry.name)
        return sorted(names, key=version_key)

    def current_marker(self) -> str | None:
        """The version ``current`` names, None without a marker; :class:`RepositoryError`."""
        markers = sorted(e.name for e in self._entries() if _is_marker(e.name))
        if not markers:
            return None
        if len(markers) > 1:
            raise RepositoryError(
                f"model repository {self.root} has {len(markers)} 'current' markers "
                f"({', '.join(markers)}); keep exactly one, named {CURRENT_MARKER!r}"
            )
        (marker_name,) = markers
        marker = self.root / marker_name
        if marker_name != CURRENT_MARKER:
            raise RepositoryError(
                f"model repository {self.root}: the marker must be named {CURRENT_MARKER!r}, "
                f"found {marker_name!r}"
            )
        if marker.is_symlink():
            target = Path(os.readlink(marker))
            resolved = (self.root / target).resolve()
            if resolved.parent != self.root.resolve():
                raise RepositoryError(
                    f"model repository {self.root}: symlink {marker} points to {target}, "
                    "which is not a version folder of this repository"
                )
            name = resolved.name
        elif marker.is_file():
            try:
                with marker.open("rb") as handle:
                    raw = handle.read(_MARKER_MAX_BYTES + 1)
                name = raw.decode("utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise RepositoryError(f"cannot read {marker}: {exc}") from exc
            if len(raw) > _MARKER_MAX_BYTES:
                raise RepositoryError(f"{marker} is too long to be a version name")
        else:
            raise RepositoryError(
                f"{marker} must be a symlink to a version folder or a file naming one"
            )
        if not is_version_name(name):
            raise RepositoryError(
                f"{marker} names {name!r}, which is not a path-safe version name ({_TOKEN_RULE})"
            )
        return name

    def resolve(self, name: str | None = None) -> ModelVersion:
        """The version to serve (``current``, else the highest), or version ``name``.

        Raises :class:`RepositoryError` when it cannot be told or its files are missing.
        """
        if name is not None:
            if not is_version_name(name):
                raise RepositoryError(
                    f"version {name!r} is not a path-safe version name ({_TOKEN_RULE})"
                )
            self.versions()  # a badly named folder is reported whichever version is asked
            return self._version(name, f"version {name!r} was asked for")
        versions = self.versions()
        marked = self.current_marker()
        if marked is not None:
            return self._version(marked, f"'{CURRENT_MARKER}' names version {marked!r}")
        if not versions:
            raise RepositoryError(
                f"model repository {self.root} has no version folders (expected "
                f"{self.root}/<version>/{THRESHOLDS_FILE}, with {MODEL_FILE} beside it)"
            )
        return self._version(versions[-1], f"version {versions[-1]!r} is the highest")

    def _version(self, name: str, why: str) -> ModelVersion:
        directory = self.root / name
        if not directory.is_dir():
            raise RepositoryError(f"{why}, but {directory} is not a version folder")
        try:
            with os.scandir(directory) as it:
                present = {e.name for e in it}
        except OSError as exc:
            raise RepositoryError(f"{why}, but {directory} cannot be read: {exc}") from exc
        thresholds = directory / THRESHOLDS_FILE
        if THRESHOLDS_FILE not in present:
            raise RepositoryError(
                f"{why}, but {thresholds} is missing (every version needs the artifact of "
                "`labelwatch calibrate`)"
            )
        _check_readable(thresholds, why)
        model: Path | None = None
        if MODEL_FILE in present:
            model = directory / MODEL_FILE
            _check_readable(model, why)
        return ModelVersion(name=name, directory=directory, model=model, thresholds=thresholds)


def _is_marker(name: str) -> bool:
    lowered = name.lower()
    return lowered == CURRENT_MARKER or lowered.startswith(CURRENT_MARKER + ".")


def _check_readable(path: Path, why: str) -> None:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise RepositoryError(f"{why}, but {path} cannot be read: {exc}") from exc
