"""A minimal Label Studio REST client (stdlib only) for write-back and ``connect``."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any


class LabelStudioError(Exception):
    """Label Studio could not be reached or refused a request.

    ``status`` is the HTTP status, 0 when no answer came; ``timed_out`` says the
    connection was made (or tried) but no answer came within the timeout.
    """

    def __init__(self, message: str, status: int = 0, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.timed_out = timed_out


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class LabelStudioClient:
    """JSON requests to Label Studio at ``url`` with a legacy API token or a personal access token.

    A personal access token (a JWT) is exchanged at ``/api/token/refresh/`` for a
    short-lived access token, refreshed again after a 401.
    """

    def __init__(self, url: str, token: str, *, timeout_seconds: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL must start with http:// or https://, got {url!r}")
        if not token:
            raise ValueError("Label Studio needs an API token")
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout_seconds
        self._access: str | None = None

    def _auth(self) -> str:
        if not _is_jwt(self._token):
            return f"Token {self._token}"
        if self._access is None:
            answer = self._send("POST", "/api/token/refresh/", {"refresh": self._token}, auth=False)
            self._access = str(answer["access"])
        return f"Bearer {self._access}"

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send ``body`` as JSON; return the decoded answer. Raises :class:`LabelStudioError`."""
        try:
            return self._send(method, path, body)
        except LabelStudioError as exc:
            if exc.status == 401 and self._access is not None:
                self._access = None
                return self._send(method, path, body)
            raise

    def _send(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        headers = {"Accept": "application/json", "User-Agent": "labelwatch-label-studio/1"}
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = self._auth()
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        where = f"Label Studio {method} {path}"
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace").strip()
            raise LabelStudioError(f"{where} answered HTTP {exc.code}: {detail}", exc.code) from exc
        except TimeoutError as exc:
            late = f"{where}: no answer within {self._timeout}s"
            raise LabelStudioError(late, timed_out=True) from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                late = f"{where}: no answer within {self._timeout}s"
                raise LabelStudioError(late, timed_out=True) from exc
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url}: {exc.reason}"
            ) from exc
        except OSError as exc:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url}: {exc}") from exc
        return json.loads(raw) if raw else None
