#!/usr/bin/env bash
# Install what the flag-delivery tests run against, on this machine. Idempotent: each step is
# skipped when its result is already there.
#
#   - nats-server (Debian package): the NATS JetStream sink tests start their own
#     `nats-server -js` on a free loopback port.
#   - Label Studio (pip `label-studio`) in its own venv at $LABELWATCH_LS_VENV
#     (default /opt/labelwatch-ci/label-studio-venv): its dependency tree pins versions of
#     protobuf, grpcio and friends that must not leak into labelwatch's own venv. The Label
#     Studio sink tests start it on a free loopback port with a temporary SQLite database.
#
# Usage: scripts/ci_delivery_deps.sh        (as root, or with sudo available; ~3 min the first time)
set -euo pipefail

LS_VENV="${LABELWATCH_LS_VENV:-/opt/labelwatch-ci/label-studio-venv}"
LS_VERSION="${LABELWATCH_LS_VERSION:-1.23.2}"
PYTHON="${PYTHON:-python3}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if command -v nats-server >/dev/null 2>&1; then
    echo "ci_delivery_deps: nats-server present ($(nats-server --version))"
else
    echo "ci_delivery_deps: installing nats-server"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends nats-server
fi
# The Debian package may start a system-wide server on :4222; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nats-server 2>/dev/null; then
    $SUDO systemctl stop nats-server || true
fi

if [ -x "$LS_VENV/bin/label-studio" ] && "$LS_VENV/bin/python" -c "import label_studio" 2>/dev/null; then
    echo "ci_delivery_deps: Label Studio present in $LS_VENV"
else
    echo "ci_delivery_deps: installing label-studio==$LS_VERSION into $LS_VENV (~1 GB, ~3 min)"
    $SUDO mkdir -p "$(dirname "$LS_VENV")"
    $SUDO rm -rf "$LS_VENV"
    $SUDO "$PYTHON" -m venv "$LS_VENV"
    $SUDO "$LS_VENV/bin/python" -m pip install --quiet --upgrade pip
    $SUDO "$LS_VENV/bin/python" -m pip install --quiet "label-studio==$LS_VERSION"
    "$LS_VENV/bin/python" -c "import label_studio"
    echo "ci_delivery_deps: Label Studio installed in $LS_VENV"
fi
