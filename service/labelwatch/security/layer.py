"""Assemble the security parts from :class:`~labelwatch.config.Settings`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry

from labelwatch.config import Settings
from labelwatch.errors import StartupError
from labelwatch.metrics import SecurityMetrics
from labelwatch.security.admission import Admission, StreamLimitInterceptor
from labelwatch.security.auth import AuthInterceptor
from labelwatch.security.decoding import DecodeGuardInterceptor
from labelwatch.security.tls import server_credentials, tls_files, warn_if_exposed
from labelwatch.security.tokens import TokenFileError, TokenStore, load_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecurityLayer:
    """What the server installs. ``interceptors`` go after the metrics interceptor."""

    metrics: SecurityMetrics
    admission: Admission
    interceptors: tuple[grpc.ServerInterceptor, ...]
    credentials: grpc.ServerCredentials | None  # None: plaintext
    tokens: TokenStore | None  # None: no authentication
    max_concurrent_rpcs: int  # for grpc.server(maximum_concurrent_rpcs=...)

    def bind(self, server: grpc.Server, address: str) -> int:
        """Add the port (TLS when configured) and return its number (0 if it failed)."""
        if self.credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self.credentials)


def _check_bounds(settings: Settings) -> None:
    for name in ("max_inflight", "max_streams", "max_labels_per_example", "max_text_bytes"):
        if getattr(settings, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise StartupError(f"{flag} must be at least 1, got {getattr(settings, name)}")
    if settings.max_queued_calls < 0:
        raise StartupError(f"--max-queued-calls must be >= 0, got {settings.max_queued_calls}")
    if settings.max_inflight < settings.max_batch:
        raise StartupError(
            f"--max-inflight ({settings.max_inflight}) is below --max-batch "
            f"({settings.max_batch}): a full request could never be admitted; raise "
            "--max-inflight or lower --max-batch"
        )
    if settings.max_streams >= settings.threads:
        log.warning(
            "event=streams_may_starve_calls max_streams=%d threads=%d: open streams can hold "
            "every worker thread and stall unary calls; keep --max-streams below --threads",
            settings.max_streams,
            settings.threads,
        )


def build_security(settings: Settings, registry: CollectorRegistry) -> SecurityLayer:
    """Load tokens and certificates and build the parts; :class:`StartupError` if unusable."""
    _check_bounds(settings)
    metrics = SecurityMetrics(registry)
    files = tls_files(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    credentials = server_credentials(files) if files is not None else None
    tokens = None
    if settings.auth_tokens is not None:
        try:
            tokens = load_tokens(settings.auth_tokens)
        except TokenFileError as exc:
            raise StartupError(f"--auth-tokens: {exc}") from exc
    interceptors: list[grpc.ServerInterceptor] = []
    if tokens is not None:
        interceptors.append(AuthInterceptor(tokens, metrics))
    interceptors.append(StreamLimitInterceptor(settings.max_streams, metrics))
    interceptors.append(DecodeGuardInterceptor())
    warn_if_exposed(settings.host, tls=credentials is not None, auth=tokens is not None)
    log.info(
        "event=security tls=%s mtls=%s auth_tokens=%d max_inflight=%d max_streams=%d "
        "max_queued_calls=%d",
        files is not None,
        files is not None and files.mutual,
        len(tokens) if tokens is not None else 0,
        settings.max_inflight,
        settings.max_streams,
        settings.max_queued_calls,
    )
    return SecurityLayer(
        metrics=metrics,
        admission=Admission(settings.max_inflight, metrics),
        interceptors=tuple(interceptors),
        credentials=credentials,
        tokens=tokens,
        max_concurrent_rpcs=settings.threads + settings.max_queued_calls,
    )
