"""What the sync and async clients share: channel settings, retry delays, the health codec."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

MIB = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB
MAX_BACKOFF_SECONDS = 10.0
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"


@dataclass(frozen=True)
class ChannelSettings:
    """How to reach the server. Any certificate implies TLS; the token is never shown."""

    target: str
    tls: bool = False
    root_certificates: bytes | None = field(default=None, repr=False)
    certificate_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("target must be 'host:port'")
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("give certificate_chain and private_key together (client TLS)")
        if self.token is not None and (
            not self.token or not self.token.isascii() or not self.token.isprintable()
        ):
            # the value is a secret: say what is wrong, never what it is
            raise ValueError("token must be non-empty printable ASCII")
        if self.max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be > 0, got {self.max_message_bytes}")

    @property
    def uses_tls(self) -> bool:
        """True when a TLS channel is built."""
        return self.tls or any(
            v is not None for v in (self.root_certificates, self.certificate_chain)
        )

    def options(self) -> list[tuple[str, int]]:
        """gRPC channel options: message size limits in bytes."""
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials; the system roots when ``root_certificates`` is None."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """Call metadata: ``authorization: Bearer <token>`` when a token is set."""
        if self.token is None:
            return None
        return (("authorization", f"Bearer {self.token}"),)


def backoff_delays(max_retries: int, base_seconds: float, rng: random.Random) -> Iterator[float]:
    """Seconds to wait before each of ``max_retries`` retries.

    Exponential (``base * 2**attempt``, capped at :data:`MAX_BACKOFF_SECONDS`)
    with jitter: each delay is drawn from [half, all] of that.
    """
    for attempt in range(max_retries):
        ceiling = min(base_seconds * 2.0**attempt, MAX_BACKOFF_SECONDS)
        yield ceiling * (0.5 + 0.5 * rng.random())


def retry_delay(
    code: grpc.StatusCode, delays: Iterator[float], deadline: float | None
) -> float | None:
    """Seconds to wait before retrying a call that failed with ``code``, or None to give up.

    Gives up on codes other than UNAVAILABLE, when ``delays`` is spent, and when
    the wait would pass ``deadline`` (a :func:`time.monotonic` value).
    """
    if code not in RETRYABLE:
        return None
    delay = next(delays, None)
    if delay is None or (deadline is not None and time.monotonic() + delay >= deadline):
        return None
    return delay


def deadline_after(timeout: float | None) -> float | None:
    """The :func:`time.monotonic` deadline ``timeout`` seconds from now (None = none)."""
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (at least 1 ms, so gRPC reports DEADLINE_EXCEEDED)."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)


# --- grpc.health.v1 without grpcio-health-checking: the two messages by hand ---------------------

_HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def encode_health_request(service: str) -> bytes:
    """Serialize ``HealthCheckRequest{service}`` (field 1, string)."""
    raw = service.encode("utf-8")
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def decode_health_response(data: bytes) -> str:
    """Parse ``HealthCheckResponse`` and return its status name, e.g. ``"SERVING"``."""
    status = 0
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            if number == 1:
                status = value
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire_type} in HealthCheckResponse")
    if pos > len(data):
        raise ValueError("truncated HealthCheckResponse")
    return _HEALTH_STATUS.get(status, f"UNKNOWN_STATUS_{status}")
