"""The Admin servicer: ``ReloadModel`` over the engine's model lifecycle (admin role)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from labelwatch.engine.models import ReloadOutcome
from labelwatch.errors import ReloadRefused
from labelwatch.grpc.status import guard
from labelwatch_proto.labelwatch.v1 import admin_pb2 as pb
from labelwatch_proto.labelwatch.v1 import admin_pb2_grpc as pb_grpc

ADMIN_SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Admin"].full_name

Reload = Callable[[], ReloadOutcome]
"""Runs one reload and returns its outcome (raises ReloadRefused without a repository)."""

_OUTCOME = {
    "swapped": pb.ReloadModelResponse.OUTCOME_SWAPPED,
    "unchanged": pb.ReloadModelResponse.OUTCOME_UNCHANGED,
}


class AdminServicer(pb_grpc.AdminServicer):
    """Thin servicer: run the reload, translate its outcome (refused: FAILED_PRECONDITION)."""

    def __init__(self, reload: Reload) -> None:
        self._reload = reload

    def _reload_model(self) -> pb.ReloadModelResponse:
        outcome = self._reload()
        if outcome.outcome not in _OUTCOME:
            raise ReloadRefused(
                f"reload refused, version {outcome.version} keeps serving: {outcome.reason}"
            )
        return pb.ReloadModelResponse(
            outcome=_OUTCOME[outcome.outcome],
            version=outcome.version,
            previous_version=outcome.previous,
        )

    def ReloadModel(
        self, request: pb.ReloadModelRequest, context: grpc.ServicerContext
    ) -> pb.ReloadModelResponse:
        return guard(context, "ReloadModel", self._reload_model)
