"""Reviewers' verdicts on flags, and the precision of flags measured from them.

A flag says, per class, "this tag is probably wrong" (an issue: MISSING or
SPURIOUS). A reviewer who looked at it decides, per flagged class:

* ``CONFIRMED``: the flag was right, the tag was wrong (the suggestion applies);
* ``REJECTED``: the flag was wrong, the given tag was right (a false alarm).

Verdicts arrive through gRPC (``FlagFeed.ReportVerdicts``, :meth:`VerdictBook.report`)
or implicitly from Label Studio (:func:`implicit_verdicts`, when a flagged
annotation is updated). They are stored in the outbox, one per (flag, class,
reviewer). Precision per class = confirmed / (confirmed + rejected), with a
Wilson interval (:meth:`VerdictBook.stats`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from labelwatch.annotators import QualityReport, annotator_quality
from labelwatch.errors import InvalidVerdict, OutboxUnavailable
from labelwatch.outbox import Outbox, OutboxError, VerdictRow
from labelwatch.stats import Interval, wilson_interval

SOURCE_GRPC = "grpc"
SOURCE_LABEL_STUDIO = "label-studio"
MAX_REPORTS = 1000
"""Verdicts per ReportVerdicts request at most."""
MAX_REVIEWER_CHARS = 128
MAX_NOTE_CHARS = 2000


class Verdict(enum.Enum):
    """A reviewer's decision about one flagged class."""

    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"


@dataclass(frozen=True)
class VerdictReport:
    """One reported verdict: ``label`` must be a class ``flag_id`` has an issue for."""

    flag_id: str
    label: str
    verdict: Verdict
    reviewer: str
    note: str = ""


@dataclass(frozen=True)
class ReportResult:
    """What :meth:`VerdictBook.report` did: new or changed, unchanged, flags not found."""

    recorded: int
    unchanged: int
    unknown_flag_ids: tuple[str, ...]


@dataclass(frozen=True)
class ClassPrecision:
    """Verdict counts of one class (``label`` = ``""`` for all classes) and the precision."""

    label: str
    confirmed: int
    rejected: int
    precision: Interval


@dataclass(frozen=True)
class FlagStats:
    """Precision overall and per class (classes with verdicts, by label)."""

    overall: ClassPrecision
    classes: tuple[ClassPrecision, ...]
    confidence: float


def implicit_verdicts(
    issues: Iterable[Sequence[object]], given_now: Collection[str]
) -> list[tuple[str, Verdict, str, float]]:
    """Verdicts implied by an update of a flagged annotation (Label Studio's rule).

    ``issues``: the flag's ``(label, kind, probability)`` with ``kind`` ``missing``
    or ``spurious``; ``given_now``: the tags of the updated annotation. A class
    toggled the suggested way (a missing tag added, a spurious tag removed) is
    CONFIRMED; a class left as it was is REJECTED (the reviewer saw the flag and
    kept the tag). Returns ``(label, verdict, kind, probability)``.

    >>> implicit_verdicts([("a", "missing", 0.9), ("b", "spurious", 0.1)], {"a", "b"})
    [('a', <Verdict.CONFIRMED: 'CONFIRMED'>, 'missing', 0.9), ('b', <Verdict.REJECTED: \
'REJECTED'>, 'spurious', 0.1)]
    """
    out = []
    for label, kind, probability in issues:
        has = str(label) in given_now
        fixed = has if str(kind).lower() == "missing" else not has
        verdict = Verdict.CONFIRMED if fixed else Verdict.REJECTED
        out.append((str(label), verdict, str(kind).lower(), float(str(probability))))
    return out


def precision_of(label: str, confirmed: int, rejected: int, confidence: float) -> ClassPrecision:
    """The :class:`ClassPrecision` of the counts."""
    interval = wilson_interval(confirmed, confirmed + rejected, confidence)
    return ClassPrecision(label, confirmed, rejected, interval)


