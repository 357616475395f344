"""The public error surface: every failure a caller may see, transport-agnostic.

Internal code raises a :class:`PublicError` subclass (``raise ... from exc``);
the gRPC layer maps :class:`ErrorCode` to a status in one table
(:mod:`labelwatch.grpc.status`). Messages are written for the caller: they
name the example id and the field, and never contain secrets.
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


class ModelFailure(PublicError):
    """The model could not produce valid probabilities."""

    code = ErrorCode.INTERNAL


class StartupError(Exception):
    """The server cannot start as configured; the message says what to change."""
