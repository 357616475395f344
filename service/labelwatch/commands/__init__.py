"""`labelwatch` subcommands: each module exposes ``register(subparsers)``.

``register`` adds one subparser and sets ``func`` on it to a callable
``(argparse.Namespace) -> int`` (the process exit code). :mod:`labelwatch.cli` maps
each subcommand to its module; ``label-studio`` is :mod:`labelwatch.labelstudio.command`,
with the rest of the Label Studio code.
"""