class VerdictBook:
    """Verdicts of the flags in ``outbox``; ``on_recorded(row)`` is called per new or
    changed verdict (metrics)."""

    def __init__(
        self, outbox: Outbox, *, on_recorded: Callable[[VerdictRow], None] = lambda row: None
    ) -> None:
        self._outbox = outbox
        self._on_recorded = on_recorded

    def counted_one(self, row: VerdictRow) -> None:
        """Tell ``on_recorded`` about a verdict stored elsewhere (Label Studio's, stored with
        its event) as new or changed."""
        self._on_recorded(row)

    def report(self, reports: Sequence[VerdictReport]) -> ReportResult:
        """Check and store ``reports`` (see the FlagFeed.ReportVerdicts contract).

        Raises :class:`InvalidVerdict` (nothing stored) for a malformed item or a
        label its flag has no issue for; flags not in the outbox are returned.
        """
        if not 1 <= len(reports) <= MAX_REPORTS:
            raise InvalidVerdict(f"field 'verdicts': give 1 to {MAX_REPORTS} items")
        for i, r in enumerate(reports):
            where = f"verdicts[{i}]"
            if not r.flag_id:
                raise InvalidVerdict(f"{where}.flag_id: required")
            if not r.label:
                raise InvalidVerdict(f"{where}.label: required")
            if not 1 <= len(r.reviewer) <= MAX_REVIEWER_CHARS:
                raise InvalidVerdict(f"{where}.reviewer: 1 to {MAX_REVIEWER_CHARS} characters")
            if len(r.note) > MAX_NOTE_CHARS:
                raise InvalidVerdict(f"{where}.note: at most {MAX_NOTE_CHARS} characters")
        try:
            return self._store(reports)
        except OutboxError as exc:
            raise OutboxUnavailable(
                "the server cannot store verdicts right now (its outbox is not readable or "
                "writable); nothing was stored, retry later"
            ) from exc

    def _store(self, reports: Sequence[VerdictReport]) -> ReportResult:
        rows: list[VerdictRow] = []
        unknown: list[str] = []
        for i, r in enumerate(reports):
            flag = self._outbox.get(r.flag_id)
            if flag is None:
                if r.flag_id not in unknown:
                    unknown.append(r.flag_id)
                continue
            issue = next((x for x in flag.issues if x.label == r.label), None)
            if issue is None:
                raise InvalidVerdict(
                    f"verdicts[{i}].label: flag {r.flag_id} has no issue for {r.label!r} "
                    f"(its issues: {', '.join(x.label for x in flag.issues)})"
                )
            rows.append(
                VerdictRow(
                    flag_id=r.flag_id,
                    label=r.label,
                    reviewer=r.reviewer,
                    verdict=r.verdict.value,
                    note=r.note,
                    source=SOURCE_GRPC,
                    kind=issue.kind.value.lower(),
                    probability=issue.probability,
                    annotator_id=flag.annotator_id,
                    error_probability=issue.error_probability,
                )
            )
        changed = self._outbox.record_verdicts(rows) if rows else []
        for row, new in zip(rows, changed, strict=True):
            if new:
                self._on_recorded(row)
        recorded = sum(changed)
        return ReportResult(recorded, len(rows) - recorded, tuple(unknown))

    def verdicts_of(self, flag_ids: Sequence[str]) -> dict[str, list[VerdictRow]]:
        """The stored verdicts of each flag that has any."""
        return self._outbox.verdicts_of(flag_ids)

    def stats(self, confidence: float = 0.95) -> FlagStats:
        """Precision overall and per class from every stored verdict."""
        if not 0.0 < confidence < 1.0:
            raise InvalidVerdict(f"field 'confidence': must be in (0, 1), got {confidence}")
        counts: dict[str, list[int]] = {}
        try:
            rows = self._outbox.verdict_counts()
        except OutboxError as exc:
            raise OutboxUnavailable(
                "the server cannot read verdicts right now (its outbox is not readable)"
            ) from exc
        for label, verdict, n in rows:
            pair = counts.setdefault(label, [0, 0])
            pair[0 if verdict == Verdict.CONFIRMED.value else 1] += n
        classes = tuple(
            precision_of(label, c, r, confidence) for label, (c, r) in sorted(counts.items())
        )
        confirmed = sum(c.confirmed for c in classes)
        rejected = sum(c.rejected for c in classes)
        return FlagStats(precision_of("", confirmed, rejected, confidence), classes, confidence)

    def annotators(self, confidence: float = 0.95) -> QualityReport:
        """Every annotator's quality estimate (:func:`labelwatch.annotators.annotator_quality`)."""
        if not 0.0 < confidence < 1.0:
            raise InvalidVerdict(f"field 'confidence': must be in (0, 1), got {confidence}")
        try:
            counts = self._outbox.annotator_counts()
        except OutboxError as exc:
            raise OutboxUnavailable(
                "the server cannot read annotator counts right now (its outbox is not readable)"
            ) from exc
        return annotator_quality(counts, confidence)
