"""The model lifecycle's families: reloads, the serving version, and the shadow comparison.

Shadow families are counters labelled by ``live_version`` and ``shadow_version``, so
the values of several workers (or a scrape over time) add up: ``labelwatch models
compare`` sums them and derives agreement, flag rates and the label-quality
correlation (from the sums of ``x``, ``y``, ``x*x``, ``y*y``, ``x*y``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from labelwatch.metrics.buckets import LATENCY_BUCKETS

RELOAD_OUTCOMES = ("swapped", "unchanged", "refused")
"""``outcome`` of ``labelwatch_model_reloads_total``: a new version now serves; the
repository names the serving version already; the candidate failed a check."""

RELOAD_TRIGGERS = ("signal", "rpc", "watch")
"""``trigger`` of ``labelwatch_model_reloads_total``: SIGHUP, Admin.ReloadModel, or
--watch-repository seeing a change."""

FLAGGED_BY = ("live", "shadow", "both")
"""``flagged_by`` of ``labelwatch_shadow_class_flags_total``."""

QUALITY_TERMS = ("live", "shadow", "live_sq", "shadow_sq", "product")
"""``term`` of ``labelwatch_shadow_label_quality_sums_total``: sums of x, y, x², y², x·y
(x: live label quality, y: shadow's), from which the correlation follows."""

_RELOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ModelMetrics:
    """Reloads and the serving model's load time, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter(
            "labelwatch_model_reloads_total",
            "Model reload attempts by outcome (swapped, unchanged, refused) and trigger "
            "(signal, rpc, watch).",
            ["outcome", "trigger"],
            registry=registry,
        )
        for outcome in RELOAD_OUTCOMES:
            for trigger in RELOAD_TRIGGERS:
                self.reloads.labels(outcome, trigger)
        self.reload_seconds = Histogram(
            "labelwatch_model_reload_seconds",
            "Wall time to load and check a candidate version (the serving one keeps "
            "serving meanwhile).",
            buckets=_RELOAD_BUCKETS,
            registry=registry,
        )
        self.loaded_at = Gauge(
            "labelwatch_model_loaded_timestamp_seconds",
            "Unix time the serving model version started serving.",
            registry=registry,
        )


class ShadowMetrics:
    """The shadow model's agreement with the live one, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        versions = ["live_version", "shadow_version"]
        self.examples = Counter(
            "labelwatch_shadow_examples_total",
            "Examples scored by both the live and the shadow model.",
            versions,
            registry=registry,
        )
        self.agreeing = Counter(
            "labelwatch_shadow_examples_agreeing_total",
            "Examples the live and the shadow model flag exactly the same tags of.",
            versions,
            registry=registry,
        )
        self.class_flags = Counter(
            "labelwatch_shadow_class_flags_total",
            "Flagged tags of shadow-scored examples by class, flagged by the live model, "
            "the shadow model, or both.",
            [*versions, "class", "flagged_by"],
            registry=registry,
        )
        self.quality_sums = Counter(
            "labelwatch_shadow_label_quality_sums_total",
            "Sums over shadow-scored examples of the live (x) and shadow (y) label quality: "
            "term live = x, shadow = y, live_sq = x*x, shadow_sq = y*y, product = x*y.",
            [*versions, "term"],
            registry=registry,
        )
        self.dropped = Counter(
            "labelwatch_shadow_dropped_total",
            "Sampled examples not shadow-scored because the shadow queue was full.",
            registry=registry,
        )
        self.seconds = Histogram(
            "labelwatch_shadow_seconds",
            "Wall time of one shadow batch (model call and scoring), off the response path.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queued = Gauge(
            "labelwatch_shadow_queue_examples",
            "Examples waiting for the shadow model (bounded by the shadow queue).",
            registry=registry,
        )
