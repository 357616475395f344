"""The peer for ``bench/serve.py``: an MLServer custom runtime serving one ONNX model.

This is the small runtime a user would write to put an ONNX multi-label classifier
behind MLServer (https://mlserver.readthedocs.io/en/latest/user-guide/custom.html):
the model's single input comes in as a V2 tensor (``BYTES`` ``(n, 1)`` raw text, or
``FP32`` ``(n, D)``), goes through one onnxruntime session and comes back as ``FP32``
``(n, K)`` probabilities named ``probabilities``. Label-quality scoring is not here:
the benchmark's clients do it with cleanlab, as a user of a plain model server would.

It runs inside bench/.venv-mlserver (made by ``bench/peer/setup_mlserver.sh``), never
in labelwatch's venv. Settings (``model-settings.json``, written by the benchmark):

* ``parameters.uri``: the ``.onnx`` file;
* ``parameters.extra.intra_op_threads``: onnxruntime intra-op threads (0 = one per core).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):  # type: ignore[misc]
    """One onnxruntime session; ``predict`` runs it on the request's single input."""

    async def load(self) -> bool:
        params = self.settings.parameters
        extra: dict[str, Any] = dict(params.extra or {}) if params is not None else {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 0))
        uri = params.uri if params is not None else None
        if not uri:
            raise ValueError("model-settings.json: parameters.uri must name the .onnx file")
        self._session = ort.InferenceSession(
            uri, sess_options=options, providers=["CPUExecutionProvider"]
        )
        (inp,) = self._session.get_inputs()
        self._input_name: str = inp.name
        self._text = inp.type == "tensor(string)"
        self._text_rank = len(inp.shape)
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = "probabilities" if "probabilities" in outputs else outputs[0]
        return True

    def _run(self, payload: InferenceRequest) -> InferenceResponse:
        request_input = payload.inputs[0]
        feed: np.ndarray[Any, Any]
        if self._text:
            texts = StringCodec.decode_input(request_input)
            feed = np.asarray(texts, dtype=object)
            if self._text_rank == 2:
                feed = feed.reshape(-1, 1)
        else:
            feed = np.ascontiguousarray(NumpyCodec.decode_input(request_input), dtype=np.float32)
        (probs,) = self._session.run([self._output], {self._input_name: feed})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("probabilities", np.asarray(probs, np.float32))],
        )

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        return self._run(payload)

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        async for payload in payloads:
            yield self._run(payload)
