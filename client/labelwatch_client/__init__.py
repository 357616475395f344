"""Typed Python client for the labelwatch label-quality service.

Needs only ``grpcio`` and ``protobuf``. Score examples, read the verdicts::

    from labelwatch_client import Example, LabelwatchClient

    with LabelwatchClient("127.0.0.1:50051") as client:
        results = client.score([Example("a1", text="a red car", labels=["red"])])
        for result in results:
            if result.is_issue:
                print(result.id, result.label_quality, result.suggested_labels)

``AsyncLabelwatchClient`` (in :mod:`labelwatch_client.aio`) has the same
methods for asyncio. Every failed call raises a :class:`LabelwatchError`
(``.code``, ``.details``). The ``labelwatch-client score|info`` command wraps
the same calls for JSONL files.
"""

from __future__ import annotations

from labelwatch_client.aio import AsyncLabelwatchClient
from labelwatch_client.client import LabelwatchClient
from labelwatch_client.errors import (
    DeadlineExceeded,
    ExampleFormatError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LabelwatchError,
    PermissionDenied,
    ProtocolMismatch,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from labelwatch_client.types import (
    CalibrationSummary,
    ClassCalibration,
    ClassIssue,
    Example,
    InputKind,
    IssueKind,
    ModelInfo,
    ScoreResult,
)

__all__ = [
    "AsyncLabelwatchClient",
    "CalibrationSummary",
    "ClassCalibration",
    "ClassIssue",
    "DeadlineExceeded",
    "Example",
    "ExampleFormatError",
    "FailedPrecondition",
    "InputKind",
    "Internal",
    "InvalidArgument",
    "IssueKind",
    "LabelwatchClient",
    "LabelwatchError",
    "ModelInfo",
    "PermissionDenied",
    "ProtocolMismatch",
    "ResourceExhausted",
    "ScoreResult",
    "Unauthenticated",
    "Unavailable",
]
