"""Structured logging: one event a line, as key=value pairs or JSON.

Log calls name the event and its fields in the format string, e.g.
``log.info("event=started address=%s:%d classes=%d", host, port, k)``, with free
text for a person after a colon (``"event=x path=%s: why it matters"``). The
``kv`` format prints that line as is; the ``json`` format turns each ``key=value``
into a JSON key of its own (numbers stay numbers), the free text into ``msg``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})
_FIELD = re.compile(r"([a-z_][a-z0-9_]*)=(.*)\Z", re.DOTALL)
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?([a-zA-Z%])")
_PAIRS = re.compile(r"[a-z_][a-z0-9_]*=\S*(?: [a-z_][a-z0-9_]*=\S*)*\Z")


def _placeholders(fmt: str) -> list[str]:
    """The conversion letters in ``fmt`` that take an argument (``%%`` takes none)."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(fmt) if m.group(1) != "%"]


def _value(fmt: str, args: tuple[object, ...]) -> object:
    """One field's value: a lone number stays a number, a lone ``%r`` string stays unquoted."""
    if len(args) == 1 and _PLACEHOLDER.fullmatch(fmt):
        (arg,) = args
        conversion = fmt[-1]
        if isinstance(arg, (bool, int, float)) and conversion in "sdifgeGE":
            return arg
        if isinstance(arg, str) and conversion in "rs":
            return arg
    return fmt % args


def event_fields(record: logging.LogRecord) -> tuple[dict[str, object], str]:
    """``(fields, text)`` of ``record``: each leading ``key=value`` and the free text after.

    >>> fmt = "event=bound port=%d host=%r: ready"
    >>> event_fields(logging.LogRecord("x", logging.INFO, "", 0, fmt, (80, "h"), None))
    ({'event': 'bound', 'port': 80, 'host': 'h'}, 'ready')

    A record whose format does not split cleanly gives ``({}, the whole message)``.
    """
    fmt, args = record.msg, record.args
    if not isinstance(fmt, str) or isinstance(args, Mapping):
        return {}, record.getMessage()
    rest: tuple[object, ...] = tuple(args or ())
    fields: dict[str, object] = {}
    tokens = fmt.split(" ")
    try:
        for i, token in enumerate(tokens):
            match = _FIELD.match(token)
            n = len(_placeholders(token))
            taken, rest = rest[:n], rest[n:]
            if match is None:
                formatted = token % taken
                if n == 1 and _PAIRS.fullmatch(formatted):  # e.g. "%s" given "task=1 annotation=2"
                    for pair in formatted.split(" "):
                        key, value = pair.split("=", 1)
                        fields[key] = value
                    continue
                return fields, " ".join(tokens[i:]) % (*taken, *rest)
            key, value_fmt = match.groups()
            last = i + 1 < len(tokens) and value_fmt.endswith(":")
            fields[key] = _value(value_fmt[:-1] if last else value_fmt, taken)
            if last:
                return fields, " ".join(tokens[i + 1 :]) % rest
        if rest:
            raise TypeError("not all arguments converted")
    except (TypeError, ValueError, KeyError):
        return {}, record.getMessage()
    return fields, ""


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg`` with ``extra=`` fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}"]
        parts.append(f"logger={record.name}")
        parts.append(record.getMessage())
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                text = str(value)
                parts.append(f"{key}={json.dumps(text) if ' ' in text or not text else text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _jsonable(value: object) -> object:
    return value if isinstance(value, (int, float, bool)) else str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, the event's fields, msg, ``extra=`` fields.

    ``msg`` holds the free text only (absent when there is none); a field whose name
    is one of the envelope's keys gets a trailing underscore.
    """

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields, text = event_fields(record)
        for key, value in fields.items():
            payload[key + "_" if key in _RESERVED else key] = _jsonable(value)
        if text:
            payload["msg"] = text
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                payload[key] = _jsonable(value)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def kv_format(names: list[str] | tuple[str, ...]) -> str:
    """``"a=%s b=%s"`` for ``names``: a format string whose fields JSON logs keep apart.

    >>> kv_format(["port", "host"])
    'port=%s host=%s'
    """
    return " ".join(f"{name}=%s" for name in names)


def configure(level: str = "info", fmt: str = "kv") -> None:
    """Send labelwatch's logs to stderr in ``fmt`` (``kv`` or ``json``) at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
