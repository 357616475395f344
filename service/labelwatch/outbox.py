"""The durable flag outbox: one SQLite database in WAL mode.

Every flag is written here (one transaction per scored batch) before the
response that reports it leaves the server; sinks and watch consumers then read
it from their own cursor. Tables:

``flags``
    ``position`` (increasing with write order, the cursor unit), ``flag_id``
    (the dedupe key, unique: the same example scored twice is one row),
    ``created_at`` (unix seconds) and the flag's JSON.
``consumers``
    one row per (``kind``, ``name``): ``kind`` is ``sink`` (a delivery worker)
    or ``watch`` (a WatchFlags consumer); ``cursor`` = every position at or
    below it is done for that consumer.
``acks``
    positions above a consumer's cursor acknowledged one by one (by flag id).
``dead_letters``
    per sink, flags that exhausted their delivery attempts, with a copy of the
    flag JSON (retention never removes them); ``requeued_at`` set = deliver again.
``meta``
    counters that outlive the process (pruned flags).

Retention (pruning by age and size) lives in :mod:`labelwatch.retention`.

The outbox never raises ``sqlite3`` errors: every failure to open, read or
write becomes :class:`OutboxError`. After a failed write :attr:`Outbox.writable`
is False (listeners are told) until a later write or :meth:`Outbox.probe` works.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from labelwatch.flag import Flag

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ConsumerKind = Literal["sink", "watch"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flags (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    flag_id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flags_created_at ON flags (created_at);
CREATE TABLE IF NOT EXISTS consumers (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS acks (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (kind, name, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    sink TEXT NOT NULL,
    flag_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    dead_at REAL NOT NULL,
    requeued_at REAL,
    PRIMARY KEY (sink, flag_id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class OutboxError(Exception):
    """The outbox cannot be opened, read or written; the message says why and where."""


class UnknownConsumer(OutboxError):
    """A consumer name that the outbox has never seen."""


@dataclass(frozen=True)
class Consumer:
    """A consumer's state: every position at or below ``cursor`` is done."""

    kind: ConsumerKind
    name: str
    cursor: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class AckResult:
    """Outcome of :meth:`Outbox.ack`: the new cursor and the flag ids not in the outbox."""

    cursor: int
    acked_positions: tuple[int, ...]
    unknown_flag_ids: tuple[str, ...]


@dataclass(frozen=True)
class DeadLetter:
    """A flag a sink gave up on; ``requeued_at`` (unix seconds) set = to be delivered again."""

    sink: str
    flag: Flag
    attempts: int
    error: str
    dead_at: float
    requeued_at: float | None


@dataclass(frozen=True)
class Backlog:
    """One consumer's backlog: flags above its cursor (+ requeued dead letters)."""

    pending: int
    oldest_created_at: float | None


