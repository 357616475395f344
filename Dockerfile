# labelwatch server image.
#
#   docker build -t labelwatch .
#   docker run --rm -p 50051:50051 -p 9464:9464 labelwatch
#
# BASE_IMAGE: any Debian-like image with python3 (>= 3.10) and its venv module. Both stages use it,
# so the virtualenv built in the first runs unchanged in the second. Where public registries are out
# of reach, build one locally (scripts/container/make_base_image.sh) and pass --build-arg BASE_IMAGE.
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Extra pip options, e.g. "--no-index --find-links=/wheelhouse" to install only wheels prepared
# beforehand (scripts/container_build_and_run.sh mounts them there).
ARG PIP_INSTALL_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proto ./proto
COPY service ./service
COPY client ./client
# The gRPC stubs are generated from proto/ while the wheel builds; only runtime dependencies
# (the server extra) end up in /opt/labelwatch.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/labelwatch \
    && /opt/labelwatch/bin/pip install ${PIP_INSTALL_ARGS} "/src[server]" \
    && /opt/labelwatch/bin/pip uninstall --yes pip setuptools \
    && /opt/labelwatch/bin/labelwatch --version

FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="labelwatch" \
      org.opencontainers.image.description="gRPC service for online label-quality scoring of multi-label data" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/deployment.md"
# A fixed numeric non-root user, so Kubernetes' runAsNonRoot can verify it. /var/lib/labelwatch
# holds the flag outbox (mount a volume there); /models is where --model/--thresholds files go.
RUN useradd --no-log-init --uid 10001 --user-group --no-create-home --home-dir /var/lib/labelwatch \
        --shell /usr/sbin/nologin labelwatch \
    && mkdir -p /var/lib/labelwatch /models \
    && chown 10001:10001 /var/lib/labelwatch
COPY --from=build /opt/labelwatch /opt/labelwatch
# LABELWATCH_DATA_DIR: the outbox and server-state.json, which the health check reads to find the
# port and TLS mode the server really runs with. Change it with -e LABELWATCH_DATA_DIR=..., not
# --data-dir, so that the health check looks in the same place.
ENV PATH=/opt/labelwatch/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LABELWATCH_DATA_DIR=/var/lib/labelwatch/labelwatch-data
USER 10001:10001
WORKDIR /var/lib/labelwatch
# gRPC (labelwatch.v1.LabelQuality, grpc.health.v1, reflection) and Prometheus /metrics
EXPOSE 50051 9464
# Asks the gRPC health service on the port the server bound, plaintext or TLS as the server runs
# (--port, --tls-cert, ... from flags or env: it reads DATA_DIR/server-state.json). Kept only by
# Docker-format images (docker build; podman/buildah --format docker); Kubernetes ignores it and
# uses the probes in deploy/k8s instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "labelwatch.healthcheck"]
# The server itself is PID 1 and handles SIGTERM: it reports NOT_SERVING and drains in-flight
# calls for --grace-seconds before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["labelwatch"]
CMD ["serve", "--host", "0.0.0.0"]
