"""``labelwatch serve``: run the gRPC scoring server."""

from __future__ import annotations

import argparse
import logging
import sys

from labelwatch import config_cli, logs
from labelwatch.errors import StartupError

log = logging.getLogger("labelwatch.serve")

_DESCRIPTION = """\
Serve label-quality scoring over gRPC (service labelwatch.v1.LabelQuality,
plus grpc.health.v1 and server reflection).

Give the ONNX model with --model and its calibration artifact (from
`labelwatch calibrate`) with --thresholds. With --thresholds alone the server
scores probabilities that clients computed with their own model. Or serve
versions from a model repository (--model-repository DIR, with DIR/<version>/
model.onnx + thresholds.json) and swap in new ones live: SIGHUP,
Admin.ReloadModel or --watch-repository.
Every flag can also be set as an environment variable LABELWATCH_<FLAG>
(e.g. LABELWATCH_PORT=50052); a flag on the command line wins.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run the gRPC scoring server",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_cli.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve settings, start the server, block until a signal; return the exit code."""
    try:
        settings = config_cli.settings_from(args)
    except ValueError as exc:
        print(f"labelwatch serve: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    from labelwatch.engine import with_default_model  # heavy imports only once settings are valid
    from labelwatch.server import serve_forever
    from labelwatch.workers import run_workers

    settings = with_default_model(settings)  # the log names the files really served
    described = settings.describe()  # secrets masked
    log.info("event=config " + logs.kv_format(list(described)), *described.values())

    try:
        if settings.workers > 1:
            return run_workers(settings)
        return serve_forever(settings)
    except StartupError as exc:
        print(f"labelwatch serve: error: {exc}", file=sys.stderr)
        return 2
