"""The public error surface: every failure a caller may see, transport-agnostic.

Internal code raises a :class:`PublicError` subclass (``raise ... from exc``);
the class's :attr:`~PublicError.code` is the one decision of how the failure is
reported, made here and nowhere else. The gRPC layer turns :class:`ErrorCode`
into a status with one table and ends the call with one public helper
(:func:`labelwatch.grpc.status.abort`); other transports (NATS, the Label Studio
HTTP port) read the same codes. Messages are written for the caller: they name
the example id and the field, and never contain secrets.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Why a request failed; mirrors the gRPC status codes we use."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"


class PublicError(Exception):
    """An error whose message is safe and useful to show to the caller."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidExample(PublicError):
    """A request field is malformed; the message names the example id and field."""

    code = ErrorCode.INVALID_ARGUMENT


class WrongInputKind(PublicError):
    """The input kind does not fit the loaded model (e.g. text to a float model)."""

    code = ErrorCode.FAILED_PRECONDITION


class TooManyExamples(PublicError):
    """A request holds more examples than ``--max-batch`` allows."""

    code = ErrorCode.INVALID_ARGUMENT


class Overloaded(PublicError):
    """The server sheds this request to protect the work it already admitted."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class ServerStopping(PublicError):
    """The server is draining and takes no new work; retry on another replica."""

    code = ErrorCode.UNAVAILABLE


class DeadlineExpired(PublicError):
    """The caller's deadline passed before the request was scored; it was dropped unscored."""

    code = ErrorCode.DEADLINE_EXCEEDED


class OutboxUnavailable(PublicError):
    """The flag outbox cannot be written: answering would lose the flags."""

    code = ErrorCode.UNAVAILABLE


class MalformedRequest(PublicError):
    """The request body does not parse as the message the method takes."""

    code = ErrorCode.INVALID_ARGUMENT


class Unauthenticated(PublicError):
    """No credentials, malformed ones, or a token the server does not accept."""

    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(PublicError):
    """A valid token without the role the method needs."""

    code = ErrorCode.PERMISSION_DENIED


class InvalidWatch(PublicError):
    """A WatchFlags/AckFlags field is malformed; the message names the field."""

    code = ErrorCode.INVALID_ARGUMENT


class Superseded(PublicError):
    """A newer WatchFlags stream for the same consumer took over."""

    code = ErrorCode.FAILED_PRECONDITION


class TooManyStreams(PublicError):
    """More WatchFlags streams than the server keeps open (each holds a gRPC thread)."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class ConsumerNotFound(PublicError):
    """AckFlags for a consumer that never watched."""

    code = ErrorCode.FAILED_PRECONDITION


class FeedUnavailable(PublicError):
    """The flag outbox cannot be read or written right now (watch consumers)."""

    code = ErrorCode.UNAVAILABLE


class ModelFailure(PublicError):
    """The model could not produce valid probabilities."""

    code = ErrorCode.INTERNAL


class ReloadRefused(PublicError):
    """A model reload was refused (no repository, or the candidate failed a check)."""

    code = ErrorCode.FAILED_PRECONDITION


class StartupError(Exception):
    """The server cannot start as configured; the message says what to change."""


class InvalidVerdict(PublicError):
    """A reported verdict is malformed or names a class its flag has no issue for."""

    code = ErrorCode.INVALID_ARGUMENT
