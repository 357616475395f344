"""The values the outbox returns and the errors it raises (no SQL here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from labelwatch.flag_record import Flag

ConsumerKind = Literal["sink", "watch"]
"""``sink``: a delivery worker; ``watch``: a WatchFlags consumer."""


class OutboxError(Exception):
    """The outbox cannot be opened, read or written; the message says why and where."""


class UnknownConsumer(OutboxError):
    """A consumer name that the outbox has never seen."""


@dataclass(frozen=True)
class Consumer:
    """A consumer's state: every position at or below ``cursor`` is done.

    ``created_at`` / ``updated_at``: unix seconds.
    """

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
    """One consumer's backlog: flags above its cursor (+ requeued dead letters).

    ``oldest_created_at``: unix seconds of the oldest waiting flag, None when none waits.
    """

    pending: int
    oldest_created_at: float | None


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep flags at most ``max_age_seconds`` old and the database under ``max_bytes``.

    0 turns a limit off. Size pruning removes the oldest flags until the data
    uses at most 90% of ``max_bytes`` (so it does not prune on every write).
    """

    max_age_seconds: float = 7 * 24 * 3600.0
    max_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True)
class PruneResult:
    """Flags removed by one :meth:`Outbox.prune`; ``unsent`` were pending for a consumer."""

    pruned: int
    unsent: int


@dataclass(frozen=True)
class QueuedWrite:
    """A row of the Label Studio write-back queue, as stored.

    ``key``: one pending write per key (``<task>:<annotation>``); ``version``: the
    annotation version it is for; ``payload``: the write as JSON (its meaning is
    :mod:`labelwatch.labelstudio.writequeue`'s); ``attempts``: failed tries so far.
    """

    key: str
    version: str
    payload: str
    attempts: int


@dataclass(frozen=True)
class QueuedEvent:
    """A Label Studio webhook event stored in ``ls_events``, as claimed.

    ``event_id``: arrival order; ``payload``: the webhook body as JSON (its meaning
    is :mod:`labelwatch.labelstudio.inbox`'s); ``attempts``: failed tries so far.
    """

    event_id: int
    annotation_id: int
    action: str
    payload: str
    attempts: int


@dataclass(frozen=True)
class NewWrite:
    """A write-back to queue: ``key`` = ``<task>:<annotation>``, payload JSON."""

    key: str
    task_id: int
    version: str
    payload: str


@dataclass(frozen=True)
class SeenAnnotation:
    """The last scored version of a Label Studio annotation (``ls_annotations``).

    ``payload``: JSON owned by :mod:`labelwatch.labelstudio.inbox` (tags given,
    classes flagged, flag id); ``annotator``: ``""`` when unknown.
    """

    annotation_id: int
    project_id: int
    task_id: int
    version: str
    annotator: str
    payload: str


@dataclass(frozen=True)
class VerdictRow:
    """One reviewer's verdict on one flagged class, as stored in ``verdicts``.

    ``verdict``: ``CONFIRMED`` or ``REJECTED``; ``source``: ``grpc`` or
    ``label-studio``; ``kind`` / ``probability`` / ``error_probability`` (None: the
    served rule had none): the flag's issue for ``label``; ``decided_at``: unix
    seconds (set by the outbox when stored).
    """

    flag_id: str
    label: str
    reviewer: str
    verdict: str
    note: str
    source: str
    kind: str
    probability: float
    annotator_id: str
    error_probability: float | None = None
    decided_at: float = 0.0


@dataclass(frozen=True)
class AnnotatorCounts:
    """One annotator's examples ``scored`` and ``flagged``, and flags ``confirmed`` /
    ``rejected`` by verdicts (see :meth:`Outbox.annotator_counts`)."""

    annotator_id: str
    scored: int
    flagged: int
    confirmed: int
    rejected: int


@dataclass(frozen=True)
class CutoffVersion:
    """One stored version of the adapted cut-offs (``created_at``: unix seconds)."""

    version: int
    model_version: str
    created_at: float
    payload: str
