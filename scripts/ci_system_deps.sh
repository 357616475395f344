#!/usr/bin/env bash
# Install the Debian packages the observability and container tests need. Idempotent: packages
# already present are not fetched again, and apt-get update runs only when something is missing.
#
#   - prometheus: promtool (metrics lint, alert rule tests) and the live scrape test
#   - the linter for scripts/: shellcheck
#   - the container image test (scripts/container_build_and_run.sh): podman buildah runc
#     debootstrap, and podman's helpers uidmap slirp4netns fuse-overlayfs catatonit iptables
#     containernetworking-plugins (user ids, storage, init, published ports)
#   - the other-language client test (tests/test_other_language.py): nodejs and npm, checked as
#     commands (node, npm) because a NodeSource nodejs ships npm without Debian's npm package
#   - the README run (tests/test_readme.py): iproute2 (`ip`, loopback in a private network
#     namespace; util-linux's `unshare` is always there), curl and openssl, which the README uses
#
# Usage: scripts/ci_system_deps.sh        (as root, or with sudo available)
set -euo pipefail

PACKAGES=(prometheus shellcheck podman buildah runc debootstrap uidmap slirp4netns fuse-overlayfs catatonit iptables containernetworking-plugins iproute2 curl openssl)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ! command -v node >/dev/null 2>&1; then
    missing+=(nodejs)
fi
if ! command -v npm >/dev/null 2>&1; then
    missing+=(npm)
fi

if [ "${#missing[@]}" -eq 0 ]; then
    echo "ci_system_deps: all present (${PACKAGES[*]} node npm)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "ci_system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The Debian prometheus package starts a system-wide server on :9090; the tests start their own
# on a free loopback port and do not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus || true
fi
