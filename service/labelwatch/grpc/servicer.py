"""The LabelQuality servicer: translate protobuf <-> domain; failures end through :func:`guard`."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import grpc

from labelwatch.codec import ExampleDecoder
from labelwatch.codec.columnar import (
    check_batch_size,
    examples_from_batch_request,
    response_from_scored,
)
from labelwatch.codec.proto import check_request_size, examples_from_request, response_from_batch
from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.errors import DeadlineExpired
from labelwatch.grpc.status import guard
from labelwatch.security.admission import Admission
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc


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
        model_info: pb.ModelInfo | Callable[[], pb.ModelInfo],
        *,
        max_batch: int,
        admission: Admission | None = None,
    ) -> None:
        self._decoder = decoder
        self._class_names = decoder.spec.class_names
        self._score_examples = score
        # a callable when part of it changes while serving (adapted cut-offs)
        self._model_info = model_info if callable(model_info) else (lambda: model_info)
        self._max_batch = max_batch
        self._admission = admission

    def _run(
        self,
        n: int,
        decode: Callable[[], Sequence[LabeledExample]],
        context: grpc.ServicerContext,
        method: str,
    ) -> ScoredBatch:
        """Admit ``n`` examples, ``decode()`` them, score them within the call's deadline."""
        admission = self._admission
        if admission is not None:
            admission.check_deadline(context, method)
        # admit before converting: at overload, shed requests cost no conversion work
        with admission.admit(n) if admission is not None else contextlib.nullcontext():
            examples = decode()
            deadline = None
            if admission is not None:
                admission.check_deadline(context, method)
                deadline = admission.monotonic_deadline(context)
            try:
                return self._score_examples(examples, deadline=deadline)
            except DeadlineExpired:
                if admission is not None:
                    admission.count_expired(method)
                raise

    def _score(
        self, request: pb.ScoreRequest, context: grpc.ServicerContext, method: str
    ) -> pb.ScoreResponse:
        n = check_request_size(request, self._max_batch)
        batch = self._run(
            n,
            lambda: examples_from_request(request, self._decoder, self._max_batch),
            context,
            method,
        )
        return response_from_batch(batch, self._class_names, request.include_probabilities)

    def _score_batch(
        self, request: pb.ScoreBatchRequest, context: grpc.ServicerContext
    ) -> pb.ScoreBatchResponse:
        n = check_batch_size(request, self._max_batch)
        batch = self._run(
            n,
            lambda: examples_from_batch_request(request, self._decoder, self._max_batch),
            context,
            "ScoreBatch",
        )
        return response_from_scored(batch, request.include_probabilities)

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        return guard(context, "Score", lambda: self._score(request, context, "Score"))

    def ScoreStream(
        self, request_iterator: Iterator[pb.ScoreRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ScoreResponse]:
        # gRPC flow control bounds memory: we pull the next request only after
        # the previous response was handed to the transport.
        for request in request_iterator:
            yield guard(
                context,
                "ScoreStream",
                functools.partial(self._score, request, context, "ScoreStream"),
            )

    def ScoreBatch(
        self, request: pb.ScoreBatchRequest, context: grpc.ServicerContext
    ) -> pb.ScoreBatchResponse:
        return guard(context, "ScoreBatch", lambda: self._score_batch(request, context))

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfo:
        return self._model_info()
