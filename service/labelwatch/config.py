"""Server settings: one object, filled from CLI flags, then ``LABELWATCH_*`` env, then defaults.

This module says what each setting means (help, unit, default); :mod:`labelwatch.config_cli`
fills a :class:`Settings` from the command line and the environment.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from labelwatch.scoring import FilterBy

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("kv", "json")
OUTBOX_SYNC_MODES = ("full", "normal")


@dataclass(frozen=True)
class Settings:
    """Everything ``labelwatch serve`` can be told. Units are in the field names' help."""

    model: Path | None = field(
        default=None,
        metadata={
            "help": "ONNX multi-label classifier (float (N, D) or string input); needs "
            "--thresholds. With neither --model nor --thresholds the server serves the "
            "embedded default model: a debtags text classifier (124 tags) and its artifact."
        },
    )
    thresholds: Path | None = field(
        default=None,
        metadata={
            "help": "calibration artifact (JSON) from `labelwatch calibrate`. Without --model, "
            "the server accepts only client-computed probabilities. With neither flag the "
            "embedded default model and its artifact are served."
        },
    )
    model_output: str | None = field(
        default=None,
        metadata={"help": "name of the model output holding (N, K) scores (default: detected)."},
    )
    model_outputs_logits: bool = field(
        default=False,
        metadata={"help": "the model output is logits: apply a sigmoid."},
    )
    model_version: str | None = field(
        default=None,
        metadata={"help": "version stamped on results (default: <model name>-<sha256[:12]>)."},
    )
    model_repository: Path | None = field(
        default=None,
        metadata={"help": "serve DIR/<version>/ instead of --model, reloadable (README)."},
    )
    watch_repository: bool = field(default=False, metadata={"help": "reload when DIR changes."})
    repository_poll_seconds: float = field(default=5.0, metadata={"help": "seconds per poll."})
    shadow_version: str | None = field(
        default=None,
        metadata={"help": "a DIR version that scores a sample too, only to compare (not served)."},
    )
    shadow_fraction: float = field(default=0.1, metadata={"help": "share of examples shadowed."})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind."})
    port: int = field(
        default=50051,
        metadata={
            "help": "gRPC port; 0 = any free port (the bound port is printed and logged).",
            "listener": "required",
        },
    )
    # None: no endpoint. 0 asks for any free port (it meant "off" before: write off now)
    metrics_port: int | None = field(
        default=9464,
        metadata={
            "help": "Prometheus /metrics HTTP port on --host; 0 = any free port (printed and "
            "logged), off = no endpoint. (0 used to mean off: write off.)",
            "listener": "optional",
        },
    )
    max_batch: int = field(
        default=1024,
        metadata={"help": "most examples in one request, and in one merged model call."},
    )
    batch_window_ms: float = field(
        default=2.0,
        metadata={
            "help": "when requests are already queued, milliseconds to wait for more before "
            "a model call (a lone request never waits)."
        },
    )
    max_message_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={"help": "largest gRPC message accepted or sent, in bytes."},
    )
    grace_seconds: float = field(
        default=10.0,
        metadata={"help": "on SIGTERM/SIGINT, seconds in-flight calls get to finish."},
    )
    drain_delay_seconds: float = field(
        default=0.0,
        metadata={
            "help": "on SIGTERM/SIGINT, seconds to keep serving while health already says "
            "NOT_SERVING, so load balancers that poll Check take this server out before it "
            "stops listening; then the --grace-seconds drain starts (0 = at once)."
        },
    )
    # None: the rule the artifact records (confident_learning for one that records none)
    filter_by: FilterBy | None = field(
        default=None,
        metadata={
            "help": "rule that flags a tag as missing or spurious, as cleanlab's filter_by; one "
            "of " + ", ".join(f.value for f in FilterBy) + " (docs/detection.md compares them). "
            "Given, it overrides the rule recorded in the --thresholds artifact.",
            "choices": [f.value for f in FilterBy],
            "default_shown": "the artifact's filter_by; default confident_learning for an "
            "artifact that records none",
        },
    )
    # None: the artifact's default budget (budget rule only)
    flag_budget: float | None = field(
        default=None,
        metadata={
            "help": "for the budget rule: flagged (example, tag) pairs per example to aim at, "
            "on data like the calibration set, in (0, number of classes]; the one knob for "
            "the review volume (docs/detection.md).",
            "default_shown": "the artifact's flag_budget.default (0.1 for the default model)",
        },
    )
    threads: int = field(
        default=32, metadata={"help": "gRPC handler threads per process (concurrent calls)."}
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "server processes sharing the port (SO_REUSEPORT); worker i serves "
            "metrics on --metrics-port + i (with --metrics-port 0, each on any free port). "
            "Give each onnxruntime cores/workers --intra-op-threads."
        },
    )
    model_concurrency: str = field(
        default="auto",
        metadata={
            "help": "model calls in flight at once per worker (batcher threads): a number >= 1, "
            "or auto = cores / --workers (at least 1) for a text model and 1 for a feature "
            "model or client probabilities. Measured on 2 cores, in-process, batch 64 "
            "(docs/performance.md, 'Concurrent model calls'): the default text model scores "
            "9,586 ex/s with 2 calls of 1 onnxruntime thread each against 5,820 with 1 call "
            "of 2 threads; the benchmark's float model (cheap per example, so Python-bound) "
            "34,066 with 1 call against 28,349 with 2. Give a heavy feature model N.",
            "parse": "concurrency",
        },
    )
    intra_op_threads: int = field(
        default=0,
        metadata={
            "help": "onnxruntime intra-op threads per model call; 0 = cores / (--workers x "
            "--model-concurrency), at least 1, so calls in flight do not oversubscribe the cores."
        },
    )
    inter_op_threads: int = field(
        default=0, metadata={"help": "onnxruntime inter-op threads; 0 = onnxruntime's default."}
    )
    ort_spinning: bool = field(
        default=False,
        metadata={
            "help": "let onnxruntime's intra-op threads busy-wait between runs (off by default: "
            "on shared cores spinning threads take CPU from the gRPC threads; see "
            "docs/performance.md)."
        },
    )
    # -- flag delivery (docs/delivery.md) --
    data_dir: Path = field(
        default=Path("labelwatch-data"),
        metadata={"help": "directory for labelwatch's state (the flag outbox, unless --outbox)."},
    )
    outbox: Path | None = field(
        default=None,
        metadata={
            "help": "flag outbox, an SQLite file (default DATA_DIR/outbox.sqlite3). Every flag is "
            "stored here before the response reporting it is sent; if it cannot be written, "
            "scoring answers UNAVAILABLE and health says NOT_SERVING."
        },
    )
    outbox_retention_days: float = field(
        default=7.0, metadata={"help": "days a flag is kept in the outbox; 0 = no age limit."}
    )
    outbox_max_mb: float = field(
        default=512.0,
        metadata={"help": "MiB of flags the outbox keeps; the oldest go first; 0 = no limit."},
    )
    outbox_sync: str = field(
        default="normal",
        metadata={
            "help": "SQLite synchronous mode of the outbox (WAL): normal (a stored flag survives "
            "any crash of the process, kill -9 included; the last commits may be lost if the "
            "host loses power) or full (an fsync per group commit: survives power loss too).",
            "choices": OUTBOX_SYNC_MODES,
        },
    )
    watch_ack_timeout_seconds: float = field(
        default=30.0,
        metadata={"help": "seconds a WatchFlags consumer has to ack a flag before it is resent."},
    )
    sink_max_attempts: int = field(
        default=10,
        metadata={
            "help": "attempts per flag when a sink answers with an error, before the flag is "
            "dead-lettered (an unreachable sink is retried without limit)."
        },
    )
    sink_retry_initial_seconds: float = field(
        default=0.5, metadata={"help": "first retry delay, in seconds; doubles per attempt."}
    )
    sink_retry_max_seconds: float = field(
        default=60.0, metadata={"help": "longest retry delay, in seconds (jitter included)."}
    )
    webhook_url: str | None = field(
        default=None,
        metadata={
            "help": "POST flags as signed JSON batches to this URL (off when unset).",
            "mask": "url",
        },
    )
    webhook_secret_env: str = field(
        default="LABELWATCH_WEBHOOK_SECRET",
        metadata={"help": "name of the environment variable holding the webhook HMAC key."},
    )
    webhook_secret_file: Path | None = field(
        default=None,
        metadata={"help": "file holding the webhook HMAC key (instead of the variable)."},
    )
    webhook_timeout_seconds: float = field(
        default=10.0, metadata={"help": "seconds one webhook request may take."}
    )
    nats_url: str | None = field(
        default=None,
        metadata={
            "help": "publish flags to NATS JetStream at this URL, e.g. nats://127.0.0.1:4222 "
            "(off when unset).",
            "mask": "url",
        },
    )
    nats_subject: str = field(
        default="labelwatch.flags", metadata={"help": "NATS subject each flag is published on."}
    )
    nats_stream: str = field(
        default="LABELWATCH_FLAGS",
        metadata={"help": "JetStream stream for the subject (created if missing)."},
    )
    nats_duplicate_window_seconds: float = field(
        default=600.0,
        metadata={"help": "duplicate window of a stream labelwatch creates, in seconds."},
    )
    label_studio_url: str | None = field(
        default=None,
        metadata={
            "help": "import flags as review tasks into Label Studio at this URL, e.g. "
            "http://127.0.0.1:8080 (off when unset).",
            "mask": "url",
        },
    )
    label_studio_token_env: str = field(
        default="LABEL_STUDIO_API_KEY",
        metadata={"help": "name of the environment variable holding the Label Studio token."},
    )
    label_studio_token_file: Path | None = field(
        default=None,
        metadata={"help": "file holding the Label Studio token (instead of the variable)."},
    )
    label_studio_project: str = field(
        default="labelwatch flags",
        metadata={"help": "title of the Label Studio project (created if missing)."},
    )
    # -- Label Studio, both ways (docs/label-studio.md) --
    http_port: int | None = field(
        default=None,
        metadata={
            "help": "HTTP port on --host for Label Studio: annotation webhooks (POST /webhook) "
            "and the ML backend protocol (/health, /setup, /predict); 0 = any free port "
            "(printed and logged), off = no HTTP server. (0 used to mean off: write off.)",
            "listener": "optional",
            "default_shown": "off",
        },
    )
    ls_text_key: str = field(
        default="text",
        metadata={"help": "key of a Label Studio task's data that holds the text."},
    )
    ls_choices_name: str = field(
        default="labels",
        metadata={"help": "name of the Choices control in the labeling config holding the tags."},
    )
    ls_projects: Path | None = field(
        default=None,
        metadata={
            "help": 'JSON file of per-project mappings, e.g. {"projects": {"3": '
            '{"text_key": "body", "choices_name": "tags"}}}; projects not in it use '
            "--ls-text-key and --ls-choices-name."
        },
    )
    ls_webhook_secret_env: str = field(
        default="LABELWATCH_LS_WEBHOOK_SECRET",
        metadata={
            "help": "name of the environment variable holding the shared secret Label Studio "
            "webhooks must send in the X-Labelwatch-Secret header."
        },
    )
    ls_webhook_secret_file: Path | None = field(
        default=None,
        metadata={"help": "file holding the webhook shared secret (instead of the variable)."},
    )
    ls_queue_size: int = field(
        default=1000,
        metadata={
            "help": "Label Studio events stored in the outbox and waiting to be processed; "
            "past it a webhook gets HTTP 503 (Label Studio does not resend it)."
        },
    )
    adapt_to_verdicts: bool = field(
        default=False,
        metadata={
            "help": "move per-class cut-offs on flag scores so that each class's flags reach "
            "--target-precision, measured from reviewers' verdicts (bounded steps, each "
            "change logged and versioned in the outbox; docs/label-studio.md)."
        },
    )
    target_precision: float = field(
        default=0.8,
        metadata={"help": "with --adapt-to-verdicts: the precision of flags to reach, in (0, 1)."},
    )
    adapt_interval_seconds: float = field(
        default=60.0,
        metadata={"help": "with --adapt-to-verdicts: seconds between adaptation steps."},
    )
    annotator_metrics: int = field(
        default=0,
        metadata={
            "help": "export labelwatch_annotator_error_rate{annotator} for the N annotators "
            "with the highest estimated error rate (0: only aggregates, so series stay "
            "bounded); `labelwatch annotators` and GetAnnotatorStats list all of them."
        },
    )
    ls_implicit_verdicts: str = field(
        default="on",
        metadata={
            "help": "on: when a flagged annotation is updated in Label Studio, record a verdict "
            "per flagged tag (toggled the suggested way = CONFIRMED, left as it was = REJECTED; "
            "docs/label-studio.md); off: only verdicts reported through gRPC count.",
            "choices": ("on", "off"),
        },
    )
    ls_writeback_url: str | None = field(
        default=None,
        metadata={
            "help": "write each scored annotation's label quality (and, when flagged, a "
            "prediction with the suggested tags) back to the annotated task in Label Studio at "
            "this URL; the token comes from --label-studio-token-env/-file (off when unset).",
            "mask": "url",
        },
    )
    # -- security and limits (docs/security.md) --
    tls_cert: Path | None = field(
        default=None,
        metadata={
            "help": "PEM server certificate chain; with --tls-key the port speaks TLS only "
            "(default: plaintext, fine on loopback only)."
        },
    )
    tls_key: Path | None = field(
        default=None,
        metadata={"help": "PEM private key of --tls-cert (unencrypted; keep it mode 600)."},
    )
    tls_client_ca: Path | None = field(
        default=None,
        metadata={
            "help": "PEM CA certificate(s): require every client to present a certificate "
            "signed by one of them (mutual TLS)."
        },
    )
    auth_tokens: Path | None = field(
        default=None,
        metadata={
            "help": "token file (JSON lines of sha256 hashes and roles, made by `labelwatch "
            "token create`): every call except health and reflection then needs "
            "'authorization: Bearer <token>' with the method's role (default: no auth)."
        },
    )
    max_inflight: int = field(
        default=4096,
        metadata={
            "help": "most examples admitted and not yet answered, over all calls; past it a "
            "request gets RESOURCE_EXHAUSTED at once. At least --max-batch."
        },
    )
    max_queued_calls: int = field(
        default=64,
        metadata={
            "help": "calls that may wait for a free handler thread (beyond --threads "
            "running); past it gRPC answers RESOURCE_EXHAUSTED at once."
        },
    )
    max_streams: int = field(
        default=16,
        metadata={
            "help": "most streaming calls open at once (each holds a handler thread; keep "
            "below --threads); past it RESOURCE_EXHAUSTED."
        },
    )
    max_labels_per_example: int = field(
        default=1024,
        metadata={"help": "most tags (labels + label_indices) on one example."},
    )
    max_text_bytes: int = field(
        default=64 * 1024,
        metadata={"help": "most UTF-8 bytes of one example's text."},
    )
    log_level: str = field(default="info", metadata={"help": "log level.", "choices": LOG_LEVELS})
    log_format: str = field(
        default="kv",
        metadata={"help": "kv (key=value) or json, one event a line.", "choices": LOG_FORMATS},
    )

    def describe(self) -> dict[str, str]:
        """The effective settings as strings, for the start-up log line."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, FilterBy) else str(value)
            if f.metadata.get("listener") and value is None:
                out[f.name] = "off"
            if f.metadata.get("mask") == "url" and isinstance(value, str):
                out[f.name] = mask_url(value)
        return out

    @property
    def outbox_path(self) -> Path:
        """The outbox file: ``--outbox``, else ``DATA_DIR/outbox.sqlite3``."""
        return self.outbox if self.outbox is not None else self.data_dir / "outbox.sqlite3"


def concurrency(text: str) -> str:
    """``auto`` or a whole number >= 1 (for ``--model-concurrency``); ValueError otherwise.

    >>> concurrency("AUTO"), concurrency(" 2 ")
    ('auto', '2')
    """
    value = text.strip().lower()
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"must be auto or a whole number >= 1, got {text!r}")
    return str(int(value))


def mask_url(url: str) -> str:
    """``url`` with any password and query string replaced by ``***`` (for logs).

    >>> mask_url("nats://user:secret@127.0.0.1:4222")
    'nats://user:***@127.0.0.1:4222'
    >>> mask_url("https://hooks.example/x?token=abc")
    'https://hooks.example/x?***'
    """
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":***@", 1)
    query = "***" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
