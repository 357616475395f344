"""Server interceptor exporting the standard gRPC server metrics.

Series follow the names operators already chart (go-grpc-prometheus):
``grpc_server_started_total``, ``grpc_server_handled_total`` and
``grpc_server_handling_seconds``, labelled by service, method, type and code.
"""

from __future__ import annotations

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

    grpcio records this on the call's private state (``client == "cancelled"``) before it
    runs the termination callbacks; without that attribute, ``is_active()`` is the best
    public answer (it can still say True for a cancel that is on its way).
    """
    state = getattr(context, "_state", None)
    client = getattr(state, "client", None)
    if isinstance(client, str):
        return client == "cancelled"
    return not context.is_active()


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    """The status the call ended with, as the client saw it (call from its termination)."""
    code = getattr(context, "code", lambda: None)()  # grpcio >= 1.38; absent from the stubs
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if _client_cancelled(context):  # the call ended under the handler: client gone or time up
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN" if failed else "OK"


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

        def finish(started: float, context: grpc.ServicerContext, failed: bool) -> None:
            """Observe the duration now; count the status once the call has terminated.

            A handler can end normally while its call is being cancelled (a stream whose
            request iterator ran dry as the client cancelled): only at termination does
            grpcio know which, so the count waits for the termination callback.
            """
            metrics.grpc_handling_seconds.labels(*labels).observe(time.perf_counter() - started)

            def count() -> None:
                metrics.grpc_handled.labels(*labels, _code_name(context, failed)).inc()

            if not context.add_callback(count):  # already terminated: its state is final
                count()

        def unary_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
                metrics.grpc_started.labels(*labels).inc()
                started = time.perf_counter()
                failed = True
                try:
                    response = behavior(request, context)
                    failed = False
                    return response
                finally:
                    finish(started, context, failed)

            return wrapper

        def stream_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                metrics.grpc_started.labels(*labels).inc()
                started = time.perf_counter()
                failed = True
                try:
                    yield from behavior(request, context)
                    failed = False
                finally:
                    finish(started, context, failed)

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
