"""Server interceptor exporting the standard gRPC server metrics.

Series follow the names operators already chart (go-grpc-prometheus):
``grpc_server_started_total``, ``grpc_server_handled_total`` and
``grpc_server_handling_seconds``, labelled by service, method, type and code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from labelwatch.metrics import Metrics

_TYPES = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


def _client_cancelled(context: grpc.ServicerContext) -> bool:
    """Whether the call ended without its status reaching the client (cancel, deadline, drop).

    grpcio keeps this on the call's private state (``client == "cancelled"``), final by the
    time termination callbacks run; ``is_active()`` is the public fallback.
    """
    client = getattr(getattr(context, "_state", None), "client", None)
    if isinstance(client, str):
        return client == "cancelled"
    return not context.is_active()


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    """The status the call ended with, as the client saw it."""
    code = getattr(context, "code", lambda: None)()  # grpcio >= 1.38; absent from the stubs
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if _client_cancelled(context):  # the call ended under the handler: client gone or time up
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN" if failed else "OK"


class _CallEnd:
    """Counts one call's end exactly once, with its duration in seconds.

    A unary call is counted when its handler returns. A stream that ends normally is
    counted at the call's termination: a client's cancel first ends the request stream
    (the handler may then finish normally) and only later marks the call cancelled. A
    handler can also never end: grpcio stops pulling a response stream whose client
    cancelled and leaves the generator to the garbage collector; termination counts that.
    """

    def __init__(self, context: grpc.ServicerContext, record: Callable[[str, float], None]) -> None:
        self._context = context
        self._record = record
        self._started = time.perf_counter()
        self._lock = threading.Lock()
        self._counted = False
        self._failed = True
        self._watching = context.add_callback(self._terminated)  # False: already over

    def handler_ended(self, *, failed: bool) -> None:
        """Count now (the handler raised, or the call is unary)."""
        self._count(_code_name(self._context, failed))

    def stream_ended(self) -> None:
        """The response stream ended normally: count at termination (now if it is over)."""
        self._failed = False
        if not self._watching:
            self._count(_code_name(self._context, failed=False))

    def _terminated(self) -> None:
        if not self._counted:
            self._count(_code_name(self._context, self._failed))

    def _count(self, code: str) -> None:
        with self._lock:
            if self._counted:
                return
            self._counted = True
        self._record(code, time.perf_counter() - self._started)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every call's start and end (with its status code) and its duration."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method.lstrip("/")
        service, _, method = full.partition("/")
        rpc_type = _TYPES[(handler.request_streaming, handler.response_streaming)]
        labels = (service, method, rpc_type)
        metrics = self._metrics

        def record(code: str, seconds: float) -> None:
            metrics.grpc_handled.labels(*labels, code).inc()
            metrics.grpc_handling_seconds.labels(*labels).observe(seconds)

        def unary_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
                metrics.grpc_started.labels(*labels).inc()
                end = _CallEnd(context, record)
                failed = True
                try:
                    response = behavior(request, context)
                    failed = False
                    return response
                finally:
                    end.handler_ended(failed=failed)

            return wrapper

        def stream_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                metrics.grpc_started.labels(*labels).inc()
                end = _CallEnd(context, record)
                try:
                    yield from behavior(request, context)
                except BaseException:
                    end.handler_ended(failed=True)
                    raise
                end.stream_ended()

            return wrapper

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary_response(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                stream_response(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                unary_response(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            stream_response(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
