"""The connection under every outbox table: one SQLite file in WAL mode, one lock.

:class:`Store` opens (and migrates, :mod:`labelwatch.outbox.schema`) the file,
runs reads and IMMEDIATE transactions under its lock, turns every ``sqlite3``
failure into :class:`~labelwatch.outbox.records.OutboxError`, and tracks whether
the file can be written (listeners are told when that changes). The table
modules of this package subclass it; nothing outside the package gets a
connection.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

from labelwatch.outbox.checkpoint import BACKSTOP_PAGES, CHECKPOINTER
from labelwatch.outbox.records import OutboxError
from labelwatch.outbox.schema import migrate

log = logging.getLogger(__name__)


class _Locked(Exception):
    """Opening met ``database is locked`` (retried by :meth:`Store._connect`)."""


class Store:
    """The outbox file at ``path`` (created with its parent directories if missing).

    Thread-safe: one connection guarded by a lock. Other processes (the
    ``labelwatch flags`` admin command) may open the same file; SQLite's
    locking and a ``busy_timeout`` serialise them. ``synchronous`` is SQLite's
    ``FULL`` (a committed batch survives power loss) or ``NORMAL`` (survives a
    process crash, may lose the last commits on power loss). ``clock`` returns
    unix seconds. With ``create=False`` a missing file is an error (admin use).
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Callable[[], float] = time.time,
        create: bool = True,
        busy_timeout_seconds: float = 10.0,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self.clock = clock
        self._create = create
        self._busy_ms = int(busy_timeout_seconds * 1000)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._writable = True
        self._last_error = ""
        self._write_listeners: list[Callable[[], None]] = []
        self.write_observer: Callable[[float], None] | None = None
        """Called with the seconds each :meth:`write` transaction took (metrics)."""
        self._writable_listeners: list[Callable[[bool], None]] = []
        self._class_lists: dict[int, tuple[str, ...]] = {}
        """``flag_classes`` rows seen through this connection, by id (see ``flags``)."""
        self._class_list_ids: dict[tuple[str, ...], int] = {}
        try:
            self._connect()
        except OutboxError as exc:
            self._set_writable(False, str(exc))

    # -- connection and health ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        # processes creating one new file at once (--workers) can meet SQLITE_BUSY while
        # one of them switches it to WAL, which SQLite reports without waiting: try again
        deadline = time.monotonic() + self._busy_ms / 1000
        while True:
            try:
                return self._open()
            except _Locked as exc:
                if time.monotonic() >= deadline:
                    raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
                time.sleep(0.02)

    def _open(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            if self._create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.is_file():
                raise OutboxError(f"no outbox at {self.path} (is --outbox/--data-dir right?)")
            conn = sqlite3.connect(
                str(self.path),
                timeout=self._busy_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"cannot put outbox {self.path} in WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            # checkpoints run in the background (outbox.checkpoint); this is the backstop
            conn.execute(f"PRAGMA wal_autocheckpoint = {int(BACKSTOP_PAGES)}")
            migrate(conn, self.path)
        except (sqlite3.Error, OSError, OutboxError) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, OutboxError):
                raise
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise _Locked(str(exc)) from exc
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        self._conn = conn
        self._class_lists.clear()  # another file may be behind the new connection
        self._class_list_ids.clear()
        return conn

    @property
    def writable(self) -> bool:
        """False after a failed write, until a later write or :meth:`probe` succeeds."""
        return self._writable

    @property
    def last_error(self) -> str:
        """The last open/write failure ("" if none)."""
        return self._last_error

    def add_write_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each commit that stored new flags or moved a cursor."""
        self._write_listeners.append(callback)

    def add_writable_listener(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(writable)`` whenever :attr:`writable` changes."""
        self._writable_listeners.append(callback)

    def _set_writable(self, writable: bool, error: str = "") -> None:
        if error:
            self._last_error = error
        if writable == self._writable:
            return
        self._writable = writable
        if writable:
            log.info("event=outbox_writable path=%s", self.path)
        else:
            log.error("event=outbox_unwritable path=%s error=%r", self.path, error)
        for callback in list(self._writable_listeners):
            callback(writable)

    def _notify(self) -> None:
        for callback in list(self._write_listeners):
            callback()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the outbox lock, for reads (sqlite errors -> OutboxError)."""
        with self._lock:
            try:
                yield self._connect()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; a storage failure rolls back and marks the outbox unwritable.

        Exceptions raised by the caller's block that are not storage failures
        (e.g. :class:`UnknownConsumer`) roll back without touching :attr:`writable`.
        Listeners are not notified: callers that add flags or move cursors do that.
        """
        with self._lock:
            try:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
            except OutboxError as exc:
                self._set_writable(False, str(exc))
                raise
            except (sqlite3.Error, OSError) as exc:
                error = f"cannot write outbox {self.path}: {exc}"
                self._set_writable(False, error)
                raise OutboxError(error) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                self._rollback(conn)
                error = f"cannot write outbox {self.path}: {exc}"
                self._set_writable(False, error)
                raise OutboxError(error) from exc
            except BaseException:
                self._rollback(conn)
                raise
            self._set_writable(True)
        CHECKPOINTER.wrote(self.path)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # after some I/O errors SQLite has already rolled the transaction back
        with suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def probe(self) -> bool:
        """Try a small write; return (and record) whether the outbox is writable."""
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?)",
                    (repr(self.clock()),),
                )
        except OutboxError:
            return False
        return True

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result: ``"ok"`` for a sound file."""
        with self._reading() as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)
