"""The blocking client: :class:`LabelwatchClient`."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import grpc

from labelwatch_client import convert
from labelwatch_client._transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    HEALTH_CHECK_METHOD,
    ChannelSettings,
    backoff_delays,
    deadline_after,
    decode_health_response,
    encode_health_request,
    remaining,
    retry_delay,
)
from labelwatch_client.errors import from_rpc_error
from labelwatch_client.types import Example, ModelInfo, ScoreResult
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # numpy only for score_batch: imported when it is first called
    from numpy.typing import ArrayLike

    from labelwatch_client.columnar import BatchResult, Tags

log = logging.getLogger(__name__)
T = TypeVar("T")


class LabelwatchClient:
    """A connection to a labelwatch server.

    ``timeout`` (seconds, None = none) is the deadline of each unary call,
    retries included. Unary calls that fail with UNAVAILABLE are retried up to
    ``max_retries`` times, waiting ``backoff_seconds * 2**attempt`` (with
    jitter) in between. ``token`` is sent as ``authorization: Bearer <token>``
    on every call. Any certificate implies TLS. Every failed call raises a
    :class:`LabelwatchError`. Safe to share between threads.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        token: str | None = None,
        max_retries: int = 3,
        backoff_seconds: float = 0.1,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        if max_retries < 0 or backoff_seconds < 0:
            raise ValueError("max_retries and backoff_seconds must be >= 0")
        self._settings = ChannelSettings(
            target=target,
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            token=token,
            max_message_bytes=max_message_bytes,
        )
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff_seconds = backoff_seconds
        self._rng = random.Random()
        self._metadata = self._settings.metadata()
        if self._settings.uses_tls:
            self._channel = grpc.secure_channel(
                target, self._settings.credentials(), options=self._settings.options()
            )
        else:
            self._channel = grpc.insecure_channel(target, options=self._settings.options())
        self._stub = pb_grpc.LabelQualityStub(self._channel)
        self._class_names: tuple[str, ...] | None = None  # the server's, for score_batch
        self._health = self._channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=encode_health_request,
            response_deserializer=decode_health_response,
        )

    @property
    def target(self) -> str:
        """The ``host:port`` this client calls."""
        return self._settings.target

    def __repr__(self) -> str:
        return f"LabelwatchClient({self.target!r}, tls={self._settings.uses_tls})"

    def score(
        self, examples: Iterable[Example], *, include_probabilities: bool = False
    ) -> list[ScoreResult]:
        """Score ``examples`` in one request; one result per example, in order.

        The server caps the examples per request (its ``--max-batch``); for
        more, call this per chunk or use :meth:`score_stream`.
        """
        request = convert.score_request(examples, include_probabilities)
        if not request.examples:
            return []
        response = self._unary(
            lambda timeout: self._stub.Score(request, timeout=timeout, metadata=self._metadata)
        )
        return convert.results_from_response(response)

    def score_batch(
        self,
        ids: Sequence[str],
        *,
        probabilities: ArrayLike | None = None,
        features: ArrayLike | None = None,
        tags: Tags | None = None,
        tags_csr: tuple[ArrayLike, ArrayLike] | None = None,
        annotator_ids: Sequence[str] | None = None,
        include_probabilities: bool = False,
    ) -> BatchResult:
        """Score N examples given as arrays in one ScoreBatch call (needs ``numpy``).

        ``ids``: N unique ids. Give ``probabilities`` ``(N, K)`` from your own
        model (float32 arrays travel as float32, others as float64) or
        ``features`` ``(N, D)`` for the server's float-input model. Tags:
        ``tags`` (per example, a list of class indices or names; or an ``(N, K)``
        bool array) or ``tags_csr=(indptr, indices)``; none means "no tags".
        ``annotator_ids``: N entries or None. The server checks every example
        as :meth:`score` does, with the same messages, and caps N at its
        ``--max-batch``. Returns arrays; ``.results()`` gives :meth:`score`'s
        :class:`ScoreResult` list. Asks for the class names once per client.
        """
        from labelwatch_client import columnar

        names = self._names()
        request = columnar.batch_request(
            ids,
            probabilities=probabilities,
            features=features,
            tags=tags,
            tags_csr=tags_csr,
            annotator_ids=annotator_ids,
            include_probabilities=include_probabilities,
            class_index={name: k for k, name in enumerate(names)},
        )
        response = self._unary(
            lambda timeout: self._stub.ScoreBatch(
                request.message, timeout=timeout, metadata=self._metadata
            )
        )
        return columnar.result_from_response(response, request, names)

    def _names(self) -> tuple[str, ...]:
        # a model reload keeps the classes (the server refuses one that changes them)
        if self._class_names is None:
            self._class_names = self.model_info().class_names
        return self._class_names

    def score_stream(
        self,
        batches: Iterable[Sequence[Example]],
        *,
        include_probabilities: bool = False,
        timeout: float | None = None,
    ) -> Iterator[list[ScoreResult]]:
        """Score ``batches`` over one ScoreStream call; yield one list per batch, in order.

        Batches are pulled lazily, so ``batches`` may be an endless generator.
        ``timeout`` (seconds) bounds the whole stream; by default it has none.
        UNAVAILABLE before the first response is retried (sent batches are
        resent); after it, the error is raised. An exception raised by
        ``batches`` is re-raised here after the results of earlier batches.
        """
        feed = _RequestFeed(iter(batches), include_probabilities)
        deadline = deadline_after(timeout)
        delays = backoff_delays(self._max_retries, self._backoff_seconds, self._rng)
        while True:
            call = self._stub.ScoreStream(
                feed.requests(), timeout=remaining(deadline), metadata=self._metadata
            )
            try:
                for response in call:
                    feed.mark_answered()
                    yield convert.results_from_response(response)
            except grpc.RpcError as exc:
                feed.restart()
                error = from_rpc_error(exc, self.target)
                delay = None if feed.answered else retry_delay(error.code, delays, deadline)
                if delay is None:
                    raise error from exc
                log.debug(
                    "event=retry method=ScoreStream code=%s delay=%.3f", error.code.name, delay
                )
                time.sleep(delay)
                continue
            finally:
                # stops the request thread (and cancels the call if our caller left early)
                feed.restart()
                call.cancel()
            if feed.error is not None:
                raise feed.error
            return

    def model_info(self) -> ModelInfo:
        """Describe the server's model, classes and calibration."""
        info = self._unary(
            lambda timeout: self._stub.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=timeout, metadata=self._metadata
            )
        )
        return convert.model_info_from_proto(info)

    def health(self, service: str = "") -> str:
        """The server's ``grpc.health.v1`` status, e.g. ``"SERVING"`` or ``"NOT_SERVING"``.

        ``service`` "" asks about the whole server. Not retried: it reports now.
        """
        try:
            status: str = self._health(service, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from exc
        return status

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> LabelwatchClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(self, call: Callable[[float | None], T]) -> T:
        """Run ``call(timeout)`` with retries on UNAVAILABLE within one overall deadline."""
        deadline = deadline_after(self._timeout)
        delays = backoff_delays(self._max_retries, self._backoff_seconds, self._rng)
        while True:
            try:
                return call(remaining(deadline))
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, self.target)
                delay = retry_delay(error.code, delays, deadline)
                if delay is None:
                    raise error from exc
            log.debug("event=retry code=%s delay=%.3f", error.code.name, delay)
            time.sleep(delay)


