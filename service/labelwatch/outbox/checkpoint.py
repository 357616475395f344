"""WAL checkpoints off the write path: one background thread for every outbox of the process.

A write to a WAL database appends pages to the ``-wal`` file; a checkpoint copies
them back into the database file and, with ``synchronous`` FULL or NORMAL, waits
for an fsync. SQLite runs one automatically inside the commit that crosses
``wal_autocheckpoint`` pages (1000 by default), so that one commit, and the scoring
call waiting for its flags to be stored, would take tens of milliseconds where the
others take a fraction of one. The outbox's own connection therefore checkpoints
only past :data:`BACKSTOP_PAGES` (in case this thread falls behind), and
:data:`CHECKPOINTER` checkpoints every outbox written since its last round, every
:data:`INTERVAL_SECONDS`, from a connection of its own: a PASSIVE checkpoint, which
never waits for readers or writers (the flags' durability is the commit's, unchanged).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.25
"""Seconds between two rounds of background checkpoints."""
BACKSTOP_PAGES = 20000
"""``wal_autocheckpoint`` of the outbox's own connection (pages of 4 KiB: ~80 MiB of WAL)."""


class Checkpointer:
    """Checkpoints the files it is told were written, in a daemon thread started on demand.

    The thread ends after a round with nothing to do, so an idle process has none.
    """

    def __init__(self, interval: float = INTERVAL_SECONDS) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._written: set[Path] = set()
        self._thread: threading.Thread | None = None
        self.rounds = 0
        """Checkpoints run so far (all files)."""

    def wrote(self, path: Path) -> None:
        """``path`` (a WAL database) got a commit: checkpoint it in the next round."""
        with self._lock:
            self._written.add(path)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="outbox-checkpoint", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)  # a period, not a synchronisation
            with self._lock:
                paths, self._written = self._written, set()
                if not paths:  # idle: end; the next write starts a new thread
                    self._thread = None
                    return
            for path in paths:
                try:
                    checkpoint(path)
                except Exception:  # keep the thread: a dead one would never be restarted
                    log.exception("event=outbox_checkpoint_failed path=%s", path)
                self.rounds += 1


def checkpoint(path: Path) -> None:
    """A PASSIVE checkpoint of the WAL database at ``path``; never creates the file.

    Failures (file gone, locked, unreadable) are logged at debug level only: the next
    round, or the writer's own backstop, checkpoints later.
    """
    try:
        conn = sqlite3.connect(
            f"file:{quote(str(path))}?mode=rw", uri=True, timeout=0, isolation_level=None
        )
    except sqlite3.Error as exc:
        log.debug("event=outbox_checkpoint_skipped path=%s error=%r", path, exc)
        return
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as exc:
        log.debug("event=outbox_checkpoint_skipped path=%s error=%r", path, exc)
    finally:
        conn.close()


CHECKPOINTER = Checkpointer()
"""The process's checkpointer, shared by every :class:`~labelwatch.outbox.store.Store`."""
