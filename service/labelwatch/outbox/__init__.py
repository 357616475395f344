"""The durable store: one SQLite database in WAL mode that owns every table and statement.

Every flag is written here (one transaction per scored batch) before the
response that reports it leaves the server; sinks and watch consumers then read
it from their own cursor. Label Studio write-backs wait here too. Other modules
get an :class:`Outbox` and call its methods: no connection or SQL leaves this
package.

Modules (one per table or concern):

``records``
    the values the outbox returns (:class:`Consumer`, :class:`Backlog`, ...) and
    its errors; no SQL.
``schema``
    the one schema version of the file (:data:`SCHEMA_VERSION`, in ``PRAGMA
    user_version``) and the migrations that reach it from any older file.
``store``
    the connection, its lock, transactions, and whether the file is writable.
``checkpoint``
    WAL checkpoints in a background thread, so that no commit waits for one.
``flags``
    ``flags``: every flag once (``flag_id`` dedupes), ``position`` = write order,
    as JSON or as columns (:mod:`labelwatch.flag_columns`), and ``flag_classes``:
    the class lists the columns' packed class indices refer to.
``cursors``
    ``consumers`` and ``acks``: each sink's and WatchFlags consumer's cursor.
``dead_letters``
    ``dead_letters`` and sink progress: what a sink gave up on, requeues, backlog.
``retention``
    pruning by age and size; ``meta`` counters of what was pruned.
``writeback``
    ``ls_writebacks``: the Label Studio write-back queue (leased per task).
``ls_events``
    ``ls_events`` and ``ls_annotations``: Label Studio webhook events stored
    before their 202, and the last scored version of each annotation.
``verdicts``
    ``verdicts``: reviewers' verdicts on flagged classes.
``annotators``
    ``annotators``: examples scored and flagged per annotator.
``cutoffs``
    ``cutoffs``: versions of the per-class cut-offs adapted to verdicts.

The outbox never raises ``sqlite3`` errors: every failure to open, read or
write becomes :class:`OutboxError`. After a failed write :attr:`Outbox.writable`
is False (listeners are told) until a later write or :meth:`Outbox.probe` works.

Adding a table (e.g. verdicts, annotator stats, model versions):

1. Append a :class:`~labelwatch.outbox.schema.Migration` to
   ``schema.MIGRATIONS`` with the next version and its ``CREATE TABLE`` /
   ``ALTER TABLE`` statements; never edit a released migration (files in the
   field already ran it). :data:`SCHEMA_VERSION` follows, and every existing file
   is upgraded in one transaction the next time it is opened.
2. Write a module here with a class ``class Verdicts(Store)`` whose methods run
   the statements through ``self._reading()`` / ``self._transaction()`` and take
   and return plain values or frozen dataclasses (put those in ``records``).
3. Add the class to :class:`Outbox`'s bases and export its records below.
4. Test the methods on a fresh outbox, and extend ``tests/test_outbox_schema.py``
   so a file of the previous version migrates with its rows intact.
"""

from __future__ import annotations

from labelwatch.outbox.annotators import Annotators
from labelwatch.outbox.cutoffs import Cutoffs
from labelwatch.outbox.dead_letters import DeadLetters
from labelwatch.outbox.flags import FlagRows
from labelwatch.outbox.ls_events import LsEvents
from labelwatch.outbox.records import (
    AckResult,
    AnnotatorCounts,
    Backlog,
    Consumer,
    ConsumerKind,
    CutoffVersion,
    DeadLetter,
    NewWrite,
    OutboxError,
    PruneResult,
    QueuedEvent,
    QueuedWrite,
    RetentionPolicy,
    SeenAnnotation,
    UnknownConsumer,
    VerdictRow,
)
from labelwatch.outbox.retention import Retention
from labelwatch.outbox.schema import SCHEMA_VERSION
from labelwatch.outbox.verdicts import Verdicts
from labelwatch.outbox.writeback import WriteBacks

__all__ = [
    "SCHEMA_VERSION",
    "AckResult",
    "AnnotatorCounts",
    "Backlog",
    "Consumer",
    "ConsumerKind",
    "CutoffVersion",
    "DeadLetter",
    "NewWrite",
    "Outbox",
    "OutboxError",
    "PruneResult",
    "QueuedEvent",
    "QueuedWrite",
    "RetentionPolicy",
    "SeenAnnotation",
    "UnknownConsumer",
    "VerdictRow",
]


class Outbox(Annotators, Cutoffs, DeadLetters, FlagRows, LsEvents, Retention, Verdicts, WriteBacks):
    """The outbox at ``path``; see :class:`~labelwatch.outbox.store.Store` for the arguments.

    Thread-safe (one connection under a lock); other processes may open the same
    file. Methods by area: flags (:meth:`write`, :meth:`flags`, :meth:`get`,
    :meth:`count`, ...), consumers (:meth:`ensure_consumer`, :meth:`pending`,
    :meth:`ack`, ...), sinks (:meth:`next_for_sink`, :meth:`delivered`,
    :meth:`dead_letter`, :meth:`backlog`, ...), retention (:meth:`prune`,
    :meth:`counters`, :meth:`size_bytes`), the Label Studio write-back queue
    (``*_writeback*``), the Label Studio event inbox (``*ls_event*``,
    :meth:`ls_annotation`), verdicts (:meth:`record_verdicts`, :meth:`verdicts_of`,
    :meth:`verdict_counts`), and health (:attr:`writable`, :meth:`probe`,
    :meth:`integrity_check`, :meth:`close`).
    """
