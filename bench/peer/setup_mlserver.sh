#!/usr/bin/env bash
# Create the MLServer peer's own virtualenv (bench/.venv-mlserver) for bench/serve.py.
#
# MLServer pins its own versions of numpy, grpcio, protobuf, fastapi, ...; it gets a venv of
# its own so it can never change what labelwatch's venv runs. The runtime that serves the
# ONNX model is bench/peer/onnx_runtime.py (imported from this folder by MLServer).
#
#   bash bench/peer/setup_mlserver.sh            # uses python3.11 (or $PYTHON)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$(dirname "$HERE")/.venv-mlserver"
PYTHON="${PYTHON:-python3.11}"
MLSERVER_VERSION="${MLSERVER_VERSION:-1.7.1}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# onnxruntime: the version labelwatch's venv runs, so both sides run the same kernels.
# uvloop < 0.22: from 0.22 on, asyncio.get_event_loop() raises outside a running loop, and
# MLServer 1.7.1's inference worker processes call it at start (they crash at once).
ORT_VERSION="${ORT_VERSION:-$("$(dirname "$HERE")/../.venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || echo 1.32.0)}"
"$VENV/bin/pip" install -q "mlserver==${MLSERVER_VERSION}" "onnxruntime==${ORT_VERSION}" "uvloop<0.22"
"$VENV/bin/python" - <<'PY'
import mlserver, onnxruntime
print(f"mlserver {mlserver.__version__} onnxruntime {onnxruntime.__version__} ready")
PY
echo "peer venv: $VENV"
