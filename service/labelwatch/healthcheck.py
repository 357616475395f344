"""``python -m labelwatch.healthcheck``: ask a server's grpc.health.v1 service if it serves.

Used by the container image's ``HEALTHCHECK``; exits 0 when the server answers
SERVING, 1 otherwise (NOT_SERVING, unreachable, timeout), printing why.
The default target is ``127.0.0.1:$LABELWATCH_PORT`` (50051 when unset).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2

_CHECK = "/grpc.health.v1.Health/Check"


def check(target: str, service: str = "", timeout_seconds: float = 3.0) -> str:
    """Return the health status name of ``service`` on ``target`` (e.g. ``"SERVING"``).

    Raises :class:`grpc.RpcError` when the server cannot be reached in time.
    """
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(  # the stubs' HealthStub lacks its methods: call by name
            _CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        response = call(health_pb2.HealthCheckRequest(service=service), timeout=timeout_seconds)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, check once; return 0 if SERVING else 1."""
    port = os.environ.get("LABELWATCH_PORT", "50051")
    parser = argparse.ArgumentParser(
        prog="python -m labelwatch.healthcheck",
        description="Exit 0 if the labelwatch server's gRPC health service says SERVING.",
    )
    parser.add_argument(
        "--target", default=f"127.0.0.1:{port}", help="host:port [default %(default)s]"
    )
    parser.add_argument(
        "--service", default="", help="service name to ask about ('' = the whole server)"
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds [default 3]")
    args = parser.parse_args(argv)
    try:
        status = check(args.target, args.service, args.timeout)
    except grpc.RpcError as exc:
        reason = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.Call) else exc
        print(f"unhealthy: {args.target}: {reason}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"unhealthy: {args.target} reports {status}", file=sys.stderr)
        return 1
    print(f"healthy: {args.target} reports SERVING")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
