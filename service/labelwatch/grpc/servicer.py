"""The LabelQuality servicer: translate protobuf <-> domain, map errors to statuses."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn, Protocol, TypeVar

import grpc

from labelwatch.codec import ExampleDecoder
from labelwatch.codec.proto import check_request_size, examples_from_request, response_from_batch
from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.errors import DeadlineExpired, ErrorCode, PublicError
from labelwatch.grpc.status import STATUS_OF
from labelwatch.security.admission import Admission
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")


def _abort(context: grpc.ServicerContext, method: str, exc: Exception) -> NoReturn:
    if isinstance(exc, PublicError):
        if exc.code is ErrorCode.INTERNAL:
            # e.g. ModelFailure: the caller gets its short message, the operator the cause
            log.error("event=internal_error method=%s error=%s", method, exc.message, exc_info=exc)
        context.abort(STATUS_OF[exc.code], exc.message)
    log.exception("event=internal_error method=%s", method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


def _guard(context: grpc.ServicerContext, method: str, work: Callable[[], T]) -> T:
    try:
        return work()
    except Exception as exc:  # one place maps every failure to a status
        _abort(context, method, exc)


class ScoreFn(Protocol):
    """Scores validated examples: the :class:`Batcher`'s ``score``.

    ``deadline``: the call's deadline in :func:`time.monotonic` seconds (None: none);
    work still queued when it passes is dropped with :class:`DeadlineExpired`.
    """

    def __call__(
        self, examples: Sequence[LabeledExample], *, deadline: float | None = None
    ) -> ScoredBatch: ...


class LabelQualityServicer(pb_grpc.LabelQualityServicer):
    """Thin servicer: validate, hand to the batcher, build the response."""

    def __init__(
        self,
        decoder: ExampleDecoder,
        score: ScoreFn,
        model_info: pb.ModelInfo,
        *,
        max_batch: int,
        admission: Admission | None = None,
    ) -> None:
        self._decoder = decoder
        self._class_names = decoder.spec.class_names
        self._score_examples = score
        self._model_info = model_info
        self._max_batch = max_batch
        self._admission = admission

    def _score(
        self, request: pb.ScoreRequest, context: grpc.ServicerContext, method: str
    ) -> pb.ScoreResponse:
        n = check_request_size(request, self._max_batch)
        admission = self._admission
        if admission is not None:
            admission.check_deadline(context, method)
        # admit before converting: at overload, shed requests cost no conversion work
        with admission.admit(n) if admission is not None else contextlib.nullcontext():
            examples = examples_from_request(request, self._decoder, self._max_batch)
            deadline = None
            if admission is not None:
                admission.check_deadline(context, method)
                deadline = admission.monotonic_deadline(context)
            try:
                batch = self._score_examples(examples, deadline=deadline)
            except DeadlineExpired:
                if admission is not None:
                    admission.count_expired(method)
                raise
            return response_from_batch(batch, self._class_names, request.include_probabilities)

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        return _guard(context, "Score", lambda: self._score(request, context, "Score"))

    def ScoreStream(
        self, request_iterator: Iterator[pb.ScoreRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ScoreResponse]:
        # gRPC flow control bounds memory: we pull the next request only after
        # the previous response was handed to the transport.
        for request in request_iterator:
            yield _guard(
                context,
                "ScoreStream",
                functools.partial(self._score, request, context, "ScoreStream"),
            )

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfo:
        return self._model_info
