"""Server TLS and mTLS credentials from ``--tls-cert``, ``--tls-key``, ``--tls-client-ca``.

The files are checked at start-up with the standard library's :mod:`ssl` (the
key must match the certificate, the CA file must hold certificates), so a bad
file stops the server with a message naming the flag instead of failing every
handshake later.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from labelwatch.errors import StartupError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and the CA for client certs."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate signed by ``client_ca``."""
        return self.client_ca is not None


def tls_files(cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsFiles | None:
    """Combine the three flags; None means plaintext. Raises :class:`StartupError` if partial."""
    if cert is None and key is None:
        if client_ca is not None:
            raise StartupError(
                "--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS plus client "
                "certificates"
            )
        return None
    if cert is None or key is None:
        missing = "--tls-key" if key is None else "--tls-cert"
        raise StartupError(f"TLS needs both --tls-cert and --tls-key; {missing} is missing")
    return TlsFiles(cert, key, client_ca)


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StartupError(f"{flag} {path}: cannot read: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise StartupError(f"{flag} {path}: not a PEM file (no '-----BEGIN' line)")
    return data


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; with ``client_ca``, client certificates are required."""
    cert = _read(files.cert, "--tls-cert")
    key = _read(files.key, "--tls-key")
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        check.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        raise StartupError(
            f"--tls-cert {files.cert} and --tls-key {files.key} do not form a usable pair "
            f"(is the key the certificate's, and unencrypted?): {exc.reason or exc}"
        ) from exc
    client_ca = None
    if files.client_ca is not None:
        client_ca = _read(files.client_ca, "--tls-client-ca")
        try:
            check.load_verify_locations(cafile=files.client_ca)
        except ssl.SSLError as exc:
            raise StartupError(
                f"--tls-client-ca {files.client_ca}: no usable CA certificate: {exc.reason or exc}"
            ) from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def is_loopback(host: str) -> bool:
    """True if ``host`` only accepts connections from this machine.

    ``localhost`` and loopback addresses are; wildcards (``0.0.0.0``, ``::``),
    other addresses and other host names are not.
    """
    bare = host.strip().strip("[]")
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, *, tls: bool, auth: bool) -> bool:
    """Log a warning when ``host`` is reachable from other machines without TLS or tokens.

    Returns True if it warned.
    """
    if is_loopback(host):
        return False
    warned = False
    if not tls:
        log.warning(
            "event=plaintext_on_network host=%s: serving without TLS on a non-loopback "
            "address; traffic (and bearer tokens) can be read on the network. "
            "Pass --tls-cert and --tls-key",
            host,
        )
        warned = True
    if not auth:
        log.warning(
            "event=no_auth_on_network host=%s: anyone who can reach this address can call "
            "every method. Pass --auth-tokens",
            host,
        )
        warned = True
    return warned
