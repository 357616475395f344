"""``labelwatch token``: create bearer tokens and list the token file.

``create`` prints the new token once, on stdout, and appends only its SHA-256
(with a name and roles) to the token file that ``labelwatch serve
--auth-tokens FILE`` reads. ``list`` shows names and roles, never hashes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from labelwatch.security.tokens import (
    ROLE_NAMES,
    TokenFileError,
    create_token,
    load_tokens,
    parse_roles,
)

_DEFAULT_FILE_ENV = "LABELWATCH_AUTH_TOKENS"

_DESCRIPTION = f"""\
Manage the bearer tokens a labelwatch server accepts (`labelwatch serve --auth-tokens FILE`).

  labelwatch token create --role score --name labeling-ui --file tokens.jsonl
  labelwatch token list --file tokens.jsonl

Roles: score (LabelQuality: Score, ScoreStream, ScoreBatch, GetModelInfo), watch
(FlagFeed: WatchFlags, AckFlags), admin (everything). The file holds SHA-256 hashes only;
the token is shown once, when it is created. To revoke a token, delete its line
and restart the server. FILE defaults to ${_DEFAULT_FILE_ENV}, else tokens.jsonl.
"""


def _default_file() -> Path:
    return Path(os.environ.get(_DEFAULT_FILE_ENV) or "tokens.jsonl")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``token`` subcommand with ``create`` and ``list``."""
    parser = subparsers.add_parser(
        "token",
        help="create bearer tokens for --auth-tokens",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="make a token, print it once, append its hash to the file",
        description="Make a token, print it once on stdout, append its hash to FILE.",
    )
    create.add_argument(
        "--role",
        action="append",
        required=True,
        metavar="ROLE",
        help=f"role of the token: {', '.join(ROLE_NAMES)} (repeat or comma-separate for several)",
    )
    create.add_argument(
        "--name",
        help="name shown in server logs and PERMISSION_DENIED messages "
        "[default: token-<first 8 hex digits of its hash>]",
    )
    create.add_argument(
        "--file",
        type=Path,
        default=None,
        help=f"token file to append to (created mode 600) [default ${_DEFAULT_FILE_ENV}, "
        "else tokens.jsonl]",
    )
    create.set_defaults(func=run_create)
    listing = actions.add_parser(
        "list", help="show the names and roles in the file", description="Show names and roles."
    )
    listing.add_argument("--file", type=Path, default=None, help="token file [default as create]")
    listing.set_defaults(func=run_list)


def run_create(args: argparse.Namespace) -> int:
    """Create a token; print it on stdout and what was done on stderr. Return the exit code."""
    path: Path = args.file or _default_file()
    try:
        roles = parse_roles(args.role)
        token, entry = create_token(path, roles, args.name)
    except (TokenFileError, ValueError) as exc:
        print(f"labelwatch token create: error: {exc}", file=sys.stderr)
        return 2
    print(token)
    held = ",".join(sorted(r.value for r in entry.roles))
    print(
        f"added token {entry.name!r} (roles: {held}) to {path}; this is the only time the "
        "token is shown: store it in your secret manager. A running server reads the file "
        "at start-up only: restart it.",
        file=sys.stderr,
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print ``name<TAB>roles<TAB>created_at`` per token. Return the exit code."""
    path: Path = args.file or _default_file()
    try:
        store = load_tokens(path)
    except TokenFileError as exc:
        print(f"labelwatch token list: error: {exc}", file=sys.stderr)
        return 2
    for entry in store.entries:
        roles = ",".join(sorted(r.value for r in entry.roles))
        print(f"{entry.name}\t{roles}\t{entry.created_at}")
    return 0
