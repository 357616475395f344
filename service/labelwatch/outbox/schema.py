"""The outbox's one schema version and the migrations that reach it.

The database file carries its version in SQLite's ``PRAGMA user_version``. A new
file starts at 0 and runs every migration; a file written by an older labelwatch
runs the ones it lacks; a file newer than this code is refused (never downgraded).
Each migration after the first runs in one ``BEGIN IMMEDIATE`` transaction
together with the new ``user_version``, so a crash leaves the file at the old
version, and several processes opening the same file at once apply it once (the
version is read again under the write lock). Migration 1 on a new file runs
statement by statement, as every release up to version 1 created its files, so a
new file's first pages are laid out as they always were; its statements are
``IF NOT EXISTS``, so concurrent creators and a crash midway are harmless.

Versions:

1. ``flags``, ``consumers``, ``acks``, ``dead_letters``, ``meta`` (the outbox as
   first released).
2. ``ls_writebacks``: the Label Studio write-back queue. Before version 2 it was
   created on first use outside the version, so a version-1 file may already hold
   it (with rows): the statements are ``IF NOT EXISTS`` and keep them.
3. ``ls_events`` (Label Studio webhook events, stored before the 202) and
   ``ls_annotations`` (the last scored version of each annotation); the
   write-back queue gets ``task_id``, ``lease_until`` and ``lease_owner`` (one
   task written by one process at a time; a dead owner's leases can be released).
4. ``verdicts``: reviewers' verdicts on flagged classes, one per (flag, class,
   reviewer), with what the flag said about the class (kind, probability,
   calibrated error probability) and its annotator, so statistics outlive the
   flag's retention; ``annotators``: examples scored and flagged per annotator.
5. ``cutoffs``: versions of the per-class cut-offs adapted to verdicts.
6. flags stored as columns (:mod:`labelwatch.flag_columns`): ``flags`` gets the
   columns of that form, ``classes`` (NULL: the row holds the flag as JSON in
   ``payload``, as every row did before) referring to ``flag_classes``, the class
   lists (JSON arrays of names) the packed class indices refer to. Rows written
   before keep their JSON and read as before.

To change the schema, append a :class:`Migration` (never edit a released one);
see the :mod:`labelwatch.outbox` docstring.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from labelwatch.outbox.records import OutboxError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """Statements that take a file from version ``version - 1`` to ``version``."""

    version: int
    summary: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "flags, consumer cursors, acks, dead letters, meta counters",
        (
            """CREATE TABLE IF NOT EXISTS flags (
                position INTEGER PRIMARY KEY AUTOINCREMENT,
                flag_id TEXT NOT NULL UNIQUE,
                created_at REAL NOT NULL,
                payload TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS flags_created_at ON flags (created_at)",
            """CREATE TABLE IF NOT EXISTS consumers (
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                cursor INTEGER NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (kind, name)
            )""",
            """CREATE TABLE IF NOT EXISTS acks (
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                position INTEGER NOT NULL,
                PRIMARY KEY (kind, name, position)
            ) WITHOUT ROWID""",
            """CREATE TABLE IF NOT EXISTS dead_letters (
                sink TEXT NOT NULL,
                flag_id TEXT NOT NULL,
                position INTEGER NOT NULL,
                payload TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                error TEXT NOT NULL,
                dead_at REAL NOT NULL,
                requeued_at REAL,
                PRIMARY KEY (sink, flag_id)
            )""",
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ),
    ),
    Migration(
        2,
        "Label Studio write-back queue (ls_writebacks), now inside the schema version",
        (
            """CREATE TABLE IF NOT EXISTS ls_writebacks (
                key TEXT PRIMARY KEY,
                version TEXT NOT NULL,
                payload TEXT NOT NULL,
                created_at REAL NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                due_at REAL NOT NULL,
                error TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX IF NOT EXISTS ls_writebacks_due ON ls_writebacks (due_at)",
        ),
    ),
    Migration(
        3,
        "Label Studio event inbox (ls_events), annotations seen (ls_annotations), "
        "write-back leases per task",
        (
            """CREATE TABLE ls_events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                annotation_id INTEGER NOT NULL,
                action TEXT NOT NULL,
                payload TEXT NOT NULL,
                received_at REAL NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                due_at REAL NOT NULL,
                error TEXT NOT NULL DEFAULT '',
                lease_owner TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX ls_events_annotation ON ls_events (annotation_id, id)",
            """CREATE TABLE ls_annotations (
                annotation_id INTEGER PRIMARY KEY,
                project_id INTEGER NOT NULL,
                task_id INTEGER NOT NULL,
                version TEXT NOT NULL,
                annotator TEXT NOT NULL DEFAULT '',
                payload TEXT NOT NULL,
                updated_at REAL NOT NULL
            )""",
            "ALTER TABLE ls_writebacks ADD COLUMN task_id INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE ls_writebacks ADD COLUMN lease_until REAL NOT NULL DEFAULT 0",
            "ALTER TABLE ls_writebacks ADD COLUMN lease_owner TEXT NOT NULL DEFAULT ''",
            # rows queued by version 2 carry their task only in the key '<task>:<annotation>'
            "UPDATE ls_writebacks SET task_id = CAST(substr(key, 1, instr(key, ':') - 1) "
            "AS INTEGER)",
            "CREATE INDEX ls_writebacks_task ON ls_writebacks (task_id, lease_until)",
        ),
    ),
    Migration(
        4,
        "verdicts on flagged classes, per-annotator counts",
        (
            """CREATE TABLE verdicts (
                flag_id TEXT NOT NULL,
                label TEXT NOT NULL,
                reviewer TEXT NOT NULL,
                verdict TEXT NOT NULL,
                note TEXT NOT NULL DEFAULT '',
                source TEXT NOT NULL,
                kind TEXT NOT NULL,
                probability REAL NOT NULL,
                error_probability REAL,
                annotator_id TEXT NOT NULL DEFAULT '',
                decided_at REAL NOT NULL,
                PRIMARY KEY (flag_id, label, reviewer)
            )""",
            "CREATE INDEX verdicts_label ON verdicts (label, verdict)",
            "CREATE INDEX verdicts_annotator ON verdicts (annotator_id, flag_id)",
            """CREATE TABLE annotators (
                annotator_id TEXT PRIMARY KEY,
                scored INTEGER NOT NULL DEFAULT 0,
                flagged INTEGER NOT NULL DEFAULT 0,
                updated_at REAL NOT NULL
            )""",
        ),
    ),
    Migration(
        5,
        "per-class cut-offs adapted to verdicts, versioned",
        (
            """CREATE TABLE cutoffs (
                version INTEGER PRIMARY KEY AUTOINCREMENT,
                model_version TEXT NOT NULL,
                created_at REAL NOT NULL,
                payload TEXT NOT NULL
            )""",
            "CREATE INDEX cutoffs_model ON cutoffs (model_version, version)",
        ),
    ),
    Migration(
        6,
        "flags stored as columns with packed class indices and values (no JSON per flag)",
        (
            "CREATE TABLE flag_classes (id INTEGER PRIMARY KEY, names TEXT NOT NULL UNIQUE)",
            "ALTER TABLE flags ADD COLUMN classes INTEGER",
            "ALTER TABLE flags ADD COLUMN example_id TEXT",
            "ALTER TABLE flags ADD COLUMN model_version TEXT",
            "ALTER TABLE flags ADD COLUMN annotator_id TEXT",
            "ALTER TABLE flags ADD COLUMN input_text TEXT",
            "ALTER TABLE flags ADD COLUMN input_kind TEXT",
            "ALTER TABLE flags ADD COLUMN label_quality REAL",
            "ALTER TABLE flags ADD COLUMN metadata TEXT",
            "ALTER TABLE flags ADD COLUMN given BLOB",
            "ALTER TABLE flags ADD COLUMN issue_classes BLOB",
            "ALTER TABLE flags ADD COLUMN issue_values BLOB",
        ),
    ),
)

