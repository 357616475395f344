"""The client's error surface: one exception per failed call, one for bad local input.

Every failed RPC is raised as a :class:`LabelwatchError` (or the subclass for its
status code) carrying the server's message unchanged in ``.details``; the
original :class:`grpc.RpcError` is kept as ``__cause__``. Messages never contain
the bearer token.
"""

from __future__ import annotations

import grpc


class LabelwatchError(Exception):
    """A call to the labelwatch server failed.

    ``code`` is the gRPC status, ``details`` the server's message (for bad
    input it names the example id and field), ``target`` the ``host:port`` called.
    """

    def __init__(self, code: grpc.StatusCode, details: str, target: str = "") -> None:
        self.code = code
        self.details = details
        self.target = target
        where = f"{target}: " if target else ""
        super().__init__(f"{where}{code.name}: {details}")


class InvalidArgument(LabelwatchError):
    """The server rejected the request's content (INVALID_ARGUMENT)."""


class FailedPrecondition(LabelwatchError):
    """The request does not fit the loaded model, e.g. text for a features model."""


class ResourceExhausted(LabelwatchError):
    """The server shed the request, or a message exceeded the size limit."""


class Unauthenticated(LabelwatchError):
    """No valid credentials were sent (UNAUTHENTICATED)."""


class PermissionDenied(LabelwatchError):
    """The credentials do not allow this call (PERMISSION_DENIED)."""


class Unavailable(LabelwatchError):
    """The server could not be reached or is shutting down (UNAVAILABLE)."""


class DeadlineExceeded(LabelwatchError):
    """No answer within the timeout (DEADLINE_EXCEEDED)."""


class Internal(LabelwatchError):
    """The server failed while handling a valid request (INTERNAL)."""


class ProtocolMismatch(LabelwatchError):
    """The server sent something this client does not understand (it is newer)."""

    def __init__(self, details: str, target: str = "") -> None:
        super().__init__(grpc.StatusCode.UNKNOWN, details, target)


_CLASS_OF: dict[grpc.StatusCode, type[LabelwatchError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
}


def error_for(code: grpc.StatusCode, details: str, target: str = "") -> LabelwatchError:
    """Build the :class:`LabelwatchError` subclass that matches ``code``."""
    return _CLASS_OF.get(code, LabelwatchError)(code, details, target)


def from_rpc_error(exc: grpc.RpcError, target: str = "") -> LabelwatchError:
    """Translate a :class:`grpc.RpcError` (sync or ``grpc.aio``) into a :class:`LabelwatchError`."""
    code_of = getattr(exc, "code", None)
    details_of = getattr(exc, "details", None)
    code = code_of() if callable(code_of) else None
    details = details_of() if callable(details_of) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_for(code, str(details) if details else code.name.lower(), target)


class ExampleFormatError(ValueError):
    """A JSON example is malformed; ``field`` names the offending field (e.g. ``features[2]``)."""

    def __init__(self, field: str | None, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(problem if field is None else f"field {field!r}: {problem}")
