"""``labelwatch consume``: score examples straight off a NATS JetStream stream."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from labelwatch import config, config_cli, logs
from labelwatch.errors import StartupError

log = logging.getLogger("labelwatch.consume")

_DESCRIPTION = """\
Score labeled examples from a NATS JetStream stream, as many processes as you
like sharing one durable pull consumer (docs/ingestion.md).

Each message holds one example: the JSON object of the CLI's JSONL files
({"id": ..., "probabilities"|"text"|"features": ..., "labels": [...],
"annotator_id": ..., "metadata": {...}}), or a serialized labelwatch.v1.Example
with header Content-Type: application/x-protobuf. For each one, a JSON result
goes to --results-subject (header Nats-Msg-Id = <stream>-<sequence>, so a
redelivered input's repeat result is dropped by JetStream), its flags go to the
flag outbox (and from there to every sink and WatchFlags), and only then is
the input acked. A malformed message goes to --dead-letter-subject with the
reason and is acked. SIGTERM/SIGINT: stop fetching, finish and ack what is in
hand within --grace-seconds, leave the rest to the other processes.

  labelwatch consume --nats nats://127.0.0.1:4222 --stream EXAMPLES \\
      --subject 'examples.>' --durable labelwatch --thresholds thresholds.json

The model flags (--model, --thresholds, ...) and outbox/sink flags are those
of `labelwatch serve`; --max-inflight bounds the messages held at once.
Consumer flags also read LABELWATCH_CONSUME_<FLAG> (e.g. LABELWATCH_CONSUME_NATS).
"""

_CONSUME_FLAGS: tuple[tuple[str, type, object, str], ...] = (
    ("nats", str, "nats://127.0.0.1:4222", "NATS server URL"),
    ("stream", str, "LABELWATCH_EXAMPLES", "input stream (created as a work queue if missing)"),
    ("subject", str, "examples.>", "input subject filter of the durable consumer"),
    ("durable", str, "labelwatch", "durable consumer name; processes with the same name share"),
    ("results_subject", str, "labelwatch.results", "subject of the result messages"),
    ("dead_letter_subject", str, "labelwatch.dead", "subject of malformed input messages"),
    (
        "results_stream",
        str,
        "LABELWATCH_RESULTS",
        "stream for results and dead letters (created if missing, with the duplicate window below)",
    ),
    ("batch", int, 64, "most messages per fetch"),
    ("nak_delay_seconds", float, 5.0, "redelivery delay after a transient failure, seconds"),
    ("ack_wait_seconds", float, 60.0, "seconds JetStream waits for an ack before redelivering"),
    (
        "max_deliveries",
        int,
        5,
        "deliveries of a message that fails to score (not transiently) before it is dead-lettered",
    ),
    ("duplicate_window_seconds", float, 600.0, "duplicate window of streams this creates, s"),
)


_SERVE_ONLY = frozenset(
    {
        "port",
        "workers",
        "threads",
        "max_streams",
        "max_queued_calls",
        "max_message_bytes",
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "auth_tokens",
        "watch_ack_timeout_seconds",
        "http_port",
        "ls_text_key",
        "ls_choices_name",
        "ls_projects",
        "ls_webhook_secret_env",
        "ls_webhook_secret_file",
        "ls_queue_size",
        "ls_implicit_verdicts",
        "ls_writeback_url",
        "annotator_metrics",
        "adapt_to_verdicts",
        "target_precision",
        "adapt_interval_seconds",
    }
)
"""`labelwatch serve` settings that concern its gRPC and HTTP servers: not offered here."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``consume`` subcommand."""
    parser = subparsers.add_parser(
        "consume",
        help="score examples from a NATS JetStream stream",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_argument_group("stream")
    for name, kind, default, help_text in _CONSUME_FLAGS:
        env = "LABELWATCH_CONSUME_" + name.upper()
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest="consume_" + name,
            type=kind,
            default=None,
            metavar=name.upper(),
            help=f"{help_text} [env {env}; default {default}]",
        )
    config_cli.add_arguments(parser, exclude=_SERVE_ONLY)
    parser.set_defaults(func=run)


def _consume_value(args: argparse.Namespace, name: str, kind: type, default: object) -> Any:
    given = getattr(args, "consume_" + name)
    if given is not None:
        return given
    raw = os.environ.get("LABELWATCH_CONSUME_" + name.upper())
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"LABELWATCH_CONSUME_{name.upper()}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Resolve settings, consume until a signal, drain; return the exit code."""
    try:
        settings = config_cli.settings_from(args)
        values = {n: _consume_value(args, n, k, d) for n, k, d, _ in _CONSUME_FLAGS}
    except ValueError as exc:
        print(f"labelwatch consume: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    from nats.errors import Error as NatsError

    from labelwatch.engine import with_default_model
    from labelwatch.ingest import ConsumeOptions  # heavy imports only once settings are valid
    from labelwatch.ingest_app import consume_forever

    settings = with_default_model(settings)  # the log names the files really served

    options = ConsumeOptions(
        url=str(values["nats"]),
        stream=str(values["stream"]),
        subject=str(values["subject"]),
        durable=str(values["durable"]),
        results_subject=str(values["results_subject"]),
        dead_letter_subject=str(values["dead_letter_subject"]),
        results_stream=str(values["results_stream"]),
        batch=int(values["batch"]),
        max_inflight=max(settings.max_inflight, int(values["batch"])),
        nak_delay_seconds=float(values["nak_delay_seconds"]),
        ack_wait_seconds=float(values["ack_wait_seconds"]),
        max_deliveries=int(values["max_deliveries"]),
        duplicate_window_seconds=float(values["duplicate_window_seconds"]),
        grace_seconds=settings.grace_seconds,
    )
    described = settings.describe()  # secrets masked
    described.update(
        (f"consume_{k}", config.mask_url(v) if k == "nats" else str(v)) for k, v in values.items()
    )
    log.info("event=config " + logs.kv_format(list(described)), *described.values())
    try:
        return consume_forever(settings, options)
    except StartupError as exc:
        print(f"labelwatch consume: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, asyncio.TimeoutError, NatsError) as exc:
        print(
            f"labelwatch consume: error: {config.mask_url(options.url)}: {exc} "
            "(is nats-server running there with JetStream enabled, -js?)",
            file=sys.stderr,
        )
        return 1
