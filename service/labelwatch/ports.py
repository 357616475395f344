"""Listening ports on the command line: a number, ``0`` for any free port, or ``off``.

Every listener labelwatch opens (gRPC, ``/metrics``, the Label Studio HTTP port)
takes the same values, so a test or a script can always ask for "any free port"
and read the bound one back from the start-up line, which is not the same as
turning the listener off.
"""

from __future__ import annotations

import argparse
import enum

OFF_WORDS = frozenset({"off", "none"})
"""Values that turn an optional listener off (any case)."""


class PortError(ValueError, argparse.ArgumentTypeError):
    """Not a port: argparse shows the message as is; settings from env report it as ValueError."""


def port_number(text: str) -> int:
    """A port to listen on, 0-65535; 0 asks the kernel for any free port.

    >>> port_number("50051"), port_number("0")
    (50051, 0)
    """
    try:
        value = int(text)
    except ValueError:
        raise PortError(f"not a port number: {text!r} (0-65535; 0 = any free port)") from None
    if not 0 <= value <= 65535:
        raise PortError(f"port {value} is outside 0-65535 (0 = any free port)")
    return value


def port_or_off(text: str) -> int | None:
    """:func:`port_number`, or None (the listener is off) for ``off`` or ``none``.

    >>> port_or_off("9464"), port_or_off("0"), port_or_off("off")
    (9464, 0, None)
    """
    if text.strip().lower() in OFF_WORDS:
        return None
    try:
        return port_number(text)
    except PortError:
        raise PortError(
            f"not a port: {text!r} (a number 0-65535, 0 = any free port, or off)"
        ) from None


class Off(enum.Enum):
    """What ``--x-port off`` parses to: unlike None ("not given"), it wins over env and default."""

    OFF = "off"


def port_or_off_argument(text: str) -> int | Off:
    """argparse ``type`` of an optional listener's flag: a port, or :attr:`Off.OFF`.

    >>> port_or_off_argument("off"), port_or_off_argument("0")
    (<Off.OFF: 'off'>, 0)
    """
    port = port_or_off(text)
    return Off.OFF if port is None else port


def shown(port: int | None) -> str:
    """A bound (or configured) port for logs and start-up lines: the number, or ``off``."""
    return "off" if port is None else str(port)
