"""The FlagFeed servicer: translate WatchFlags/AckFlags to :class:`FlagFeed` calls and back."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from labelwatch.errors import InvalidWatch
from labelwatch.flag_record import Flag
from labelwatch.grpc.status import abort
from labelwatch.scoring import IssueKind
from labelwatch.watch import FlagFeed, StartAt, WatchFilter
from labelwatch_proto.labelwatch.v1 import flags_pb2 as fpb
from labelwatch_proto.labelwatch.v1 import flags_pb2_grpc as fpb_grpc
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

FLAG_FEED_SERVICE_NAME: str = fpb.DESCRIPTOR.services_by_name["FlagFeed"].full_name

_KIND_TO_PB = {IssueKind.MISSING: pb.ISSUE_KIND_MISSING, IssueKind.SPURIOUS: pb.ISSUE_KIND_SPURIOUS}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()}


def flag_to_proto(flag: Flag, *, redelivered: bool = False) -> fpb.Flag:
    """The wire form of a stored flag."""
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
    return out


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
    """Thin servicer over a :class:`FlagFeed`."""

    def __init__(self, feed: FlagFeed) -> None:
        self._feed = feed

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
                yield flag_to_proto(delivery.flag, redelivered=delivery.redelivered)
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
