"""``python -m labelwatch.healthcheck``: ask the local server's grpc.health.v1 service if it serves.

Used by the container image's ``HEALTHCHECK`` and by Kubernetes exec probes when
TLS is on; exits 0 when the server answers SERVING, 1 otherwise (NOT_SERVING,
unreachable, timeout, TLS refused), printing why.

The check follows the server's actual settings. At start-up the server writes a
small state file, ``DATA_DIR/server-state.json`` (:func:`write_state`): the bound
port, the address, and whether the port speaks TLS or mutual TLS. The check
finds it through ``--data-dir``, else ``$LABELWATCH_DATA_DIR``, else
``./labelwatch-data`` (the server's own default, so in the image both resolve to
the same directory), then connects to ``127.0.0.1:PORT``:

* plaintext when the server is plaintext;
* TLS when it was started with ``--tls-cert``: the server's own certificate is
  the trust anchor (``--tls-ca`` to use a CA instead) and the name checked is the
  first DNS name of the certificate (``--tls-server-name`` to override), since a
  loopback address is rarely in a server certificate;
* with ``--tls-client-ca`` (mutual TLS) the check must present a client
  certificate: ``--tls-client-cert``/``--tls-client-key`` or
  ``$LABELWATCH_HEALTHCHECK_TLS_CLIENT_CERT``/``_KEY``.

Without a state file (a server that never started, or a data directory the check
was not told about) it falls back to ``$LABELWATCH_PORT``, ``$LABELWATCH_TLS_CERT``
and ``$LABELWATCH_TLS_CLIENT_CA``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

log = logging.getLogger(__name__)

_CHECK = "/grpc.health.v1.Health/Check"
STATE_FILE_NAME = "server-state.json"
DEFAULT_DATA_DIR = Path("labelwatch-data")  # = Settings.data_dir's default
_ENV_PREFIX = "LABELWATCH_HEALTHCHECK_"


@dataclass(frozen=True)
class ServerState:
    """What a health check needs to reach the server: written at start-up, read by the check.

    ``host`` is the bind address (``--host``); ``port`` the bound gRPC port (never
    0); ``tls_cert`` the absolute path of the server certificate chain when the
    port speaks TLS, else None; ``mutual_tls`` whether clients need a certificate.
    """

    host: str
    port: int
    tls_cert: str | None = None
    mutual_tls: bool = False
    pid: int = 0

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def state_path(data_dir: Path) -> Path:
    """Where the server writes its state file inside ``data_dir``."""
    return data_dir / STATE_FILE_NAME


def write_state(data_dir: Path, state: ServerState) -> Path | None:
    """Write ``state`` atomically to ``data_dir``; return the path, or None if it cannot.

    Not being able to write it does not stop the server (the check then falls back
    to the environment); it is logged as a warning.
    """
    path = state_path(data_dir)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(asdict(state), sort_keys=True) + "\n")
        os.replace(temporary, path)  # several --workers write the same content: last one wins
    except OSError as exc:
        log.warning(
            "event=state_file_unwritable path=%s error=%s: `python -m labelwatch.healthcheck` "
            "will fall back to LABELWATCH_PORT / LABELWATCH_TLS_CERT",
            path,
            exc,
        )
        with contextlib.suppress(OSError):
            temporary.unlink()
        return None
    return path


def read_state(data_dir: Path) -> ServerState | None:
    """The state file in ``data_dir``, or None when there is none (or it is unreadable)."""
    try:
        raw = json.loads(state_path(data_dir).read_text())
        return ServerState(
            host=str(raw["host"]),
            port=int(raw["port"]),
            tls_cert=None if raw.get("tls_cert") is None else str(raw["tls_cert"]),
            mutual_tls=bool(raw.get("mutual_tls", False)),
            pid=int(raw.get("pid", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def state_from_env(environ: Mapping[str, str]) -> ServerState:
    """The server's likely state from ``LABELWATCH_*`` variables (the fallback)."""
    cert = environ.get("LABELWATCH_TLS_CERT") or None
    return ServerState(
        host=environ.get("LABELWATCH_HOST", "127.0.0.1"),
        port=int(environ.get("LABELWATCH_PORT", "50051")),
        tls_cert=str(Path(cert).resolve()) if cert else None,
        mutual_tls=bool(environ.get("LABELWATCH_TLS_CLIENT_CA")),
    )


def local_target(host: str, port: int) -> str:
    """``host:port`` to reach a server bound to ``host`` from this machine.

    >>> local_target("0.0.0.0", 50051)
    '127.0.0.1:50051'
    >>> local_target("::", 7000)
    '127.0.0.1:7000'
    >>> local_target("10.1.2.3", 7000)
    '10.1.2.3:7000'
    >>> local_target("fd00::5", 7000)
    '[fd00::5]:7000'
    """
    bare = host.strip().strip("[]")
    if bare in ("", "localhost"):
        return f"127.0.0.1:{port}"
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return f"{bare}:{port}"  # a host name: resolve it as the server did
    if address.is_unspecified or address.is_loopback:
        return f"127.0.0.1:{port}"  # wildcard binds (0.0.0.0, ::) accept IPv4 loopback too
    return f"[{bare}]:{port}" if address.version == 6 else f"{bare}:{port}"