SCHEMA_VERSION: int = MIGRATIONS[-1].version
"""The version this code reads and writes."""


def user_version(conn: sqlite3.Connection) -> int:
    """The file's schema version (0 for a new, empty file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_not_newer(found: int, path: Path) -> None:
    if found > SCHEMA_VERSION:
        raise OutboxError(
            f"outbox {path} has schema version {found}; this labelwatch reads version "
            f"{SCHEMA_VERSION} (the file was written by a newer labelwatch)"
        )


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file behind ``conn`` (autocommit mode) to :data:`SCHEMA_VERSION`.

    Raises :class:`OutboxError` for a file newer than this code (left untouched),
    and lets ``sqlite3.Error`` through (the caller reports it with the path).
    """
    found = initial = user_version(conn)
    if found == SCHEMA_VERSION:
        return
    _check_not_newer(found, path)
    if found == 0:
        # a new file: created as releases up to version 1 created it (see the docstring)
        for statement in MIGRATIONS[0].statements:
            conn.execute(statement)
    ran = initial == 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = user_version(conn)  # again, under the write lock: another process may have won
        _check_not_newer(found, path)
        if found == 0:
            # version 1's statements ran above; set it here, under the lock, so a process
            # that created the file at the same time never moves a newer version back to 1
            found = MIGRATIONS[0].version
            conn.execute(f"PRAGMA user_version = {int(found)}")
        for migration in MIGRATIONS:
            if migration.version <= found:
                continue
            ran = True
            for statement in migration.statements:
                conn.execute(statement)
            # PRAGMA takes no parameters; the value is an int from MIGRATIONS
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if ran:
        log.info(
            "event=outbox_migrated path=%s from_version=%d to_version=%d",
            path,
            initial,
            SCHEMA_VERSION,
        )
