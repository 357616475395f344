"""ONNX model runner: load a multi-label classifier, check it, run batches.

Supported models take one input, either a float tensor ``(N, D)`` or a string
tensor ``(N,)``/``(N, 1)`` of raw text, and produce per-class scores
``(N, K)``: probabilities in ``[0, 1]`` (the default; e.g. skl2onnx models
converted with ``zipmap=False``) or logits when ``outputs_logits`` is set, to
which a sigmoid is applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from labelwatch.domain import InputKind
from labelwatch.errors import ModelFailure, StartupError

log = logging.getLogger(__name__)

_FLOAT_TYPES = {"tensor(float)", "tensor(double)"}
_PREFERRED_OUTPUTS = ("probabilities", "probability", "probs", "output_probability")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class SessionSettings:
    """onnxruntime thread settings; 0 lets onnxruntime choose (all cores).

    ``allow_spinning``: intra-op threads busy-wait for work between runs (lower
    latency on idle cores, wasted CPU when cores are shared with other workers).
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    allow_spinning: bool = True


OUTPUT_SLACK = 1e-5
"""How far outside [0, 1] a probability may fall (float32 rounding) before the output is
refused as not probabilities (e.g. logits served without ``--model-outputs-logits``)."""


class OnnxModel:
    """A loaded multi-label ONNX classifier.

    Thread-safe: onnxruntime sessions are, and :meth:`predict` keeps no state, so the
    batcher runs several calls at once (each with ``settings.intra_op_threads``).
    """

    def __init__(
        self,
        path: Path,
        *,
        output_name: str | None = None,
        outputs_logits: bool = False,
        settings: SessionSettings | None = None,
    ) -> None:
        settings = settings or SessionSettings()
        if not path.is_file():
            raise StartupError(f"model file not found: {path}")
        self.path = path
        self.sha256 = file_sha256(path)
        self.session_settings = settings
        """The onnxruntime thread settings this model's session was made with."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0"
        )
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise StartupError(f"cannot load ONNX model {path}: {exc}") from exc
        self.outputs_logits = outputs_logits
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise StartupError(
                f"model {path} must have exactly one input, has {len(inputs)}: {names}"
            )
        inp = inputs[0]
        self.input_name: str = inp.name
        self.input_shape: tuple[int, ...] = tuple(
            d if isinstance(d, int) else -1 for d in inp.shape
        )
        if inp.type == "tensor(string)":
            self.input_kind = InputKind.TEXT
            self.feature_dim: int | None = None
        elif inp.type in _FLOAT_TYPES:
            if len(inp.shape) != 2 or not isinstance(inp.shape[1], int):
                raise StartupError(
                    f"model {path}: float input {inp.name!r} must have shape (N, D) "
                    f"with a fixed D, got {inp.shape}"
                )
            self.input_kind = InputKind.FEATURES
            self.feature_dim = int(inp.shape[1])
        else:
            raise StartupError(
                f"model {path}: input {inp.name!r} has type {inp.type}; "
                "supported are tensor(float) (N, D) and tensor(string) (N,) or (N, 1)"
            )
        self._input_dtype = np.float64 if inp.type == "tensor(double)" else np.float32
        self.output_name = self._pick_output(output_name)
        meta = self._session.get_modelmeta()
        self.name: str = meta.graph_name or path.stem
        self.metadata: dict[str, str] = dict(meta.custom_metadata_map)
        self.n_classes = self._probe_n_classes()

    def _pick_output(self, wanted: str | None) -> str:
        outputs = self._session.get_outputs()
        names = [o.name for o in outputs]
        if wanted is not None:
            if wanted not in names:
                raise StartupError(
                    f"model {self.path} has no output {wanted!r}; outputs are {', '.join(names)}"
                )
            return wanted
        for preferred in _PREFERRED_OUTPUTS:
            if preferred in names:
                return preferred
        for out in outputs:
            if out.type in _FLOAT_TYPES and len(out.shape) == 2:
                return str(out.name)
        raise StartupError(
            f"model {self.path}: no (N, K) float output found among {', '.join(names)}; "
            "pass --model-output NAME"
        )

    def _probe_n_classes(self) -> int:
        for out in self._session.get_outputs():
            if (
                out.name == self.output_name
                and len(out.shape) == 2
                and isinstance(out.shape[1], int)
            ):
                return int(out.shape[1])
        # dynamic K: run one dummy row to find it
        dummy: list[str] | NDArray[np.float32]
        if self.input_kind is InputKind.TEXT:
            dummy = [""]
        else:
            dummy = np.zeros((1, self.feature_dim or 0), dtype=np.float32)
        return int(self.predict(dummy).shape[1])

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Class names from the model's ``class_names`` metadata (a JSON list), if any."""
        raw = self.metadata.get("class_names")
        if raw is None:
            return None
        try:
            names = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StartupError(f"model {self.path}: metadata 'class_names' is not JSON") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise StartupError(
                f"model {self.path}: metadata 'class_names' must be a list of strings"
            )
        return tuple(names)

    def predict(self, batch: Sequence[str] | NDArray[np.float32]) -> NDArray[np.float64]:
        """Run the model on ``n`` inputs; return ``(n, K)`` float64 probabilities in [0, 1].

        ``batch`` is a sequence of ``n`` strings for text models or an
        ``(n, D)`` float32 array for feature models.
        """
        if self.input_kind is InputKind.TEXT:
            feed = np.asarray(list(batch), dtype=object)
            if len(self.input_shape) == 2:
                feed = feed.reshape(-1, 1)
        else:
            feed = np.ascontiguousarray(batch, dtype=self._input_dtype)
        try:
            (raw,) = self._session.run([self.output_name], {self.input_name: feed})
        except Exception as exc:
            raise ModelFailure(f"model run failed: {type(exc).__name__}") from exc
        out = np.asarray(raw, dtype=np.float64)
        if out.ndim != 2 or out.shape[0] != len(feed):
            raise ModelFailure(f"model output has shape {out.shape}, expected ({len(feed)}, K)")
        if self.outputs_logits:
            out = 1.0 / (1.0 + np.exp(-out))
        if not np.isfinite(out).all():
            raise ModelFailure("model produced non-finite probabilities")
        if out.size and (out.min() < -OUTPUT_SLACK or out.max() > 1.0 + OUTPUT_SLACK):
            raise ModelFailure(
                f"model output outside [0, 1] (min {out.min():.4g}, max {out.max():.4g}): "
                "if the model outputs logits, serve it with --model-outputs-logits"
            )
        # float32 rounding may step just outside [0, 1]
        np.clip(out, 0.0, 1.0, out=out)
        return out
