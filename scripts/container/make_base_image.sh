#!/usr/bin/env bash
# Make a Debian bookworm base image with python3 and python3-venv, without any image registry:
# debootstrap a minimal root filesystem and `podman import` it as $LABELWATCH_BASE_IMAGE.
# Skips the work when the image already exists (pass --force to rebuild). Takes ~2.5 minutes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/container/env.sh
. "$here/env.sh"

force=0
[ "${1:-}" = "--force" ] && force=1

if [ "$force" -eq 0 ] && podman image exists "$LABELWATCH_BASE_IMAGE"; then
    log "base image $LABELWATCH_BASE_IMAGE exists"
    exit 0
fi

rootfs="$LABELWATCH_CONTAINER_WORK/rootfs"
rm -rf "$rootfs"
log "debootstrap bookworm into $rootfs (from $LABELWATCH_DEBIAN_MIRROR)"
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" \
    "$LABELWATCH_DEBIAN_MIRROR" >"$LABELWATCH_CONTAINER_WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$LABELWATCH_CONTAINER_WORK/debootstrap.log" >&2
    exit 1
}
# apt caches and lists are not needed in the image
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
log "importing as $LABELWATCH_BASE_IMAGE"
tar -C "$rootfs" --numeric-owner -c . | podman import --quiet \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    - "$LABELWATCH_BASE_IMAGE" >/dev/null
rm -rf "$rootfs"
log "base image $LABELWATCH_BASE_IMAGE ready"
