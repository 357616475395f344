# shellcheck shell=bash
# Shared settings for the container scripts; sourced, not run.
#
# Everything lives under LABELWATCH_CONTAINER_WORK (default /var/tmp/labelwatch-container) so that
# nothing in /etc is edited: podman and buildah read the CONTAINERS_CONF file written here, which
# picks the runc runtime (crun rejects this machine's hybrid cgroup setup) and sets explicit
# ulimits (the defaults inherited from the host can be too low or unset inside a build).

LABELWATCH_CONTAINER_WORK="${LABELWATCH_CONTAINER_WORK:-/var/tmp/labelwatch-container}"
LABELWATCH_BASE_IMAGE="${LABELWATCH_BASE_IMAGE:-localhost/labelwatch-base:bookworm}"
LABELWATCH_IMAGE="${LABELWATCH_IMAGE:-localhost/labelwatch:dev}"
LABELWATCH_DEBIAN_MIRROR="${LABELWATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mkdir -p "$LABELWATCH_CONTAINER_WORK"

# A container may not raise a limit above the caller's hard limit (runc then fails with
# "error setting rlimit ... operation not permitted"): cap the wanted values at it.
_cap_limit() {
    local wanted="$1" hard="$2"
    if [ "$hard" = "unlimited" ] || [ "$hard" -ge "$wanted" ]; then
        echo "$wanted"
    else
        echo "$hard"
    fi
}
LABELWATCH_NOFILE="$(_cap_limit 65536 "$(ulimit -Hn)")"
LABELWATCH_NPROC="$(_cap_limit 8192 "$(ulimit -Hu)")"

CONTAINERS_CONF="$LABELWATCH_CONTAINER_WORK/containers.conf"
cat >"$CONTAINERS_CONF" <<CONF
# Written by scripts/container/env.sh; used through the CONTAINERS_CONF environment variable.
[containers]
default_ulimits = ["nofile=$LABELWATCH_NOFILE:$LABELWATCH_NOFILE", "nproc=$LABELWATCH_NPROC:$LABELWATCH_NPROC"]
# no journald here: keep container logs and events in files
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF
export LABELWATCH_CONTAINER_WORK LABELWATCH_BASE_IMAGE LABELWATCH_IMAGE

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
