#!/usr/bin/env bash
# podman with the settings of env.sh (runc runtime, explicit ulimits, no /etc edits).
# Example: scripts/container/podman.sh logs labelwatch-dev
set -euo pipefail
# shellcheck source=scripts/container/env.sh
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
exec podman "$@"
