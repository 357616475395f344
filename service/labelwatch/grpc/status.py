"""Errors to gRPC statuses: the one table, and the one helper that ends a call with it.

Which :class:`~labelwatch.errors.ErrorCode` an error carries is decided in
:mod:`labelwatch.errors`; this module only translates it. Servicers and
interceptors end a call with :func:`abort` (or raise a
:class:`~labelwatch.errors.PublicError` inside :func:`guard`); none of them
picks a ``grpc.StatusCode`` itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NoReturn, TypeVar

import grpc

from labelwatch.errors import ErrorCode, PublicError

log = logging.getLogger(__name__)
T = TypeVar("T")

STATUS_OF: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}


def status_code(error: PublicError) -> grpc.StatusCode:
    """The gRPC status a caller sees for ``error``."""
    return STATUS_OF[error.code]


def abort(context: grpc.ServicerContext, method: str, exc: BaseException) -> NoReturn:
    """End the call for ``exc``: its own status and message if public, else a generic INTERNAL.

    ``method`` is the RPC's short name (``Score``), used in the log line and in the
    generic message. An INTERNAL failure is logged once, with its cause, for the
    operator; the caller gets only the public message.
    """
    if isinstance(exc, PublicError):
        if exc.code is ErrorCode.INTERNAL:
            # e.g. ModelFailure: the caller gets its short message, the operator the cause
            log.error("event=internal_error method=%s error=%s", method, exc.message, exc_info=exc)
        context.abort(status_code(exc), exc.message)
    log.error("event=internal_error method=%s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


def guard(context: grpc.ServicerContext, method: str, work: Callable[[], T]) -> T:
    """Run ``work()``; any exception ends the call through :func:`abort`."""
    try:
        return work()
    except Exception as exc:  # one place maps every failure to a status
        abort(context, method, exc)