def certificate_names(cert_file: Path) -> list[str]:
    """Names a client may verify ``cert_file``'s first certificate against: DNS, then IP SANs.

    Falls back to the subject's common name when there is no subjectAltName, and
    returns ``[]`` when the certificate cannot be decoded.
    """
    import _ssl  # the standard library's certificate decoder; ssl exposes no public one

    decode = getattr(_ssl, "_test_decode_cert", None)
    if decode is None:
        return []
    try:
        decoded = decode(str(cert_file))
    except (OSError, ValueError):
        return []
    sans = decoded.get("subjectAltName", ())
    names = [value for kind, value in sans if kind == "DNS"]
    names += [value.strip() for kind, value in sans if kind == "IP Address"]
    if not names:
        for rdn in decoded.get("subject", ()):
            names += [value for key, value in rdn if key == "commonName"]
    return [str(n) for n in names]


@dataclass(frozen=True)
class TlsClient:
    """How the check speaks TLS: trust anchors, the name to verify, an optional client cert."""

    root_certificates: bytes
    server_name: str | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None


def check(
    target: str, service: str = "", timeout_seconds: float = 3.0, tls: TlsClient | None = None
) -> str:
    """Return the health status name of ``service`` on ``target`` (e.g. ``"SERVING"``).

    ``tls`` None means plaintext. Raises :class:`grpc.RpcError` when the server
    cannot be reached in time (or the TLS handshake fails).
    """
    if tls is None:
        channel = grpc.insecure_channel(target)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.root_certificates,
            private_key=tls.client_key,
            certificate_chain=tls.client_cert,
        )
        options = []
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        call = channel.unary_unary(  # the stubs' HealthStub lacks its methods: call by name
            _CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        response = call(health_pb2.HealthCheckRequest(service=service), timeout=timeout_seconds)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class CheckConfigError(Exception):
    """The check cannot be set up (unreadable file, missing client certificate)."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CheckConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def tls_client(state: ServerState, args: argparse.Namespace) -> TlsClient | None:
    """The TLS side of the check for a server in ``state`` (None: plaintext)."""
    if not state.tls:
        return None
    anchor = args.tls_ca or state.tls_cert
    assert anchor is not None
    server_name = args.tls_server_name
    if not server_name and state.tls_cert:  # the name the server's own certificate carries
        server_name = next(iter(certificate_names(Path(state.tls_cert))), None)
    client_cert = client_key = None
    if args.tls_client_cert or args.tls_client_key:
        if not (args.tls_client_cert and args.tls_client_key):
            raise CheckConfigError("--tls-client-cert and --tls-client-key go together")
        client_cert = _read(args.tls_client_cert, "client certificate")
        client_key = _read(args.tls_client_key, "client key")
    elif state.mutual_tls:
        raise CheckConfigError(
            "the server requires client certificates (--tls-client-ca): give the check one "
            f"with --tls-client-cert/--tls-client-key or {_ENV_PREFIX}TLS_CLIENT_CERT and "
            f"{_ENV_PREFIX}TLS_CLIENT_KEY"
        )
    return TlsClient(
        _read(anchor, "TLS trust anchor"), server_name or None, client_cert, client_key
    )


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labelwatch.healthcheck",
        description="Exit 0 if the local labelwatch server's gRPC health service says SERVING. "
        "Port and TLS come from the state file the server writes in its data directory.",
    )

    def env(name: str, default: str | None = None) -> str | None:
        return environ.get(_ENV_PREFIX + name, default)

    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(environ.get("LABELWATCH_DATA_DIR", str(DEFAULT_DATA_DIR))),
        help="the server's --data-dir, holding server-state.json [env LABELWATCH_DATA_DIR; "
        "default %(default)s]",
    )
    parser.add_argument(
        "--target", default=None, help="host:port to check instead of the one the server wrote"
    )
    parser.add_argument(
        "--service", default="", help="service name to ask about ('' = the whole server)"
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds [default 3]")
    parser.add_argument(
        "--tls-ca",
        default=env("TLS_CA"),
        help=f"PEM CA to verify the server with [env {_ENV_PREFIX}TLS_CA; default the "
        "server's own --tls-cert]",
    )
    parser.add_argument(
        "--tls-server-name",
        default=env("TLS_SERVER_NAME"),
        help=f"name to verify in the server certificate [env {_ENV_PREFIX}TLS_SERVER_NAME; "
        "default its first DNS name]",
    )
    parser.add_argument(
        "--tls-client-cert",
        default=env("TLS_CLIENT_CERT"),
        help=f"PEM client certificate for mutual TLS [env {_ENV_PREFIX}TLS_CLIENT_CERT]",
    )
    parser.add_argument(
        "--tls-client-key",
        default=env("TLS_CLIENT_KEY"),
        help=f"PEM key of --tls-client-cert [env {_ENV_PREFIX}TLS_CLIENT_KEY]",
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Parse ``argv``, check once; return 0 if SERVING else 1."""
    env = os.environ if environ is None else environ
    args = _parser(env).parse_args(argv)
    state = read_state(args.data_dir)
    source = f"state file {state_path(args.data_dir)}"
    if state is None:
        try:
            state = state_from_env(env)
        except ValueError as exc:
            print(f"unhealthy: LABELWATCH_PORT: {exc}", file=sys.stderr)
            return 1
        source = f"environment (no {state_path(args.data_dir)})"
    target = args.target or local_target(state.host, state.port)
    try:
        tls = tls_client(state, args)
    except CheckConfigError as exc:
        print(f"unhealthy: {target}: {exc}", file=sys.stderr)
        return 1
    mode = "plaintext" if tls is None else f"TLS, server name {tls.server_name or '(target)'}"
    try:
        status = check(target, args.service, args.timeout, tls)
    except grpc.RpcError as exc:
        reason = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.Call) else exc
        print(f"unhealthy: {target} ({mode}, from {source}): {reason}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"unhealthy: {target} reports {status}", file=sys.stderr)
        return 1
    print(f"healthy: {target} ({mode}) reports SERVING")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
