"""Webhook sink: POST batches of flags as JSON, signed with HMAC-SHA256.

Request: ``POST URL`` with body ``{"flags": [<flag>, ...]}`` (each flag as in
``docs/delivery.md``) and headers

* ``X-Labelwatch-Timestamp``: unix seconds when the request was signed;
* ``X-Labelwatch-Signature``: ``sha256=`` + hex HMAC-SHA256, keyed with the
  shared secret, over ``"<timestamp>." + body`` (reject stale timestamps to stop replays);
* ``Idempotency-Key``: sha256 hex of the batch's flag ids, equal for a retried batch.

Responses: 2xx = delivered; 429, 5xx or a timeout = retry with backoff; any
other status = the batch is refused (dead letter after isolating the flag);
a refused connection = the receiver is down (retried until it is back).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from labelwatch.flag_record import Flag
from labelwatch.sinks.base import PermanentError, RetryableError, SinkUnavailable

SIGNATURE_HEADER = "X-Labelwatch-Signature"
TIMESTAMP_HEADER = "X-Labelwatch-Timestamp"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Labelwatch-Signature`` value for ``body`` sent at ``timestamp``.

    >>> sign(b"k", "1700000000", b"{}")[:7]
    'sha256='
    """
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """Check a signature in constant time (for receivers written in Python)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class WebhookSink:
    """POSTs flags to ``url`` in batches of up to ``max_batch``.

    ``secret``: the HMAC key (bytes; empty = requests are not signed);
    ``timeout_seconds``: per request.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: bytes,
        max_batch: int = 100,
        timeout_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.max_batch = max_batch
        self._secret = secret
        self._timeout = timeout_seconds
        self._clock = clock

    def open(self) -> None:
        """Nothing to prepare: each batch is one request."""

    def close(self) -> None:
        """Nothing to release."""

    def request_for(self, flags: Sequence[Flag]) -> urllib.request.Request:
        """The signed request that delivers ``flags``."""
        body = json.dumps(
            {"flags": [f.to_dict() for f in flags]}, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8")
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "labelwatch-webhook/1",
            TIMESTAMP_HEADER: timestamp,
            "Idempotency-Key": hashlib.sha256(
                "\n".join(f.flag_id for f in flags).encode("ascii")
            ).hexdigest(),
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

    def deliver(self, flags: Sequence[Flag]) -> int:
        """POST one batch; see the module docstring for how responses are read."""
        request = self.request_for(flags)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
                return len(flags)
        except urllib.error.HTTPError as exc:
            status = exc.code
            detail = exc.read(500).decode("utf-8", "replace").strip()
            message = f"{self.url} answered HTTP {status}: {detail}"
            if status == 429 or status >= 500:
                raise RetryableError(
                    message, retry_after=_retry_after(exc.headers.get("Retry-After"))
                ) from exc
            raise PermanentError(message) from exc
        except TimeoutError as exc:
            raise RetryableError(f"{self.url} did not answer within {self._timeout}s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise RetryableError(f"{self.url} did not answer within {self._timeout}s") from exc
            raise SinkUnavailable(f"cannot reach {self.url}: {exc.reason}") from exc
        except (ConnectionError, OSError) as exc:
            raise SinkUnavailable(f"cannot reach {self.url}: {exc}") from exc