class _RequestFeed:
    """Turns the caller's batches into requests for one or more ScoreStream attempts.

    Until the first response, every request handed out is kept so a retried
    attempt resends it. gRPC pulls requests on its own thread and may have
    pulled one more when an attempt fails; the source lock makes the next
    attempt wait for it, and the shared list hands it over. An exception from
    the caller's iterable is kept in :attr:`error` and ends the requests.
    """

    def __init__(self, source: Iterator[Sequence[Example]], include_probabilities: bool) -> None:
        self._source = source
        self._include_probabilities = include_probabilities
        self._source_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._changed = threading.Condition(self._state_lock)
        self._sent: list[pb.ScoreRequest] = []
        self._attempt = 0
        self.answered = False
        self.error: Exception | None = None

    def requests(self) -> Iterator[pb.ScoreRequest]:
        """The requests of a new attempt: first those sent unanswered, then fresh ones."""
        with self._state_lock:
            attempt = self._attempt  # taken now, not when gRPC first pulls

        def generate() -> Iterator[pb.ScoreRequest]:
            position = 0
            while (request := self._next(attempt, position)) is not None:
                position += 1
                yield request

        return generate()

    def _next(self, attempt: int, position: int) -> pb.ScoreRequest | None:
        with self._state_lock:
            # until the first answer only one request is in flight, so a failed
            # attempt has exactly one request to resend and no pull can race it
            while position >= 1 and not self.answered and attempt == self._attempt:
                self._changed.wait()
        with self._source_lock:
            with self._state_lock:
                if attempt != self._attempt:
                    return None
                # replayed even after the first answer: a request pulled by a failed
                # attempt may not have reached the live one yet
                if position < len(self._sent):
                    return self._sent[position]
                if self.error is not None:
                    return None
            try:
                batch = next(self._source, None)
                request = (
                    None
                    if batch is None
                    else convert.score_request(batch, self._include_probabilities)
                )
            except Exception as exc:  # the caller's iterable failed: re-raised to the caller
                self.error = exc
                return None
            with self._state_lock:
                if request is not None and not self.answered:
                    self._sent.append(request)
            return request

    def mark_answered(self) -> None:
        """A response arrived: no further attempt will be made, so no new request is kept."""
        if not self.answered:
            with self._state_lock:
                self.answered = True
                self._changed.notify_all()

    def restart(self) -> None:
        """End the current attempt's requests; the next :meth:`requests` starts a new one."""
        with self._state_lock:
            self._attempt += 1
            self._changed.notify_all()
