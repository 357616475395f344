"""The outbox file's schema version: new files, files written by earlier releases, newer files.

A version-1 file is built here with the exact statements the released outbox ran
(``outbox.py`` and, outside the version, ``labelstudio/writequeue.py``), filled with
rows of every table, and opened by today's :class:`Outbox`.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest

from labelwatch.flag_record import Flag
from labelwatch.labelstudio.writequeue import WriteBack, WriteBackQueue
from labelwatch.outbox import SCHEMA_VERSION, Outbox
from labelwatch.outbox.schema import MIGRATIONS
from support_delivery import make_flag

# the released version-1 schema, verbatim (service/labelwatch/outbox.py before the package)
V1_SCHEMA = """
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

# created on first use by the released write-back queue, outside the schema version
V1_WRITEBACKS = """
CREATE TABLE IF NOT EXISTS ls_writebacks (
    key TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ls_writebacks_due ON ls_writebacks (due_at);
"""

WRITE = WriteBack(
    project_id=1,
    task_id=7,
    annotation_id=70,
    version="2026-01-01T00:00:00Z",
    label_quality=0.12,
    flagged=True,
    issues=(("dog", "missing", 0.97),),
    suggested=("cat", "dog"),
    model_version="m-1",
    choices_name="labels",
    to_name="text",
)


def write_v1_file(path: Path, *, writebacks: str | None) -> list[Flag]:
    """A version-1 outbox as the released code left it, with rows in every table.

    ``writebacks``: None = the write-back table was never used; "" = created, empty;
    "row" = created and holding :data:`WRITE` after two failed tries.
    """
    flags = [make_flag(i) for i in range(6)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(V1_SCHEMA)
    conn.execute("PRAGMA user_version = 1")
    conn.executemany(
        "INSERT INTO flags (flag_id, created_at, payload) VALUES (?, ?, ?)",
        [(f.flag_id, f.flagged_at, f.to_json()) for f in flags],
    )
    conn.executemany(
        "INSERT INTO consumers VALUES (?, ?, ?, ?, ?)",
        [("sink", "nats", 2, 10.0, 11.0), ("watch", "ui", 0, 10.0, 12.0)],
    )
    conn.execute("INSERT INTO acks VALUES ('watch', 'ui', 3)")
    conn.execute(
        "INSERT INTO dead_letters VALUES ('nats', ?, 2, ?, 10, 'HTTP 400: bad', 20.0, NULL)",
        (flags[1].flag_id, flags[1].to_json()),
    )
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)", [("pruned_total", "7"), ("pruned_unsent_total", "2")]
    )
    if writebacks is not None:
        conn.executescript(V1_WRITEBACKS)
    if writebacks == "row":
        conn.execute(
            "INSERT INTO ls_writebacks VALUES (?, ?, ?, 30.0, 2, 0.0, 'HTTP 503')",
            (WRITE.key, WRITE.version, WRITE.to_json()),
        )
    conn.close()
    return flags


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def schema_of(path: Path) -> dict[str, object]:
    """Every table's columns and every index's columns, by name."""
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        shape: dict[str, object] = {}
        for kind, name in objects:
            pragma = "table_info" if kind == "table" else "index_info"
            shape[f"{kind} {name}"] = conn.execute(f"PRAGMA {pragma}({name})").fetchall()
        return shape
    finally:
        conn.close()


def test_migrations_are_numbered_one_after_the_other() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert SCHEMA_VERSION == MIGRATIONS[-1].version == 6


def test_a_new_file_gets_the_current_version(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "new.sqlite3")
    assert outbox.writable
    outbox.close()
    assert user_version(tmp_path / "new.sqlite3") == SCHEMA_VERSION


