"""One example's fields, as any transport carries them -> a validated :class:`LabeledExample`.

Every transport first turns what it received (a protobuf ``Example``, a JSON
object off NATS, ...) into :class:`ExampleFields`; :class:`ExampleDecoder`
then checks those against the loaded model and the per-example limits, and
raises :class:`~labelwatch.errors.PublicError` with a message that names the
example id and the field. One set of rules and messages for every transport.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from labelwatch.domain import InputKind, LabeledExample, ModelSpec
from labelwatch.errors import InvalidExample, WrongInputKind
from labelwatch.security.limits import ExampleLimits

InputField = Literal["text", "features", "probabilities"]
"""The name of the one input an example gives."""

DEFAULT_LIMITS = ExampleLimits()
_INPUT_FIELD: dict[InputKind, InputField] = {
    InputKind.TEXT: "text",
    InputKind.FEATURES: "features",
}


@dataclass(frozen=True)
class ExampleFields:
    """One example as received, not yet checked against the model.

    ``input`` names the input given (None: none). ``values`` holds the numbers
    of ``features`` (length D) or ``probabilities`` (length K, each in [0, 1]);
    ``text`` holds the text. ``labels`` are class names, ``label_indices`` class
    indices in ``[0, K)``; either, both (naming the same set) or neither.
    """

    id: str
    input: InputField | None
    text: str = ""
    values: Sequence[float] = ()
    labels: Sequence[str] = ()
    label_indices: Sequence[int] = ()
    annotator_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


def _where(fields: ExampleFields, position: int) -> str:
    return f"example {fields.id!r}" if fields.id else f"example #{position} (no id)"


class ExampleDecoder:
    """Validates :class:`ExampleFields` against one model's ``spec`` and ``limits``."""

    def __init__(self, spec: ModelSpec, limits: ExampleLimits = DEFAULT_LIMITS) -> None:
        self.spec = spec
        self.limits = limits
        self.class_index: Mapping[str, int] = {name: i for i, name in enumerate(spec.class_names)}

    def decode(self, fields: ExampleFields, position: int) -> LabeledExample:
        """The validated example; a :class:`PublicError` naming id and field if it is bad.

        ``position`` names an example without id (its index in a request, or a
        stream sequence number).
        """
        spec = self.spec
        where = _where(fields, position)
        if not fields.id:
            raise InvalidExample(f"{where}: field 'id': must be a non-empty string")
        which = fields.input
        self._check_limits(fields, where, which)
        labels = self._labels(fields, where)
        common = {
            "id": fields.id,
            "labels": labels,
            "annotator_id": fields.annotator_id,
            "metadata": dict(fields.metadata),
        }
        if which is None:
            raise InvalidExample(
                f"{where}: field 'input': no input given; set one of text, features, probabilities"
            )
        if which == "probabilities":
            probs = np.asarray(fields.values, dtype=np.float64)
            if probs.shape != (spec.n_classes,):
                raise InvalidExample(
                    f"{where}: field 'probabilities': expected {spec.n_classes} values "
                    f"(one per class), got {probs.size}"
                )
            if not np.isfinite(probs).all():
                bad = int(np.flatnonzero(~np.isfinite(probs))[0])
                raise InvalidExample(f"{where}: field 'probabilities[{bad}]': must be finite")
            outside = np.flatnonzero((probs < 0.0) | (probs > 1.0))
            if outside.size:
                bad = int(outside[0])
                value = float(probs[bad])
                raise InvalidExample(
                    f"{where}: field 'probabilities[{bad}]': {value!r} is outside [0, 1]"
                )
            return LabeledExample(probabilities=probs, **common)  # type: ignore[arg-type]
        expected = _INPUT_FIELD.get(spec.input_kind)
        if which != expected:
            accepted = "probabilities" if expected is None else f"{expected} or probabilities"
            raise WrongInputKind(
                f"{where}: field '{which}': the loaded model takes {accepted} input, not {which}"
            )
        if which == "text":
            return LabeledExample(text=fields.text, **common)  # type: ignore[arg-type]
        feats = _float32(fields.values)
        if feats.shape != (spec.feature_dim,):
            raise InvalidExample(
                f"{where}: field 'features': expected {spec.feature_dim} values, got {feats.size}"
            )
        if not np.isfinite(feats).all():
            bad = int(np.flatnonzero(~np.isfinite(feats))[0])
            raise InvalidExample(f"{where}: field 'features[{bad}]': must be finite")
        return LabeledExample(features=feats, **common)  # type: ignore[arg-type]

    def _labels(self, fields: ExampleFields, where: str) -> NDArray[np.bool_]:
        k = self.spec.n_classes
        vec = np.zeros(k, dtype=np.bool_)
        for name in fields.labels:
            idx = self.class_index.get(name)
            if idx is None:
                raise InvalidExample(f"{where}: field 'labels': unknown class name {name!r}")
            vec[idx] = True
        if fields.label_indices:
            by_index = np.zeros(k, dtype=np.bool_)
            for idx in fields.label_indices:
                if not 0 <= idx < k:
                    raise InvalidExample(
                        f"{where}: field 'label_indices': index {idx} is out of range [0, {k})"
                    )
                by_index[idx] = True
            if fields.labels and not np.array_equal(vec, by_index):
                raise InvalidExample(
                    f"{where}: fields 'labels' and 'label_indices' name different tag sets"
                )
            vec = by_index
        return vec

    def _check_limits(self, fields: ExampleFields, where: str, which: str | None) -> None:
        limits = self.limits
        problem = limits.label_problem(len(fields.labels), len(fields.label_indices))
        if problem is not None:
            if fields.labels and fields.label_indices:
                names = "fields 'labels' and 'label_indices'"
            else:
                names = "field 'labels'" if fields.labels else "field 'label_indices'"
            raise InvalidExample(f"{where}: {names}: {problem}")
        if which == "text":
            problem = limits.text_problem(fields.text)
            if problem is not None:
                raise InvalidExample(f"{where}: field 'text': {problem}")


def _float32(values: Sequence[float]) -> NDArray[np.float32]:
    """``values`` as float32, ``(D,)``; a value beyond float32's range becomes inf (not finite)."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float32)
