"""Bearer-token authentication and role checks, as a gRPC server interceptor.

Each call must carry ``authorization: Bearer <token>`` metadata whose token is
in the token file (:mod:`labelwatch.security.tokens`) with the role its
service needs (:data:`SERVICE_ROLES`; any service not listed needs ``admin``,
so a new service is closed until someone opens it). Health and reflection stay
open, so probes and stock tools work without a token.

No token, or one that is not ``Bearer <token>`` or matches no entry:
:class:`~labelwatch.errors.Unauthenticated` (UNAUTHENTICATED). A valid token
without the role: :class:`~labelwatch.errors.PermissionDenied`
(PERMISSION_DENIED). The
presented token never reaches a log line, a metric or an error message; logs
name the matching entry's ``name`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from labelwatch.errors import PermissionDenied, Unauthenticated
from labelwatch.grpc.status import abort, status_code
from labelwatch.metrics import SecurityMetrics
from labelwatch.security.tokens import Role, TokenEntry, TokenStore

log = logging.getLogger(__name__)

OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
"""Services callable without a token."""

SERVICE_ROLES: dict[str, Role] = {
    "labelwatch.v1.LabelQuality": Role.SCORE,
    "labelwatch.v1.FlagFeed": Role.WATCH,
}
"""The role each service needs; services not listed (and not open) need ``admin``."""

_HOW = "send metadata 'authorization: Bearer <token>' (make one with `labelwatch token create`)"

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


def required_role(method: str) -> Role | None:
    """The role ``/package.Service/Method`` needs, or None for an open service."""
    service = method.lstrip("/").partition("/")[0]
    if service in OPEN_SERVICES:
        return None
    return SERVICE_ROLES.get(service, Role.ADMIN)


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`authorize`: the entry if allowed, else the error to end the call."""

    entry: TokenEntry | None
    error: Unauthenticated | PermissionDenied | None = None
    reason: str = ""  # a label value of labelwatch_auth_failures_total

    @property
    def allowed(self) -> bool:
        return self.error is None

    @property
    def code(self) -> grpc.StatusCode:
        """The status the call ends with (OK when allowed)."""
        return grpc.StatusCode.OK if self.error is None else status_code(self.error)

    @property
    def message(self) -> str:
        """What the caller is told ("" when allowed)."""
        return "" if self.error is None else self.error.message


def _bearer(metadata: Sequence[tuple[str, str | bytes]]) -> tuple[str | None, str]:
    """The presented token, or None and the failure reason (``missing``/``malformed``)."""
    values = [v for k, v in metadata if k.lower() == "authorization"]
    if not values:
        return None, "missing"
    if len(values) > 1 or not isinstance(values[0], str):
        return None, "malformed"
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None, "malformed"
    return token, ""


def authorize(
    metadata: Sequence[tuple[str, str | bytes]], method: str, store: TokenStore
) -> Decision:
    """Decide whether a call to ``method`` with ``metadata`` may proceed."""
    role = required_role(method)
    if role is None:
        return Decision(entry=None)
    token, reason = _bearer(metadata)
    if token is None:
        if reason == "missing":
            message = f"missing credentials: {_HOW}"
        else:
            message = f"malformed credentials: expected exactly one 'Bearer <token>'; {_HOW}"
        return Decision(None, Unauthenticated(message), reason)
    entry = store.verify(token)
    if entry is None:
        return Decision(
            None,
            Unauthenticated("invalid bearer token: it matches no token this server accepts"),
            "invalid",
        )
    if not entry.allows(role):
        held = ", ".join(sorted(r.value for r in entry.roles))
        return Decision(
            entry,
            PermissionDenied(
                f"token {entry.name!r} (roles: {held}) lacks role {role.value!r}, "
                f"which {method} needs"
            ),
            "forbidden",
        )
    return Decision(entry)


def _refusing(handler: Handler, method: str, error: Exception) -> Handler:
    """A handler of the same kind as ``handler`` that ends the call with ``error``.

    The request is not deserialized: nothing of an unauthenticated caller's
    message is parsed.
    """

    def refuse(_request: object, context: grpc.ServicerContext) -> Any:
        abort(context, method, error)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid token carrying the method's role.

    Install it inside :class:`~labelwatch.grpc.interceptor.MetricsInterceptor`
    (later in the list) so refused calls are still counted by status code.
    """

    def __init__(self, store: TokenStore, metrics: SecurityMetrics) -> None:
        self._store = store
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return None
        method = handler_call_details.method
        decision = authorize(handler_call_details.invocation_metadata, method, self._store)
        if decision.allowed:
            return handler
        self._metrics.auth_failures.labels(decision.reason).inc()
        log.warning(
            "event=auth_refused method=%s reason=%s token_name=%s",
            method,
            decision.reason,
            decision.entry.name if decision.entry else "-",
        )
        assert decision.error is not None
        return _refusing(handler, method, decision.error)
