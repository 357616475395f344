"""Request bytes that do not parse get INVALID_ARGUMENT, not gRPC's default INTERNAL.

gRPC Python answers an undecodable request message with INTERNAL ("Exception
deserializing request!") before any handler or interceptor sees the call, so
monitoring would count a caller's garbage as a server fault, and
``grpc_server_handled_total`` would not count it at all. This interceptor
wraps each method's deserializer: a message that fails to parse becomes a
marker, and the call ends with :class:`~labelwatch.errors.MalformedRequest`
(INVALID_ARGUMENT) naming the expected message type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from labelwatch.errors import MalformedRequest
from labelwatch.grpc.status import abort

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request message that failed to parse."""

    type_name: str
    error: str


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)  # generated code passes Message.FromString
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return str(name) if name else "request message"


def _guarded(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    type_name = _type_name(deserializer)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any parse failure is the caller's, not ours
            return _Undecodable(type_name, type(exc).__name__)

    return deserialize


def _refuse(context: grpc.ServicerContext, bad: _Undecodable) -> None:
    abort(
        context,
        bad.type_name,
        MalformedRequest(
            f"the request body is not a valid {bad.type_name} ({bad.error}); "
            "send a message serialized from the published labelwatch .proto files"
        ),
    )


def _checked_iterator(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, _Undecodable):
            _refuse(context, request)
        yield request


class DecodeGuardInterceptor(grpc.ServerInterceptor):
    """Turns request-parse failures into INVALID_ARGUMENT for every method."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        deserializer = _guarded(handler.request_deserializer)
        serializer = handler.response_serializer

        def unary_in(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    _refuse(context, request)
                return behavior(request, context)

            return run

        def stream_in(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return behavior(_checked_iterator(requests, context), context)

            return run

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                unary_in(handler.unary_unary), deserializer, serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                unary_in(handler.unary_stream), deserializer, serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                stream_in(handler.stream_unary), deserializer, serializer
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            stream_in(handler.stream_stream), deserializer, serializer
        )