@pytest.mark.parametrize("writebacks", [None, "", "row"], ids=["no-ls-table", "empty", "row"])
def test_a_version_1_file_migrates_and_keeps_every_row(
    tmp_path: Path, writebacks: str | None
) -> None:
    path = tmp_path / "v1.sqlite3"
    flags = write_v1_file(path, writebacks=writebacks)
    outbox = Outbox(path, clock=lambda: 100.0)
    assert outbox.writable, outbox.last_error
    assert user_version(path) == SCHEMA_VERSION
    stored = outbox.flags(limit=100)
    assert stored == [f.with_position(i + 1) for i, f in enumerate(flags)]
    assert outbox.last_position() == 6
    nats = outbox.consumer("sink", "nats")
    assert nats is not None and (nats.cursor, nats.created_at, nats.updated_at) == (2, 10.0, 11.0)
    # position 3 was acknowledged on its own (above the cursor): it stays acknowledged
    pending, _ = outbox.pending("watch", "ui", limit=100)
    assert [f.position for f in pending] == [1, 2, 4, 5, 6]
    (letter,) = outbox.dead_letters("nats")
    assert (letter.flag, letter.attempts, letter.error) == (
        flags[1].with_position(2),
        10,
        "HTTP 400: bad",
    )
    assert outbox.counters() == {"pruned_total": 7, "pruned_unsent_total": 2}
    queue = WriteBackQueue(outbox)
    if writebacks == "row":
        assert queue.pending() == (1, 30.0)
        (claimed,) = queue.claim(10)
        assert (claimed.write, claimed.attempts) == (WRITE, 2)
        # the task id was taken from the key: another write of task 7 waits for the lease
        queue.put(dataclasses.replace(WRITE, annotation_id=71))
        assert queue.claim(10) == []
    else:
        assert queue.pending() == (0, None)
        queue.put(WRITE)
        assert [c.write for c in queue.claim(10)] == [WRITE]
    assert outbox.integrity_check() == "ok"
    outbox.close()


def test_a_migrated_file_has_the_same_tables_as_a_new_one(tmp_path: Path) -> None:
    write_v1_file(tmp_path / "old.sqlite3", writebacks=None)
    Outbox(tmp_path / "old.sqlite3").close()
    Outbox(tmp_path / "new.sqlite3").close()
    assert schema_of(tmp_path / "old.sqlite3") == schema_of(tmp_path / "new.sqlite3")


def test_processes_opening_an_old_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    write_v1_file(path, writebacks="row")
    start = threading.Barrier(4)
    opened: list[Outbox] = []

    def open_it() -> None:
        start.wait()
        opened.append(Outbox(path))  # own connection each, like separate processes

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [box.writable for box in opened] == [True] * 4
    assert {box.count() for box in opened} == {6}
    assert WriteBackQueue(opened[0]).pending() == (1, 30.0)
    for box in opened:
        box.close()
    assert user_version(path) == SCHEMA_VERSION


def test_a_failing_migration_leaves_the_file_at_its_old_version(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    write_v1_file(path, writebacks=None)
    conn = sqlite3.connect(path)
    # a view in the way: version 2's index on ls_writebacks cannot be created
    conn.execute("CREATE VIEW ls_writebacks AS SELECT 1 AS due_at")
    conn.commit()
    conn.close()
    outbox = Outbox(path)
    assert not outbox.writable and "cannot open outbox" in outbox.last_error
    assert user_version(path) == 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM flags").fetchone()[0] == 6
    conn.close()


def test_a_file_from_a_newer_labelwatch_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    Outbox(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    outbox = Outbox(path)
    assert not outbox.writable
    assert f"schema version {SCHEMA_VERSION + 1}" in outbox.last_error
    assert "newer labelwatch" in outbox.last_error
    assert user_version(path) == SCHEMA_VERSION + 1


def test_processes_creating_a_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    # --workers N: every worker creates the same new file; a late one must not set the
    # version back to 1 after an early one reached the current version
    for attempt in range(5):
        path = tmp_path / f"new-{attempt}.sqlite3"
        start = threading.Barrier(4)
        opened: list[Outbox] = []

        def open_it(
            path: Path = path, start: threading.Barrier = start, opened: list[Outbox] = opened
        ) -> None:
            start.wait()
            opened.append(Outbox(path))

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [box.last_error for box in opened] == [""] * 4
        for box in opened:
            box.close()
        assert user_version(path) == SCHEMA_VERSION
