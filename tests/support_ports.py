"""Test support: the one helper that picks a free loopback port.

Prefer asking a listener for port 0 and reading back the port it bound (``labelwatch serve
--port 0``, :func:`support_server.running_server`): nothing can take the port in between.
:func:`free_port` is for what cannot do that: a child process that must be told its port up front
(nats-server, Label Studio), a port that must stay the same across a restart, or an address where
nothing listens.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound, read back, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
