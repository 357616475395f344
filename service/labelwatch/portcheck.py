"""Say why a listening address cannot be bound, before gRPC core tries (and logs) it.

gRPC core reports a failed bind with a raw ``E1204 ... add_port.cc`` line on stderr and a
RuntimeError that only suggests ``GRPC_VERBOSITY=debug``. :func:`bind_problem` tries the
same bind with a plain socket first and returns the operating system's reason in words, so
that start-up can stop with one line of its own and gRPC never logs.
"""

from __future__ import annotations

import errno
import socket

_HINTS = {
    errno.EADDRINUSE: "the port is in use (another server? stop it, or pick another port)",
    errno.EADDRNOTAVAIL: "no network interface has this address",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def bind_problem(host: str, port: int, *, reuse_port: bool = False) -> str | None:
    """Why ``host:port`` cannot be bound for listening, or ``None`` if it can (or port 0).

    Tries every address ``host`` resolves to with ``SO_REUSEADDR`` (and ``SO_REUSEPORT``
    with ``reuse_port``), as gRPC does; like gRPC, one bindable address is enough. The
    sockets are closed again at once.

    >>> bind_problem("127.0.0.1", 0) is None
    True
    """
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"the host name does not resolve ({exc.strerror})"
    first: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(address)
                return None
        except OSError as exc:
            first = first or exc
    if first is None:
        return "the host name resolves to no address"
    return _HINTS.get(first.errno or 0, first.strerror or str(first))
