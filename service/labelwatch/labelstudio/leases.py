"""Who holds a lease on a stored Label Studio event or write-back, and whether it is dead.

Events and write-backs are leased in the outbox while a process works on them
(:mod:`labelwatch.outbox.ls_events`), so other processes sharing the file leave
them alone; a lease ends by itself after a while. A process killed mid-way (kill
-9, OOM) would hold its leases until then: at start-up, :func:`release_dead_leases`
frees the leases of owners on this host that are known to be gone, so a
restarted labelwatch resumes at once.

An owner is ``<hostname>:<pid>:<nonce>``: the nonce is drawn once per process,
so a restarted process that got the same pid (PID 1 in a container) still tells
its predecessor's leases from its own.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket

from labelwatch.outbox import Outbox

log = logging.getLogger(__name__)

_OWNERS: dict[int, str] = {}


def lease_owner() -> str:
    """This process's owner name (a forked worker gets its own)."""
    pid = os.getpid()
    if pid not in _OWNERS:
        _OWNERS[pid] = f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}"
    return _OWNERS[pid]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_dead(owner: str) -> bool:
    """Whether ``owner`` is certainly gone: on this host, and its pid is not running or is
    this process under another nonce. Owners of other hosts are never declared dead.

    >>> is_dead(lease_owner()), is_dead("some-other-host:1:abcd")
    (False, False)
    """
    host, _, rest = owner.partition(":")
    pid_text, _, _nonce = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return owner != lease_owner()
    return not _pid_alive(pid)


def release_dead_leases(outbox: Outbox) -> int:
    """Free the leases of dead owners (see the module docstring); returns the rows freed."""
    dead = sorted(owner for owner in outbox.lease_owners() if is_dead(owner))
    if not dead:
        return 0
    freed = outbox.release_leases_of(dead)
    log.warning("event=ls_dead_leases_released owners=%s rows=%d", ",".join(dead), freed)
    return freed
