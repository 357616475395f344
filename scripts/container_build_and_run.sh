#!/usr/bin/env bash
# Build the labelwatch image with podman and run it, on a machine without Docker and without
# access to public image registries:
#
#   1. a Debian bookworm base image from debootstrap, imported into podman (cached);
#   2. the server's dependencies as wheels built on this host (the package index seen from inside
#      a build may be behind an intercepting proxy), mounted into the build and installed with
#      pip --no-index;
#   3. `podman build` of the repository's Dockerfile with BASE_IMAGE set to that base;
#   4. `podman run` with the gRPC and metrics ports published on 127.0.0.1, waiting until the
#      server's gRPC health service reports SERVING.
#
# Podman runs with the runc runtime and explicit ulimits from a CONTAINERS_CONF file written under
# $LABELWATCH_CONTAINER_WORK (see scripts/container/env.sh); nothing in /etc is changed.
#
# Usage: scripts/container_build_and_run.sh [options] [-- labelwatch serve arguments]
#   --name NAME           container name (default labelwatch-dev; an old one is removed)
#   --grpc-port PORT      host port on 127.0.0.1 for gRPC (default 50051; 0 = any free port)
#   --metrics-port PORT   host port on 127.0.0.1 for /metrics (default 9464; 0 = any free port)
#   --mount DIR           mount DIR read-only at /models (for --model/--thresholds files)
#   --no-build            run the existing image
#   --build-only          build the image, do not run it
# Without serve arguments the image's default command runs (`serve --host 0.0.0.0`).
# On success prints one line: `name=NAME grpc=127.0.0.1:PORT metrics=127.0.0.1:PORT`.
# Stop with: scripts/container/podman.sh stop --time 15 NAME   (SIGTERM, then graceful drain)
# and remove with: scripts/container/podman.sh rm --volumes NAME
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/container/env.sh
. "$repo/scripts/container/env.sh"

name="labelwatch-dev"
grpc_port=50051
metrics_port=9464
mount_dir=""
build=1
run=1
serve_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --name) name="$2"; shift 2 ;;
        --grpc-port) grpc_port="$2"; shift 2 ;;
        --metrics-port) metrics_port="$2"; shift 2 ;;
        --mount) mount_dir="$(cd "$2" && pwd)"; shift 2 ;;
        --no-build) build=0; shift ;;
        --build-only) run=0; shift ;;
        --) shift; serve_args=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

if [ "$build" -eq 1 ]; then
    "$repo/scripts/container/make_base_image.sh"

    host_py="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    image_py="$(podman run --rm --network none "$LABELWATCH_BASE_IMAGE" \
        python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [ "$host_py" != "$image_py" ]; then
        echo "host Python $host_py ($python) differs from the base image's $image_py:" \
            "wheels built here would not install there; set PYTHON to a python$image_py" >&2
        exit 1
    fi

    wheelhouse="$LABELWATCH_CONTAINER_WORK/wheelhouse"
    mkdir -p "$wheelhouse"
    log "building wheels for the server and its build backend into $wheelhouse"
    # Build requirements (pyproject [build-system], read from there) are needed too: the image
    # builds labelwatch from source, in an isolated build environment that also installs with
    # --no-index. They are resolved on their own: the pinned generator may want an older protobuf
    # than the server runs with.
    build_requires=()
    while IFS= read -r requirement; do build_requires+=("$requirement"); done < <(
        "$python" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' \
            "$repo/pyproject.toml")
    if ! { "$python" -m pip wheel --disable-pip-version-check --wheel-dir "$wheelhouse" \
            "${repo}[server]" \
        && "$python" -m pip wheel --disable-pip-version-check --wheel-dir "$wheelhouse" \
            "${build_requires[@]}"; } >"$LABELWATCH_CONTAINER_WORK/pip-wheel.log" 2>&1; then
        tail -n 40 "$LABELWATCH_CONTAINER_WORK/pip-wheel.log" >&2
        exit 1
    fi

    log "building $LABELWATCH_IMAGE from $repo/Dockerfile (BASE_IMAGE=$LABELWATCH_BASE_IMAGE)"
    podman build --quiet --format docker --network none --layers=false \
        --build-arg "BASE_IMAGE=$LABELWATCH_BASE_IMAGE" \
        --build-arg "PIP_INSTALL_ARGS=--no-index --find-links=/wheelhouse" \
        --volume "$wheelhouse:/wheelhouse:ro" \
        --tag "$LABELWATCH_IMAGE" \
        --file "$repo/Dockerfile" "$repo" >/dev/null
    # the previous build's image, now untagged, is not needed any more
    podman image prune --force --filter "label=org.opencontainers.image.title=labelwatch" >/dev/null
    log "image $LABELWATCH_IMAGE built"
fi

[ "$run" -eq 1 ] || exit 0

podman rm --force --ignore --volumes "$name" >/dev/null
# Read-only root filesystem as in deploy/k8s (podman mounts tmpfs on /tmp, /var/tmp and /run);
# the outbox directory is an anonymous volume, removed with the container (rm --volumes).
run_args=(
    --detach --name "$name" --read-only --volume /var/lib/labelwatch
    --publish "127.0.0.1:${grpc_port/#0/}:50051"
    --publish "127.0.0.1:${metrics_port/#0/}:9464"
)
if [ -n "$mount_dir" ]; then
    run_args+=(--volume "$mount_dir:/models:ro")
fi
if [ ! -d /run/systemd/system ]; then
    # podman schedules HEALTHCHECK runs with systemd timers; without systemd it only logs errors.
    # `podman healthcheck run NAME` still runs the check on demand.
    run_args+=(--health-interval disable)
fi
if [ "${#serve_args[@]}" -gt 0 ]; then
    podman run "${run_args[@]}" "$LABELWATCH_IMAGE" serve --host 0.0.0.0 "${serve_args[@]}" >/dev/null
else
    podman run "${run_args[@]}" "$LABELWATCH_IMAGE" >/dev/null
fi

deadline=$((SECONDS + ${LABELWATCH_START_TIMEOUT:-60}))
until podman exec "$name" python -m labelwatch.healthcheck >/dev/null 2>&1; do
    state="$(podman inspect --format '{{.State.Status}}' "$name")"
    if [ "$state" != "running" ] || [ "$SECONDS" -ge "$deadline" ]; then
        echo "container $name did not become healthy (state $state); its log:" >&2
        podman logs "$name" >&2 || true
        exit 1
    fi
    sleep 0.5
done

host_port() { podman port "$name" "$1/tcp" | head -n 1 | sed 's/.*://'; }
log "container $name serving"
echo "name=$name grpc=127.0.0.1:$(host_port 50051) metrics=127.0.0.1:$(host_port 9464)"