class Outbox:
    """Flag store at ``path`` (created with its parent directories if missing).

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
        try:
            self._connect()
        except OutboxError as exc:
            self._set_writable(False, str(exc))

    # -- connection and health ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
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
            conn.executescript(_SCHEMA)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self.path} has schema version {version}; this labelwatch "
                    f"reads version {SCHEMA_VERSION}"
                )
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        self._conn = conn
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
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the outbox lock, for reads (sqlite errors -> OutboxError)."""
        with self._lock:
            try:
                yield self._connect()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read outbox {self.path}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
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

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # after some I/O errors SQLite has already rolled the transaction back
        with suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def probe(self) -> bool:
        """Try a small write; return (and record) whether the outbox is writable."""
        try:
            with self.transaction() as conn:
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

    # -- flags -----------------------------------------------------------------------------

    def write(self, flags: Sequence[Flag]) -> int:
        """Store ``flags`` in one transaction; return how many were new (not duplicates).

        Raises :class:`OutboxError` (nothing stored) when the write fails.
        """
        if not flags:
            return 0
        rows = [(f.flag_id, f.flagged_at, f.to_json()) for f in flags]
        started = time.perf_counter()
        with self.transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO flags (flag_id, created_at, payload) VALUES (?, ?, ?)",
                rows,
            )
            stored = conn.total_changes - before
        if self.write_observer is not None:
            self.write_observer(time.perf_counter() - started)
        if stored:
            self._notify()
        return stored

    @staticmethod
    def _flag(position: int, payload: str) -> Flag:
        return Flag.from_json(payload).with_position(position)

    def flags(self, *, after: int = 0, limit: int = 100, since: float | None = None) -> list[Flag]:
        """Flags with position > ``after`` (and created at or after ``since``), oldest first."""
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT position, payload FROM flags WHERE position > ? AND created_at >= ? "
                "ORDER BY position LIMIT ?",
                (after, -math.inf if since is None else since, limit),
            ).fetchall()
        return [self._flag(p, payload) for p, payload in rows]

    def get(self, key: str) -> Flag | None:
        """The flag with this flag id, or at this position (all digits), or None."""
        with self.reading() as conn:
            row = conn.execute(
                "SELECT position, payload FROM flags WHERE flag_id = ?", (key,)
            ).fetchone()
            if row is None and key.isdigit():
                row = conn.execute(
                    "SELECT position, payload FROM flags WHERE position = ?", (int(key),)
                ).fetchone()
        return None if row is None else self._flag(row[0], row[1])

    def last_position(self) -> int:
        """The highest position ever assigned (0 for an empty outbox)."""
        with self.reading() as conn:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'flags'").fetchone()
        return int(row[0]) if row else 0

    def position_before(self, created_at: float) -> int:
        """The cursor that starts a consumer at ``created_at`` (unix seconds)."""
        with self.reading() as conn:
            row = conn.execute(
                "SELECT MIN(position) FROM flags WHERE created_at >= ?", (created_at,)
            ).fetchone()
        if row[0] is None:
            return self.last_position()
        return int(row[0]) - 1

    # -- consumers ---------------------------------------------------------------------------

    def consumer(self, kind: ConsumerKind, name: str) -> Consumer | None:
        """The consumer's state, or None if it never connected."""
        with self.reading() as conn:
            row = conn.execute(
                "SELECT kind, name, cursor, created_at, updated_at FROM consumers "
                "WHERE kind = ? AND name = ?",
                (kind, name),
            ).fetchone()
        return None if row is None else Consumer(*row)

    def consumers(self) -> list[Consumer]:
        """Every consumer, sinks first, by name."""
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT kind, name, cursor, created_at, updated_at FROM consumers "
                "ORDER BY kind, name"
            ).fetchall()
        return [Consumer(*r) for r in rows]

    def ensure_consumer(self, kind: ConsumerKind, name: str, *, cursor: int = 0) -> Consumer:
        """Return the consumer, creating it at ``cursor`` (0 = from the first flag) if new."""
        existing = self.consumer(kind, name)
        if existing is not None:
            return existing
        now = self.clock()
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO consumers (kind, name, cursor, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (kind, name, max(0, cursor), now, now),
            )
        found = self.consumer(kind, name)
        assert found is not None
        return found

    def set_cursor(self, kind: ConsumerKind, name: str, cursor: int) -> Consumer:
        """Move a consumer's cursor (back, for a replay); forget its acks above it."""
        now = self.clock()
        with self.transaction() as conn:
            updated = conn.execute(
                "UPDATE consumers SET cursor = ?, updated_at = ? WHERE kind = ? AND name = ?",
                (max(0, cursor), now, kind, name),
            ).rowcount
            if not updated:
                raise UnknownConsumer(f"no {kind} consumer named {name!r} in {self.path}")
            conn.execute("DELETE FROM acks WHERE kind = ? AND name = ?", (kind, name))
        self._notify()
        found = self.consumer(kind, name)
        assert found is not None
        return found

    def pending(
        self, kind: ConsumerKind, name: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[Flag], int]:
        """Up to ``limit`` flags above the cursor (and above ``after``) not yet acked.

        Returns the flags and the highest position scanned (for the next
        ``after``; it also covers acked positions that were skipped).
        """
        with self.reading() as conn:
            row = conn.execute(
                "SELECT cursor FROM consumers WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            if row is None:
                raise UnknownConsumer(f"no {kind} consumer named {name!r}")
            start = max(int(row[0]), after)
            rows = conn.execute(
                "SELECT f.position, f.payload FROM flags f WHERE f.position > ? AND NOT EXISTS "
                "(SELECT 1 FROM acks a WHERE a.kind = ? AND a.name = ? AND a.position = f.position)"
                " ORDER BY f.position LIMIT ?",
                (start, kind, name, limit),
            ).fetchall()
            scanned = start
            if rows:
                scanned = int(rows[-1][0])
            else:
                top = conn.execute("SELECT MAX(position) FROM flags").fetchone()[0]
                scanned = max(start, int(top or 0))
        return [self._flag(p, payload) for p, payload in rows], scanned

    def ack(
        self,
        kind: ConsumerKind,
        name: str,
        *,
        up_to: int = 0,
        flag_ids: Iterable[str] = (),
        positions: Iterable[int] = (),
    ) -> AckResult:
        """Acknowledge every flag at or below ``up_to`` and the given flags/positions.

        ``up_to`` is clamped to the last stored position (flags not yet written
        cannot be acknowledged). The cursor then advances over every position
        acknowledged one by one that directly follows it.
        """
        ids = list(dict.fromkeys(flag_ids))
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT cursor FROM consumers WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            if row is None:
                raise UnknownConsumer(f"no {kind} consumer named {name!r}")
            cursor = int(row[0])
            top = int(conn.execute("SELECT COALESCE(MAX(position), 0) FROM flags").fetchone()[0])
            cursor = max(cursor, min(up_to, top))
            acked = set(positions)
            unknown: list[str] = []
            for flag_id in ids:
                found = conn.execute(
                    "SELECT position FROM flags WHERE flag_id = ?", (flag_id,)
                ).fetchone()
                if found is None:
                    unknown.append(flag_id)
                else:
                    acked.add(int(found[0]))
            conn.executemany(
                "INSERT OR IGNORE INTO acks (kind, name, position) VALUES (?, ?, ?)",
                [(kind, name, p) for p in acked if p > cursor],
            )
            cursor = self._advance(conn, kind, name, cursor)
            conn.execute(
                "UPDATE consumers SET cursor = ?, updated_at = ? WHERE kind = ? AND name = ?",
                (cursor, self.clock(), kind, name),
            )
        self._notify()
        return AckResult(cursor, tuple(sorted(acked)), tuple(unknown))

    def still_pending(self, kind: ConsumerKind, name: str, positions: Iterable[int]) -> set[int]:
        """Which of ``positions`` the consumer has not acknowledged (by cursor or one by one)."""
        wanted = sorted(set(positions))
        if not wanted:
            return set()
        with self.reading() as conn:
            row = conn.execute(
                "SELECT cursor FROM consumers WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            cursor = int(row[0]) if row else 0
            above = [p for p in wanted if p > cursor]
            acked = {
                int(r[0])
                for r in conn.execute(
                    "SELECT position FROM acks WHERE kind = ? AND name = ? AND position >= ?",
                    (kind, name, above[0] if above else 0),
                ).fetchall()
            }
        return {p for p in above if p not in acked}

    @staticmethod
    def _advance(conn: sqlite3.Connection, kind: str, name: str, cursor: int) -> int:
        """Move ``cursor`` over acked positions that follow it; drop acks at or below it."""
        first_unacked = conn.execute(
            "SELECT MIN(f.position) FROM flags f WHERE f.position > ? AND NOT EXISTS "
            "(SELECT 1 FROM acks a WHERE a.kind = ? AND a.name = ? AND a.position = f.position)",
            (cursor, kind, name),
        ).fetchone()[0]
        if first_unacked is None:
            top = conn.execute(
                "SELECT MAX(position) FROM acks WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()[0]
            cursor = max(cursor, int(top or 0))
        else:
            cursor = max(cursor, int(first_unacked) - 1)
        conn.execute(
            "DELETE FROM acks WHERE kind = ? AND name = ? AND position <= ?", (kind, name, cursor)
        )
        return cursor

    def backlog(self, kind: ConsumerKind, name: str) -> Backlog:
        """Flags waiting for a consumer (individual acks not subtracted) and the oldest's time."""
        with self.reading() as conn:
            row = conn.execute(
                "SELECT cursor FROM consumers WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            cursor = int(row[0]) if row else 0
            count = conn.execute(
                "SELECT COUNT(*) FROM flags WHERE position > ?", (cursor,)
            ).fetchone()[0]
            oldest = conn.execute(
                "SELECT created_at FROM flags WHERE position > ? ORDER BY position LIMIT 1",
                (cursor,),
            ).fetchone()
            requeued_count, requeued_oldest = 0, None
            if kind == "sink":
                requeued_count, requeued_oldest = conn.execute(
                    "SELECT COUNT(*), MIN(dead_at) FROM dead_letters "
                    "WHERE sink = ? AND requeued_at IS NOT NULL",
                    (name,),
                ).fetchone()
        times = [t for t in (oldest[0] if oldest else None, requeued_oldest) if t is not None]
        return Backlog(int(count) + int(requeued_count), min(times) if times else None)

    # -- dead letters ------------------------------------------------------------------------

    def dead_letter(self, sink: str, flag: Flag, *, attempts: int, error: str) -> None:
        """Set ``flag`` aside for ``sink`` and move the sink's cursor past it (one transaction)."""
        now = self.clock()
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters "
                "(sink, flag_id, position, payload, attempts, error, dead_at, requeued_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (sink, flag.flag_id, flag.position, flag.to_json(), attempts, error[:2000], now),
            )
            conn.execute(
                "UPDATE consumers SET cursor = MAX(cursor, ?), updated_at = ? "
                "WHERE kind = 'sink' AND name = ?",
                (flag.position, now, sink),
            )

    def dead_letters(
        self, sink: str | None = None, *, requeued: bool | None = None
    ) -> list[DeadLetter]:
        """Dead letters (of one sink, and requeued or not), oldest position first."""
        query = (
            "SELECT sink, position, payload, attempts, error, dead_at, requeued_at "
            "FROM dead_letters WHERE (? IS NULL OR sink = ?)"
        )
        if requeued is True:
            query += " AND requeued_at IS NOT NULL"
        elif requeued is False:
            query += " AND requeued_at IS NULL"
        with self.reading() as conn:
            rows = conn.execute(query + " ORDER BY sink, position", (sink, sink)).fetchall()
        return [
            DeadLetter(s, self._flag(p, payload), a, e, d, r) for s, p, payload, a, e, d, r in rows
        ]

    def requeue_dead(self, sink: str, flag_ids: Sequence[str] = ()) -> int:
        """Mark a sink's dead letters (all, or those ids) for delivery again; return the count."""
        now = self.clock()
        with self.transaction() as conn:
            if flag_ids:
                count = sum(
                    conn.execute(
                        "UPDATE dead_letters SET requeued_at = ? WHERE sink = ? AND flag_id = ?",
                        (now, sink, flag_id),
                    ).rowcount
                    for flag_id in flag_ids
                )
            else:
                count = conn.execute(
                    "UPDATE dead_letters SET requeued_at = ? "
                    "WHERE sink = ? AND requeued_at IS NULL",
                    (now, sink),
                ).rowcount
        if count:
            self._notify()
        return int(count)

    def delivered(self, sink: str, flags: Sequence[Flag]) -> None:
        """Record ``flags`` (a prefix of what :meth:`next_for_sink` gave) as delivered."""
        if not flags:
            return
        now = self.clock()
        with self.transaction() as conn:
            conn.executemany(
                "DELETE FROM dead_letters WHERE sink = ? AND flag_id = ? "
                "AND requeued_at IS NOT NULL",
                [(sink, f.flag_id) for f in flags],
            )
            conn.execute(
                "UPDATE consumers SET cursor = MAX(cursor, ?), updated_at = ? "
                "WHERE kind = 'sink' AND name = ? AND cursor < ?",
                (
                    max(f.position for f in flags),
                    now,
                    sink,
                    max(f.position for f in flags),
                ),
            )

    def next_for_sink(self, sink: str, limit: int) -> tuple[list[Flag], bool]:
        """The next flags for a sink, in order: requeued dead letters first, then new ones.

        Returns the flags and whether they are requeued dead letters.
        """
        requeued = self.dead_letters(sink, requeued=True)[:limit]
        if requeued:
            return [d.flag for d in requeued], True
        flags, _ = self.pending("sink", sink, limit=limit)
        return flags, False

    # -- retention and integrity ----------------------------------------------------------------

    def count(self) -> int:
        """Flags currently stored."""
        with self.reading() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM flags").fetchone()[0])

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result: ``"ok"`` for a sound file."""
        with self.reading() as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)
