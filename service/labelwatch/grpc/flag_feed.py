"""The FlagFeed servicer: translate WatchFlags/AckFlags to :class:`FlagFeed` calls, and
ReportVerdicts/GetFlagStats to :class:`~labelwatch.verdicts.VerdictBook` calls, and back."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from labelwatch.annotators import AnnotatorQuality, QualityReport, interval_of, page
from labelwatch.errors import InvalidVerdict, InvalidWatch
from labelwatch.flag_record import Flag
from labelwatch.grpc.status import abort
from labelwatch.outbox import VerdictRow
from labelwatch.scoring import IssueKind
from labelwatch.verdicts import ClassPrecision, Verdict, VerdictBook, VerdictReport
from labelwatch.watch import FlagFeed, StartAt, WatchFilter
from labelwatch_proto.labelwatch.v1 import flags_pb2 as fpb
from labelwatch_proto.labelwatch.v1 import flags_pb2_grpc as fpb_grpc
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

FLAG_FEED_SERVICE_NAME: str = fpb.DESCRIPTOR.services_by_name["FlagFeed"].full_name

_KIND_TO_PB = {IssueKind.MISSING: pb.ISSUE_KIND_MISSING, IssueKind.SPURIOUS: pb.ISSUE_KIND_SPURIOUS}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()}
_VERDICT_TO_PB = {
    Verdict.CONFIRMED.value: fpb.VERDICT_CONFIRMED,
    Verdict.REJECTED.value: fpb.VERDICT_REJECTED,
}
_VERDICT_FROM_PB = {
    fpb.VERDICT_CONFIRMED: Verdict.CONFIRMED,
    fpb.VERDICT_REJECTED: Verdict.REJECTED,
}


def _timestamp(unix_seconds: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(unix_seconds * 1e9))
    return out


def flag_to_proto(
    flag: Flag, *, redelivered: bool = False, verdicts: Sequence[VerdictRow] = ()
) -> fpb.Flag:
    """The wire form of a stored flag (with the verdicts known for it)."""
    flagged_at = Timestamp()
    flagged_at.FromNanoseconds(int(flag.flagged_at * 1e9))
    out = fpb.Flag(
        position=flag.position,
        flag_id=flag.flag_id,
        example_id=flag.example_id,
        labels=list(flag.labels),
        suggested_labels=list(flag.suggested_labels),
        label_quality=flag.label_quality,
        model_version=flag.model_version,
        annotator_id=flag.annotator_id,
        metadata=dict(flag.metadata),
        text=flag.text or "",
        input_kind=flag.input_kind,
        flagged_at=flagged_at,
        redelivered=redelivered,
    )
    for issue in flag.issues:
        out.issues.add(
            label=issue.label,
            class_index=issue.class_index,
            kind=_KIND_TO_PB[issue.kind],
            probability=issue.probability,
            threshold=issue.threshold,
            error_probability=issue.error_probability,
        )
    for v in verdicts:
        out.verdicts.add(
            label=v.label,
            verdict=_VERDICT_TO_PB[v.verdict],
            reviewer=v.reviewer,
            note=v.note,
            decided_at=_timestamp(v.decided_at),
            source=v.source,
        )
    return out


def _reports(request: fpb.ReportVerdictsRequest) -> list[VerdictReport]:
    out = []
    for i, item in enumerate(request.verdicts):
        if item.verdict not in _VERDICT_FROM_PB:
            raise InvalidVerdict(f"verdicts[{i}].verdict: must be CONFIRMED or REJECTED")
        out.append(
            VerdictReport(
                flag_id=item.flag_id,
                label=item.label,
                verdict=_VERDICT_FROM_PB[item.verdict],
                reviewer=item.reviewer,
                note=item.note,
            )
        )
    return out


_ORDER = {
    fpb.GetAnnotatorStatsRequest.ORDER_UNSPECIFIED: "error_rate",
    fpb.GetAnnotatorStatsRequest.ORDER_ERROR_RATE: "error_rate",
    fpb.GetAnnotatorStatsRequest.ORDER_SCORED: "scored",
    fpb.GetAnnotatorStatsRequest.ORDER_FLAGGED: "flagged",
    fpb.GetAnnotatorStatsRequest.ORDER_CONFIRMED: "confirmed",
    fpb.GetAnnotatorStatsRequest.ORDER_ANNOTATOR_ID: "annotator_id",
}


def _annotator_to_proto(q: AnnotatorQuality, report: QualityReport) -> fpb.AnnotatorStats:
    interval = interval_of(q, report)
    return fpb.AnnotatorStats(
        annotator_id=q.annotator_id,
        scored=q.scored,
        flagged=q.flagged,
        confirmed=q.confirmed,
        rejected=q.rejected,
        estimated_errors=q.estimated_errors,
        raw_error_rate=q.raw_rate,
        error_rate=interval.estimate,
        error_rate_lower=interval.lower,
        error_rate_upper=interval.upper,
    )


def _precision_to_proto(row: ClassPrecision) -> fpb.ClassPrecision:
    return fpb.ClassPrecision(
        label=row.label,
        confirmed=row.confirmed,
        rejected=row.rejected,
        precision=row.precision.estimate,
        lower=row.precision.lower,
        upper=row.precision.upper,
    )


def _filter(request: fpb.WatchFlagsRequest) -> WatchFilter:
    kinds = set()
    for kind in request.kinds:
        if kind not in _KIND_FROM_PB:
            raise InvalidWatch(f"field 'kinds': {kind} is not MISSING or SPURIOUS")
        kinds.add(_KIND_FROM_PB[kind])
    return WatchFilter(
        classes=frozenset(request.classes),
        kinds=frozenset(kinds),
        max_label_quality=(
            request.max_label_quality if request.HasField("max_label_quality") else None
        ),
        annotator_ids=frozenset(request.annotator_ids),
        min_error_probability=_min_error_probability(request),
    )


def _min_error_probability(request: fpb.WatchFlagsRequest) -> float | None:
    if not request.HasField("min_error_probability"):
        return None
    value = request.min_error_probability
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise InvalidWatch(f"field 'min_error_probability': must be in [0, 1], got {value:g}")
    return value


def _start(request: fpb.WatchFlagsRequest) -> StartAt:
    which = request.WhichOneof("start")
    if which == "start_position":
        if request.start_position < 0:
            raise InvalidWatch("field 'start_position': must be >= 0")
        return StartAt(position=request.start_position)
    if which == "start_time":
        return StartAt(time=request.start_time.ToNanoseconds() / 1e9)
    return StartAt()


class FlagFeedServicer(fpb_grpc.FlagFeedServicer):
    """Thin servicer over a :class:`FlagFeed` and a :class:`VerdictBook`."""

    def __init__(self, feed: FlagFeed, verdicts: VerdictBook) -> None:
        self._feed = feed
        self._verdicts = verdicts

    def WatchFlags(
        self, request: fpb.WatchFlagsRequest, context: grpc.ServicerContext
    ) -> Iterator[fpb.Flag]:
        try:
            stream = self._feed.watch(
                request.consumer,
                start=_start(request),
                flag_filter=_filter(request),
                ack_timeout_seconds=request.ack_timeout_seconds,
                max_in_flight=request.max_in_flight,
                is_active=context.is_active,
            )
            context.add_callback(self._feed.wake)  # a cancelled stream stops waiting at once
            for delivery in stream:
                known = self._verdicts.verdicts_of([delivery.flag.flag_id])
                yield flag_to_proto(
                    delivery.flag,
                    redelivered=delivery.redelivered,
                    verdicts=known.get(delivery.flag.flag_id, ()),
                )
        except Exception as exc:  # one place maps every failure to a status
            abort(context, "WatchFlags", exc)

    def AckFlags(
        self, request: fpb.AckFlagsRequest, context: grpc.ServicerContext
    ) -> fpb.AckFlagsResponse:
        try:
            result = self._feed.ack(
                request.consumer, up_to=request.up_to, flag_ids=list(request.flag_ids)
            )
        except Exception as exc:  # one place maps every failure to a status
            abort(context, "AckFlags", exc)
        return fpb.AckFlagsResponse(
            cursor=result.cursor, unknown_flag_ids=list(result.unknown_flag_ids)
        )

    def ReportVerdicts(
        self, request: fpb.ReportVerdictsRequest, context: grpc.ServicerContext
    ) -> fpb.ReportVerdictsResponse:
        try:
            result = self._verdicts.report(_reports(request))
        except Exception as exc:  # one place maps every failure to a status
            abort(context, "ReportVerdicts", exc)
        return fpb.ReportVerdictsResponse(
            recorded=result.recorded,
            unchanged=result.unchanged,
            unknown_flag_ids=list(result.unknown_flag_ids),
        )

    def GetFlagStats(
        self, request: fpb.GetFlagStatsRequest, context: grpc.ServicerContext
    ) -> fpb.FlagStats:
        try:
            stats = self._verdicts.stats(request.confidence or 0.95)
        except Exception as exc:  # one place maps every failure to a status
            abort(context, "GetFlagStats", exc)
        return fpb.FlagStats(
            overall=_precision_to_proto(stats.overall),
            classes=[_precision_to_proto(c) for c in stats.classes],
            confidence=stats.confidence,
        )

    def GetAnnotatorStats(
        self, request: fpb.GetAnnotatorStatsRequest, context: grpc.ServicerContext
    ) -> fpb.AnnotatorStatsPage:
        try:
            size = request.page_size or 50
            if not 1 <= size <= 1000:
                raise InvalidVerdict("field 'page_size': 1 to 1000 (0 = 50)")
            token = request.page_token
            if token and not token.isdigit():
                raise InvalidVerdict("field 'page_token': not a token this server gave")
            order = _ORDER.get(request.order_by)
            if order is None:
                raise InvalidVerdict(f"field 'order_by': unknown value {request.order_by}")
            report = self._verdicts.annotators(request.confidence or 0.95)
            rows, following = page(
                report,
                order_by=order,
                descending=not request.ascending,
                offset=int(token or 0),
                limit=size,
            )
        except Exception as exc:  # one place maps every failure to a status
            abort(context, "GetAnnotatorStats", exc)
        return fpb.AnnotatorStatsPage(
            annotators=[_annotator_to_proto(q, report) for q in rows],
            next_page_token="" if following is None else str(following),
            total=len(report.annotators),
            global_error_rate=report.global_rate,
            precision=report.precision,
            confidence=report.confidence,
        )
