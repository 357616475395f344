"""`labelwatch` subcommands: each module exposes ``register(subparsers)``.

``register`` adds one subparser and sets ``func`` on it to a callable
``(argparse.Namespace) -> int`` (the process exit code).
"""
