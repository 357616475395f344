"""``labelwatch label-studio connect``: hook a Label Studio project up to a running labelwatch."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

_DESCRIPTION = """\
Connect a Label Studio project to a running `labelwatch serve --http-port PORT`:
registers a webhook (ANNOTATION_CREATED/UPDATED and ANNOTATIONS_DELETED ->
PORT/webhook, with the shared secret header) and labelwatch as the project's ML
backend (pre-annotation; HTTP Basic auth, user "labelwatch", the shared secret as
password).
Without --project, creates a project whose labeling config offers the model's classes.

  export LABEL_STUDIO_API_KEY=...  LABELWATCH_LS_WEBHOOK_SECRET=...
  labelwatch label-studio connect --url http://127.0.0.1:8080 --project 3 \\
      --labelwatch-url http://127.0.0.1:9000

Run it again at any time: existing registrations are updated, not duplicated.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``label-studio connect``."""
    parser = subparsers.add_parser(
        "label-studio",
        help="connect a Label Studio project (webhook + ML backend)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="ls_command", metavar="ACTION", required=True)
    connect = actions.add_parser(
        "connect",
        help="register the webhook and ML backend on a project",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    connect.add_argument("--url", required=True, help="Label Studio URL, e.g. http://host:8080")
    connect.add_argument(
        "--token",
        default=None,
        help="Label Studio API token (legacy or personal access token) "
        "[default: $LABEL_STUDIO_API_KEY]",
    )
    connect.add_argument(
        "--project", type=int, default=None, help="project id (default: create a project)"
    )
    connect.add_argument("--project-title", default="labelwatch", help="title of a created project")
    connect.add_argument(
        "--labelwatch-url",
        required=True,
        help="labelwatch's --http-port as Label Studio reaches it, e.g. http://10.0.0.5:9000",
    )
    connect.add_argument(
        "--webhook-secret-env",
        default="LABELWATCH_LS_WEBHOOK_SECRET",
        help="variable holding the shared secret (the server's --ls-webhook-secret-env) "
        "[default: LABELWATCH_LS_WEBHOOK_SECRET]",
    )
    connect.add_argument(
        "--webhook-secret-file", type=Path, default=None, help="file holding the secret instead"
    )
    connect.add_argument("--ls-text-key", default="text", help="task data key of the text")
    connect.add_argument("--ls-choices-name", default="labels", help="name of the Choices control")
    connect.add_argument(
        "--thresholds",
        type=Path,
        default=None,
        help="calibration artifact whose classes a created project offers "
        "(default: the embedded default model's)",
    )
    connect.set_defaults(func=run_connect)


def run_connect(args: argparse.Namespace) -> int:
    """Connect; print one line per step on stdout. Return the exit code."""
    from labelwatch import default_model
    from labelwatch.calibration import load_artifact
    from labelwatch.delivery import read_secret
    from labelwatch.errors import StartupError
    from labelwatch.labelstudio.client import LabelStudioClient, LabelStudioError
    from labelwatch.labelstudio.connect import connect
    from labelwatch.labelstudio.webhook import ProjectMapping

    prog = "labelwatch label-studio connect"
    token = args.token or os.environ.get("LABEL_STUDIO_API_KEY", "")
    try:
        secret = read_secret(
            "webhook secret",
            args.webhook_secret_env,
            args.webhook_secret_file,
            os.environ,
            "--webhook-secret-file",
        )
        client = LabelStudioClient(args.url, token)
        class_names: tuple[str, ...] = ()
        if args.project is None:
            artifact = load_artifact(args.thresholds or default_model.DEFAULT_THRESHOLDS)
            class_names = tuple(artifact.class_names)
        done = connect(
            client,
            labelwatch_url=args.labelwatch_url,
            secret=secret,
            project_id=args.project,
            class_names=class_names,
            mapping=ProjectMapping(args.ls_text_key, args.ls_choices_name),
            project_title=args.project_title,
        )
    except (StartupError, ValueError, OSError, LabelStudioError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    for line in done.done:
        print(line)
    print(f"project={done.project_id} webhook={done.webhook_id} ml_backend={done.ml_backend_id}")
    return 0
