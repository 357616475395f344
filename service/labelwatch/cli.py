"""The ``labelwatch`` command: one entry point, one module per subcommand.

Subcommand modules are imported lazily so that the client-side commands
(``score``, ``info``) work on an install without the ``server`` extra.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from labelwatch import __version__

# subcommand name -> module that registers it (server-side ones need numpy etc.)
_SERVER_COMMANDS: dict[str, str] = {
    "serve": "labelwatch.commands.serve",
    "calibrate": "labelwatch.commands.calibrate",
    "audit": "labelwatch.commands.audit",
    "demo": "labelwatch.commands.demo",
    "token": "labelwatch.commands.token",
    "flags": "labelwatch.commands.flags_admin",
    "annotators": "labelwatch.commands.annotators",
    "consume": "labelwatch.commands.consume",
    "models": "labelwatch.commands.models",
    "label-studio": "labelwatch.labelstudio.command",
}
_CLIENT_COMMANDS: dict[str, str] = {
    "score": "labelwatch_client.cli",
    "info": "labelwatch_client.cli",
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Build the parser, importing only the module of the chosen subcommand."""
    parser = argparse.ArgumentParser(
        prog="labelwatch",
        description="Online label-quality scoring of multi-label data.",
    )
    parser.add_argument("--version", action="version", version=f"labelwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    wanted = {**_SERVER_COMMANDS, **_CLIENT_COMMANDS}
    names = [chosen] if chosen in wanted else list(wanted)
    registered: set[str] = set()
    for name in names:
        module_name = wanted[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if name == chosen:
                raise SystemExit(
                    f"labelwatch {name}: needs the server extra "
                    f"(pip install 'labelwatch[server]'): {exc}"
                ) from exc
            sub.add_parser(name, help=f"(unavailable: {exc.name} is not installed)")
            continue
        if module_name == "labelwatch_client.cli":
            if module_name in registered:
                continue
            registered.add(module_name)
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``labelwatch`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
