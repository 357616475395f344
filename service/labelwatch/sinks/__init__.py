"""Flag sinks: one module per destination, fed from the outbox by :class:`SinkWorker`.

* :mod:`labelwatch.sinks.base`: errors, retry policy, the delivery worker
* :mod:`labelwatch.sinks.webhook`: signed JSON batches over HTTP POST
* :mod:`labelwatch.sinks.nats`: NATS JetStream, deduplicated by ``Nats-Msg-Id``
* :mod:`labelwatch.labelstudio.sink`: tasks to review in a Label Studio project (it lives
  with the rest of the Label Studio code)

The gRPC watch consumers are served by :mod:`labelwatch.watch` instead: they
pull, and acknowledge, rather than being pushed to.
"""

from labelwatch.sinks.base import (
    DeliveryError,
    PermanentError,
    RetryableError,
    RetryPolicy,
    Sink,
    SinkUnavailable,
    SinkWorker,
)

__all__ = [
    "DeliveryError",
    "PermanentError",
    "RetryPolicy",
    "RetryableError",
    "Sink",
    "SinkUnavailable",
    "SinkWorker",
]
