"""Server settings: one object, filled from CLI flags, then ``LABELWATCH_*`` env, then defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelwatch.scoring import FilterBy

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("kv", "json")


@dataclass(frozen=True)
class Settings:
    """Everything ``labelwatch serve`` can be told. Units are in the field names' help."""

    model: Path | None = field(
        default=None,
        metadata={"help": "ONNX multi-label classifier (float (N, D) or string input)."},
    )
    thresholds: Path | None = field(
        default=None,
        metadata={
            "help": "calibration artifact (JSON) from `labelwatch calibrate`. Without --model, "
            "the server accepts only client-computed probabilities."
        },
    )
    model_output: str | None = field(
        default=None,
        metadata={"help": "name of the model output holding (N, K) scores (default: detected)."},
    )
    model_outputs_logits: bool = field(
        default=False,
        metadata={"help": "the model output is logits: apply a sigmoid."},
    )
    model_version: str | None = field(
        default=None,
        metadata={"help": "version stamped on results (default: <model name>-<sha256[:12]>)."},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind."})
    port: int = field(default=50051, metadata={"help": "gRPC port; 0 picks a free one."})
    metrics_port: int = field(
        default=9464,
        metadata={"help": "Prometheus /metrics HTTP port on --host; 0 turns it off."},
    )
    max_batch: int = field(
        default=1024,
        metadata={"help": "most examples in one request, and in one merged model call."},
    )
    batch_window_ms: float = field(
        default=2.0,
        metadata={
            "help": "when requests are already queued, milliseconds to wait for more before "
            "a model call (a lone request never waits)."
        },
    )
    max_message_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={"help": "largest gRPC message accepted or sent, in bytes."},
    )
    grace_seconds: float = field(
        default=10.0,
        metadata={"help": "on SIGTERM/SIGINT, seconds in-flight calls get to finish."},
    )
    filter_by: FilterBy = field(
        default=FilterBy.CONFIDENT_LEARNING,
        metadata={"help": "flag rule.", "choices": [f.value for f in FilterBy]},
    )
    threads: int = field(
        default=8, metadata={"help": "gRPC handler threads per process (concurrent calls)."}
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "server processes sharing the port (SO_REUSEPORT); worker i serves "
            "metrics on --metrics-port + i. Give each onnxruntime cores/workers "
            "--intra-op-threads."
        },
    )
    intra_op_threads: int = field(
        default=0, metadata={"help": "onnxruntime intra-op threads; 0 = one per core."}
    )
    inter_op_threads: int = field(
        default=0, metadata={"help": "onnxruntime inter-op threads; 0 = onnxruntime's default."}
    )
    ort_no_spinning: bool = field(
        default=False,
        metadata={
            "help": "stop onnxruntime's intra-op threads from busy-waiting between runs "
            "(saves CPU when workers share cores)."
        },
    )
    log_level: str = field(default="info", metadata={"help": "log level.", "choices": LOG_LEVELS})
    log_format: str = field(
        default="kv",
        metadata={"help": "kv (key=value) or json, one event a line.", "choices": LOG_FORMATS},
    )

    def describe(self) -> dict[str, str]:
        """The effective settings as strings, for the start-up log line."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, FilterBy) else str(value)
        return out


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per :class:`Settings` field, with help, unit and env name."""
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} [env {_env_name(f.name)}; default {_show(f.default)}]"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
            continue
        parser.add_argument(
            flag,
            type=_converter(f),
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
            values[f.name] = given
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
