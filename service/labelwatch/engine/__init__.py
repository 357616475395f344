"""The transport-independent scoring engine (see :mod:`labelwatch.engine.core`)."""

from __future__ import annotations

from labelwatch.engine.core import Engine
from labelwatch.engine.endpoint import MetricsEndpoint
from labelwatch.engine.loading import (
    intra_op_threads_per_worker,
    load_pipeline,
    model_concurrency,
    with_default_model,
)

__all__ = [
    "Engine",
    "MetricsEndpoint",
    "intra_op_threads_per_worker",
    "load_pipeline",
    "model_concurrency",
    "with_default_model",
]
