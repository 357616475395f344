"""WAL checkpoints run in the background, not inside the commit that stores a batch's flags."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from labelwatch.outbox import Outbox
from labelwatch.outbox.checkpoint import BACKSTOP_PAGES, CHECKPOINTER, checkpoint
from support_delivery import make_flag


def _poll(what: str, probe: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_outbox_connection_checkpoints_only_as_a_backstop(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    with box._reading() as conn:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES
    box.close()


def test_written_flags_are_checkpointed_in_the_background_and_the_thread_then_ends(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    _poll("the checkpointer to go idle", lambda: CHECKPOINTER._thread is None)
    size = path.stat().st_size  # pages written since are in the WAL until a checkpoint
    for start in range(0, 200, 20):
        box.write([make_flag(i) for i in range(start, start + 20)])
    # far below the connection's own backstop: only the background thread copies them
    _poll("a background checkpoint", lambda: path.stat().st_size > size)
    _poll("the checkpointer to go idle", lambda: CHECKPOINTER._thread is None)
    assert box.count() == 200 and box.integrity_check() == "ok"
    box.close()


def test_a_checkpoint_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    checkpoint(tmp_path / "gone.sqlite3")
    assert list(tmp_path.iterdir()) == []
