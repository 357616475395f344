"""The metrics of the security layer: shed load, expired deadlines, refused credentials.

On the injected registry (the same one :class:`labelwatch.metrics.Metrics` uses).
Every label value is created up front, so a dashboard sees a 0, not a gap. Token
text never reaches a label: failures are labelled by reason only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

SHED_REASONS = ("inflight", "streams")
"""``reason`` of ``labelwatch_requests_shed_total``: over --max-inflight or --max-streams."""

AUTH_FAILURE_REASONS = ("missing", "malformed", "invalid", "forbidden")
"""``reason`` of ``labelwatch_auth_failures_total``.

missing: no ``authorization`` metadata; malformed: not ``Bearer <token>``;
invalid: a token no entry of the token file matches; forbidden: a valid token
without the role the method needs (PERMISSION_DENIED; the others are UNAUTHENTICATED).
"""


class SecurityMetrics:
    """Counters and gauges of admission control and authentication, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests_shed = Counter(
            "labelwatch_requests_shed_total",
            "Requests refused with RESOURCE_EXHAUSTED to protect admitted work, by reason "
            "(inflight: over --max-inflight examples; streams: over --max-streams).",
            ["reason"],
            registry=registry,
        )
        self.deadline_expired = Counter(
            "labelwatch_deadline_expired_total",
            "Requests dropped without scoring because their deadline had passed.",
            ["grpc_method"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "labelwatch_auth_failures_total",
            "Calls refused for their credentials, by reason (missing, malformed, invalid: "
            "UNAUTHENTICATED; forbidden: PERMISSION_DENIED).",
            ["reason"],
            registry=registry,
        )
        self.inflight_examples = Gauge(
            "labelwatch_inflight_examples",
            "Examples admitted and not yet answered (bounded by --max-inflight).",
            registry=registry,
        )
        self.open_streams = Gauge(
            "labelwatch_open_streams",
            "Streaming calls currently open (bounded by --max-streams).",
            registry=registry,
        )
        for reason in SHED_REASONS:
            self.requests_shed.labels(reason)
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(reason)
