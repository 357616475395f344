"""Fill a :class:`~labelwatch.config.Settings`: CLI flags, then ``LABELWATCH_*`` env, then defaults.

One ``--flag`` per settings field, its help text followed by the environment variable
and the default. A flag given on the command line wins over the environment, which
wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from labelwatch.config import Settings, concurrency
from labelwatch.ports import Off, port_number, port_or_off, port_or_off_argument
from labelwatch.scoring import FilterBy


def _env_name(name: str) -> str:
    return "LABELWATCH_" + name.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(f: dataclasses.Field[Any]) -> Any:
    listener = f.metadata.get("listener")
    if listener is not None:
        return port_or_off if listener == "optional" else port_number
    if f.metadata.get("parse") == "concurrency":
        return concurrency
    kind = str(f.type)
    if "Path" in kind:
        return Path
    if "FilterBy" in kind:
        return FilterBy
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float
    return str


def add_arguments(
    parser: argparse.ArgumentParser, *, exclude: Collection[str] = frozenset()
) -> None:
    """Add one ``--flag`` per :class:`Settings` field, with help, unit and env name.

    ``exclude``: field names a command has no use for (they keep their defaults).
    """
    for f in dataclasses.fields(Settings):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = f.metadata.get("default_shown", _show(f.default))
        help_text = f"{f.metadata['help']} [env {_env_name(f.name)}; default {shown}]"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
            continue
        parser.add_argument(
            flag,
            type=port_or_off_argument
            if f.metadata.get("listener") == "optional"
            else _converter(f),
            default=None,
            choices=[_converter(f)(c) for c in f.metadata.get("choices", [])] or None,
            help=help_text,
            metavar=f.name.upper(),
        )


def _show(value: object) -> str:
    return value.value if isinstance(value, FilterBy) else str(value)


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve each field: CLI flag if given, else ``LABELWATCH_<NAME>``, else the default.

    Raises ``ValueError`` naming the env variable for an unparsable value.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = None if given is Off.OFF else given  # `--metrics-port off`
            continue
        raw = env.get(_env_name(f.name))
        if raw is None:
            continue
        try:
            if f.type in ("bool", bool):
                values[f.name] = _parse_bool(raw)
            else:
                values[f.name] = _converter(f)(raw)
        except ValueError as exc:
            raise ValueError(f"{_env_name(f.name)}: {exc}") from exc
        choices = f.metadata.get("choices")
        if choices and str(_show(values[f.name])) not in choices:
            raise ValueError(f"{_env_name(f.name)}: must be one of {', '.join(choices)}")
    return Settings(**values)
