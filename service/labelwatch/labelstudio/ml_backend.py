"""Label Studio's ML backend protocol: ``/health``, ``/setup``, ``/predict``.

``POST /predict`` gets ``{"tasks": [{"id", "data": {...}}, ...], "label_config": "<View>...",
"project": "ID.TIMESTAMP", "params": {...}}`` and answers ``{"results": [{"result":
[{"from_name", "to_name", "type": "choices", "value": {"choices": [...]}}], "score",
"model_version"}, ...], "model_version"}``: one prediction per task, in order.

The tags are the calibrated decision, the same one behind the gRPC API's
``suggested_labels``: the task is scored as if it had no tags, and every class the
served rule (``--filter-by``) then flags as missing is suggested (among those the
labeling config offers). ``score`` is the label quality of that suggested tag set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import unescape
from typing import Any

import numpy as np
from numpy.typing import NDArray

from labelwatch.domain import InputKind
from labelwatch.labelstudio.webhook import Mappings, PayloadError
from labelwatch.model import OnnxModel
from labelwatch.pipeline import Pipeline
from labelwatch.scoring import CalibrationFit, FilterBy, decide

_CHOICES = re.compile(r"<Choices\b([^>]*)>(.*?)</Choices>", re.DOTALL)
_ATTR = re.compile(r"([\w-]+)\s*=\s*(\"[^\"]*\"|'[^']*')")
_CHOICE_VALUE = re.compile(r"<Choice\b[^>]*?\bvalue\s*=\s*(\"[^\"]*\"|'[^']*')")


def choices_control(label_config: str, name: str) -> tuple[str, str, list[str]] | None:
    """``(name, toName, values)`` of the Choices named ``name`` (else the first), or None."""
    found: list[tuple[str, str, list[str]]] = []
    for match in _CHOICES.finditer(label_config):
        attrs = {k: unescape(v[1:-1]) for k, v in _ATTR.findall(match.group(1))}
        values = [unescape(v[1:-1]) for v in _CHOICE_VALUE.findall(match.group(2))]
        found.append((attrs.get("name", ""), attrs.get("toName", ""), values))
    named = [c for c in found if c[0] == name]
    chosen = named or found
    return chosen[0] if chosen else None


class MlBackend:
    """Pre-annotation with ``model`` over ``class_names``; ``model_version`` stamps predictions.

    ``fit`` and ``filter_by``: the served calibration and flag rule (the decision).
    """

    def __init__(
        self,
        model: OnnxModel | None,
        class_names: Sequence[str],
        model_version: str,
        mappings: Mappings,
        *,
        fit: CalibrationFit,
        filter_by: FilterBy,
    ) -> None:
        self._model = model
        self._class_names = tuple(class_names)
        self.model_version = model_version
        self._mappings = mappings
        self._fit = fit
        self._filter_by = filter_by

    def serve(self, pipeline: Pipeline) -> None:
        """Pre-annotate with ``pipeline``'s model, calibration and version from now on."""
        self._model = pipeline.model
        self.model_version = pipeline.model_version
        self._fit = pipeline.artifact.fit
        self._filter_by = pipeline.filter_by

    def suggest(
        self, probs: NDArray[np.float64], allowed: NDArray[np.bool_]
    ) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
        """Suggested tags ``(n, K)`` bool and their label quality ``(n,)`` for ``probs`` ``(n, K)``.

        ``allowed`` ``(K,)`` bool: the classes the labeling config offers.
        """
        untagged = np.zeros(probs.shape, dtype=np.bool_)
        # pre-annotation predicts tags; the budget rule ranks errors of given tags, so
        # pre-annotations then come from the confident thresholds
        rule = (
            FilterBy.CONFIDENT_LEARNING if self._filter_by is FilterBy.BUDGET else self._filter_by
        )
        suggested = decide(self._fit, probs, untagged, rule).suggested & allowed
        quality = decide(self._fit, probs, suggested, rule).label_quality
        return suggested, quality

    def health(self) -> dict[str, Any]:
        """The ``/health`` answer."""
        status = (
            "UP" if self._model is not None and self._model.input_kind is InputKind.TEXT else "DOWN"
        )
        return {"status": status, "model_class": "labelwatch", "model_version": self.model_version}

    def setup(self, body: Any) -> dict[str, Any]:
        """The ``/setup`` answer: the model version."""
        return {"model_version": self.model_version}

    def predict(self, body: Any) -> dict[str, Any]:
        """The ``/predict`` answer for ``body`` (see the module docstring).

        Raises :class:`PayloadError` for a body without tasks or a task without text.
        """
        if self._model is None or self._model.input_kind is not InputKind.TEXT:
            raise PayloadError("this server's model does not take text; it cannot pre-annotate")
        if not isinstance(body, dict) or not isinstance(body.get("tasks"), list):
            raise PayloadError("the body needs a 'tasks' list")
        project = str(body.get("project") or "").split(".")[0]  # "ID.TIMESTAMP"
        mapping = self._mappings.for_project(int(project) if project.isdigit() else None)
        control = choices_control(str(body.get("label_config") or ""), mapping.choices_name)
        name, to_name, offered = control or (mapping.choices_name, "text", [])
        offered_set = set(offered) if offered else set(self._class_names)
        allowed = np.array([c in offered_set for c in self._class_names], dtype=np.bool_)
        texts: list[str] = []
        for task in body["tasks"]:
            data = task.get("data") if isinstance(task, dict) else None
            text = data.get(mapping.text_key) if isinstance(data, dict) else None
            if not isinstance(text, str):
                raise PayloadError(f"a task has no text under data.{mapping.text_key}")
            texts.append(text)
        k = len(self._class_names)
        probs = self._model.predict(texts) if texts else np.zeros((0, k))
        suggested, quality = self.suggest(np.asarray(probs, dtype=np.float64), allowed)
        results = []
        for row, q in zip(suggested, quality, strict=True):
            tags = [self._class_names[j] for j in np.flatnonzero(row)]
            results.append(
                {
                    "result": [
                        {
                            "from_name": name,
                            "to_name": to_name,
                            "type": "choices",
                            "value": {"choices": tags},
                        }
                    ]
                    if tags
                    else [],
                    "score": round(float(q), 6),
                    "model_version": self.model_version,
                }
            )
        return {"results": results, "model_version": self.model_version}
