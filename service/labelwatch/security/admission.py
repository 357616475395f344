"""Admission control: shed load at once instead of queueing it, and drop expired work.

Three bounds, each refusing right away with :class:`~labelwatch.errors.Overloaded`
(RESOURCE_EXHAUSTED):

- :class:`Admission` counts *examples* in flight (admitted, not yet answered)
  at the servicer; a request that would take the count past ``--max-inflight``
  is shed. Examples, not requests, because the cost of a request grows with
  its size.
- :class:`StreamLimitInterceptor` bounds open streaming calls (``--max-streams``):
  each holds a worker thread for its whole life, so they must not take them all.
- gRPC's own ``maximum_concurrent_rpcs`` (``--threads`` + ``--max-queued-calls``)
  bounds the calls waiting for a worker thread; set in :mod:`labelwatch.server`.

:meth:`Admission.check_deadline` drops a request whose deadline has passed
before it is scored (gRPC itself drops calls that expire while still queued).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from labelwatch.errors import DeadlineExpired, Overloaded
from labelwatch.grpc.status import abort
from labelwatch.metrics import SecurityMetrics

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


class Admission:
    """A non-blocking bound on examples in flight. Thread-safe."""

    def __init__(self, max_inflight: int, metrics: SecurityMetrics) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.max_inflight = max_inflight
        self._metrics = metrics
        self._lock = threading.Lock()
        self._inflight = 0

    @property
    def inflight(self) -> int:
        """Examples admitted and not yet released."""
        with self._lock:
            return self._inflight

    @contextlib.contextmanager
    def admit(self, n_examples: int) -> Iterator[None]:
        """Hold ``n_examples`` slots for the ``with`` body, or raise :class:`Overloaded` at once.

        A request larger than ``max_inflight`` is never admitted; the server
        refuses to start with ``--max-batch`` above ``--max-inflight``.
        """
        with self._lock:
            if self._inflight + n_examples > self.max_inflight:
                self._metrics.requests_shed.labels("inflight").inc()
                raise Overloaded(
                    f"server at capacity: {n_examples} more examples would exceed its limit of "
                    f"{self.max_inflight} in flight (--max-inflight); retry after a short "
                    "backoff, or send smaller requests"
                )
            self._inflight += n_examples
            self._metrics.inflight_examples.set(self._inflight)
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= n_examples
                self._metrics.inflight_examples.set(self._inflight)

    def check_deadline(self, context: grpc.ServicerContext, method: str) -> None:
        """Raise :class:`DeadlineExpired` (and count it) if the call's deadline has passed."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            self.count_expired(method)
            raise DeadlineExpired(
                f"{method}: the deadline passed before the request was scored; it was dropped"
            )

    def count_expired(self, method: str) -> None:
        """Count one request of ``method`` dropped unscored because its deadline passed."""
        self._metrics.deadline_expired.labels(method).inc()

    @staticmethod
    def monotonic_deadline(context: grpc.ServicerContext) -> float | None:
        """The call's deadline in :func:`time.monotonic` seconds, or None without one."""
        remaining = context.time_remaining()
        return None if remaining is None else time.monotonic() + remaining


class StreamLimitInterceptor(grpc.ServerInterceptor):
    """Refuses a streaming call with RESOURCE_EXHAUSTED while ``max_streams`` are open.

    Counts every streaming method (scoring, flag watching, health Watch,
    reflection): in the threaded server each one holds a worker thread. The
    slot is taken when the call starts running, not when it arrives, so a call
    gRPC rejects before running never holds one.
    """

    def __init__(self, max_streams: int, metrics: SecurityMetrics) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.max_streams = max_streams
        self._metrics = metrics
        self._lock = threading.Lock()
        self._open = 0

    @property
    def open_streams(self) -> int:
        """Streaming calls currently running."""
        with self._lock:
            return self._open

    def _acquire(self, context: grpc.ServicerContext, method: str) -> None:
        with self._lock:
            if self._open < self.max_streams:
                self._open += 1
                self._metrics.open_streams.set(self._open)
                return
        self._metrics.requests_shed.labels("streams").inc()
        abort(
            context,
            method,
            Overloaded(
                f"{method}: the server already has {self.max_streams} streams open "
                "(--max-streams); retry later or use unary calls"
            ),
        )

    def _release(self) -> None:
        with self._lock:
            self._open -= 1
            self._metrics.open_streams.set(self._open)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        method = handler_call_details.method

        def unary_out(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                self._acquire(context, method)
                try:
                    return behavior(request, context)
                finally:
                    self._release()

            return run

        def stream_out(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                self._acquire(context, method)
                try:
                    yield from behavior(request, context)
                finally:
                    self._release()

            return run

        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                stream_out(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                stream_out(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert handler.stream_unary is not None
        return grpc.stream_unary_rpc_method_handler(
            unary_out(handler.stream_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
