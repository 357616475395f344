"""Client side of the peer: V2 inference protocol stubs, requests, and cleanlab scoring.

The stubs are compiled at run time from ``bench/peer/v2/inference.proto`` (a subset of
the KServe V2 protocol MLServer speaks) into ``bench/results/v2_stubs`` (git-ignored),
with labelwatch's own grpcio-tools; MLServer's package is never imported here.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray

from servebench.workloads import REPO, Rows

PROTO = REPO / "bench" / "peer" / "v2" / "inference.proto"
STUBS_DIR = REPO / "bench" / "results" / "v2_stubs"


def compile_stubs(out_dir: Path = STUBS_DIR) -> Path:
    """Compile the V2 proto into ``out_dir`` (if stale) and put it on ``sys.path``."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "inference_pb2.py"
    if not target.is_file() or target.stat().st_mtime < PROTO.stat().st_mtime:
        code = protoc.main(
            [
                "protoc",
                f"-I{PROTO.parent}",
                f"--python_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                str(PROTO),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed on {PROTO} (exit {code})")
    if str(out_dir) not in sys.path:
        sys.path.insert(0, str(out_dir))
    return out_dir


def stubs() -> tuple[ModuleType, ModuleType]:
    """The ``inference_pb2`` and ``inference_pb2_grpc`` modules (compiled on first use)."""
    compile_stubs()
    return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")


def wait_ready(target: str, model: str, timeout: float) -> bool:
    """True once the server at ``target`` says ``model`` is ready (False after ``timeout``)."""
    pb, pb_grpc = stubs()
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            reply = stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=timeout)
            return bool(reply.ready)
    except (grpc.RpcError, grpc.FutureTimeoutError):
        return False


def infer_request(rows: Rows, idx: NDArray[np.int64], model: str, *, raw: bool) -> Any:
    """A ``ModelInferRequest`` for rows ``idx``: BYTES ``(n, 1)`` text or FP32 ``(n, D)``.

    ``raw``: tensor bytes in ``raw_input_contents`` (one buffer) instead of typed contents.
    """
    pb, _ = stubs()
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    n = len(idx)
    if rows.texts is not None:
        tensor.name, tensor.datatype = "text", "BYTES"
        tensor.shape.extend([n, 1])
        encoded = [rows.texts[i].encode("utf-8") for i in idx]
        if raw:
            request.raw_input_contents.append(
                b"".join(len(e).to_bytes(4, "little") + e for e in encoded)
            )
        else:
            tensor.contents.bytes_contents.extend(encoded)
    else:
        assert rows.features is not None
        block = np.ascontiguousarray(rows.features[idx], dtype=np.float32)
        tensor.name, tensor.datatype = "features", "FP32"
        tensor.shape.extend(block.shape)
        if raw:
            request.raw_input_contents.append(block.tobytes())
        else:
            tensor.contents.fp32_contents.extend(block.ravel().tolist())
    return request


def response_probs(response: Any) -> NDArray[np.float64]:
    """The ``(n, K)`` probabilities of a ``ModelInferResponse`` (raw or typed contents)."""
    out = response.outputs[0]
    shape = tuple(int(s) for s in out.shape)
    if response.raw_output_contents:
        flat = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    else:
        flat = np.asarray(out.contents.fp32_contents, dtype=np.float32)
    return np.asarray(flat.reshape(shape), dtype=np.float64)


class CleanlabScorer:
    """What a peer user runs after each model call: cleanlab's multi-label scores and filter.

    ``score(labels, probs)`` runs ``rank.get_label_quality_scores`` on the batch and
    ``filter.find_label_issues(n_jobs=1)`` on it (its default ``n_jobs`` starts a process
    pool per call: seconds per batch). cleanlab refuses some batches with a
    ``ValueError``: its filter any batch of one example ("Labels must contain at least 2
    classes"), and both functions a batch whose examples carry no tags at all (it infers
    K from the tags). The work done up to the refusal is paid; the refusal is counted in
    :attr:`filter_skipped` and the client goes on, as a user would have to.
    """

    def __init__(self) -> None:
        warnings.filterwarnings("ignore")  # cleanlab warns on every tiny batch
        from cleanlab.multilabel_classification.filter import (  # type: ignore[import-untyped]
            find_label_issues,
        )
        from cleanlab.multilabel_classification.rank import (  # type: ignore[import-untyped]
            get_label_quality_scores,
        )

        self._scores = get_label_quality_scores
        self._filter = find_label_issues
        self.filter_skipped = 0
        self.filter_ran = 0

    def score(self, labels: list[list[int]], probs: NDArray[np.float64]) -> int:
        """Score and filter one batch; return the number of examples flagged (-1: refused)."""
        try:
            self._scores(labels, probs)
            issues = self._filter(labels, probs, n_jobs=1)
        except ValueError:
            self.filter_skipped += 1
            return -1
        self.filter_ran += 1
        return int(np.count_nonzero(issues))
