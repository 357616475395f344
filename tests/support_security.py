"""Test support: a throwaway PKI (made with ``cryptography``) and token files.

:func:`make_pki` writes a CA, a server certificate for 127.0.0.1 and localhost,
a client certificate signed by the CA, and a client certificate from an
unrelated CA, as PEM files in a folder.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from labelwatch.security.tokens import Role, create_token
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from support_server import CLASS_NAMES


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files :func:`make_pki` wrote."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path  # signed by another CA
    rogue_client_key: Path

    def read(self, name: str) -> bytes:
        """The bytes of one file, e.g. ``pki.read("ca_cert")``."""
        path: Path = getattr(self, name)
        return path.read_bytes()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(
    folder: Path, stem: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> tuple[Path, Path]:
    cert, key = pair
    cert_path = folder / f"{stem}.crt"
    key_path = folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def make_pki(folder: Path) -> Pki:
    """Write a CA, server and client certificates (and a rogue client) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca("labelwatch test CA")
    rogue_ca = _ca("someone else's CA")
    ca_cert, _ = _write(folder, "ca", ca)
    server_cert, server_key = _write(folder, "server", _leaf("127.0.0.1", ca, server=True))
    client_cert, client_key = _write(folder, "client", _leaf("client", ca, server=False))
    rogue_cert, rogue_key = _write(folder, "rogue", _leaf("rogue", rogue_ca, server=False))
    return Pki(ca_cert, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key)


@dataclass(frozen=True)
class Tokens:
    """A token file with one token per role (and one holding every role)."""

    path: Path
    score: str
    watch: str
    admin: str

    def all(self) -> tuple[str, ...]:
        return (self.score, self.watch, self.admin)


def make_tokens(path: Path) -> Tokens:
    """Create the file at ``path`` with tokens named score-client, watch-client, ops."""
    score, _ = create_token(path, frozenset({Role.SCORE}), "score-client")
    watch, _ = create_token(path, frozenset({Role.WATCH}), "watch-client")
    admin, _ = create_token(path, frozenset({Role.ADMIN}), "ops")
    return Tokens(path, score, watch, admin)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


def score_request(n: int = 2, prefix: str = "ex") -> pb.ScoreRequest:
    """A valid probabilities-only request of ``n`` examples over :data:`CLASS_NAMES`."""
    k = len(CLASS_NAMES)
    return pb.ScoreRequest(
        examples=[
            pb.Example(
                id=f"{prefix}-{i}",
                probabilities=pb.Probabilities(values=[((i + j) % 10) / 10 for j in range(k)]),
                labels=[CLASS_NAMES[i % k]],
            )
            for i in range(n)
        ]
    )
