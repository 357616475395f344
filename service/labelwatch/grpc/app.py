"""The gRPC adapter: LabelQuality and FlagFeed over one engine, plus health and reflection.

Build it (nothing is bound yet), :meth:`GrpcApp.bind` the port, then
:meth:`GrpcApp.start`. grpcio cannot release a port bound by a server that never
started, so the server binds its port last, once every other start-up step worked.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from labelwatch.config import Settings
from labelwatch.engine import Engine
from labelwatch.errors import StartupError
from labelwatch.grpc.admin import ADMIN_SERVICE_NAME, AdminServicer
from labelwatch.grpc.flag_feed import FLAG_FEED_SERVICE_NAME, FlagFeedServicer
from labelwatch.grpc.interceptor import MetricsInterceptor
from labelwatch.grpc.model_info import model_info, shadow_version, with_cutoffs
from labelwatch.grpc.servicer import LabelQualityServicer
from labelwatch.portcheck import bind_problem
from labelwatch.security.layer import SecurityLayer
from labelwatch_proto.labelwatch.v1 import admin_pb2_grpc, flags_pb2_grpc
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["LabelQuality"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcApp:
    """A gRPC server whose servicers only translate between protobuf and ``engine``.

    ``reuse_port`` lets several worker processes bind the same port (SO_REUSEPORT).
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        security: SecurityLayer,
        *,
        reuse_port: bool = False,
    ) -> None:
        self._engine = engine
        self._security = security
        self._reuse_port = reuse_port
        self._executor = futures.ThreadPoolExecutor(
            max_workers=settings.threads, thread_name_prefix="grpc"
        )
        self.server = grpc.server(
            self._executor,
            # metrics outermost: calls refused by the security interceptors are still counted
            interceptors=[MetricsInterceptor(engine.metrics), *security.interceptors],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ],
            maximum_concurrent_rpcs=security.max_concurrent_rpcs,
        )
        servicer = LabelQualityServicer(
            engine.decoder,
            engine.score,
            lambda: with_cutoffs(
                model_info(engine.pipeline, engine.loaded_at, shadow_version(engine)),
                engine.adapter,
            ),
            max_batch=settings.max_batch,
            admission=security.admission,
        )
        pb_grpc.add_LabelQualityServicer_to_server(servicer, self.server)
        flags_pb2_grpc.add_FlagFeedServicer_to_server(
            FlagFeedServicer(engine.feed, engine.verdicts), self.server
        )
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(lambda: engine.reload("rpc")), self.server
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                FLAG_FEED_SERVICE_NAME,
                ADMIN_SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.port = 0
        self._started = False
        self._stopped = threading.Event()

    def bind(self, host: str, port: int) -> int:
        """Bind ``host:port`` (0: any free port; TLS when configured); the bound port."""
        address = f"{host}:{port}"
        problem = bind_problem(host, port, reuse_port=self._reuse_port)
        if problem is not None:  # said here, in one line, rather than by gRPC core's log
            raise StartupError(f"cannot bind {address}: {problem}")
        try:
            bound = self._security.bind(self.server, address)
        except RuntimeError as exc:
            raise StartupError(f"cannot bind {address}: {exc}") from exc
        if bound == 0:
            raise StartupError(f"cannot bind {address}: is the port in use?")
        self.port = bound
        return bound

    def start(self) -> None:
        """Accept calls; health follows the outbox (NOT_SERVING while it cannot be written)."""
        self.server.start()
        self._started = True
        self.health.set(FLAG_FEED_SERVICE_NAME, _SERVING)
        outbox = self._engine.outbox
        outbox.add_writable_listener(self._outbox_health)
        self._outbox_health(outbox.writable)

    def _outbox_health(self, writable: bool) -> None:
        # scoring without recording flags would lose them: NOT_SERVING until writable again
        for name in ("", SERVICE_NAME):
            self.health.set(name, _SERVING if writable else _NOT_SERVING)

    def stop(self, grace_seconds: float | None) -> None:
        """Refuse new calls, give in-flight ones ``grace_seconds``, release the port.

        Idempotent: a second call does nothing.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._started:
            self.server.stop(grace_seconds).wait()
        self._executor.shutdown(wait=False)
