"""``python -m labelwatch.healthcheck`` follows the server's real port and TLS settings."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from labelwatch import healthcheck
from support_security import make_pki
from support_server import running_server, server_process, write_artifact


def _run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The check as the image runs it: a separate ``python -m labelwatch.healthcheck``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LABELWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "labelwatch.healthcheck", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _cert_for_dns_name_only(folder: Path, name: str) -> tuple[Path, Path]:
    """A CA-signed server certificate whose only name is ``name`` (no IP, no localhost)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "healthcheck test CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "named.crt", folder / "named.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_server_writes_its_bound_port_and_tls_mode_to_the_data_dir(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    art = write_artifact(tmp_path / "t.json")
    data = tmp_path / "data"
    with running_server(
        thresholds=art, data_dir=data, tls_cert=pki.server_cert, tls_key=pki.server_key
    ) as server:
        state = json.loads((data / healthcheck.STATE_FILE_NAME).read_text())
        assert state["port"] == server.port != 0
        assert state["tls_cert"] == str(pki.server_cert.resolve())
        assert state["mutual_tls"] is False


def test_check_speaks_tls_to_a_tls_server(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    art = write_artifact(tmp_path / "t.json")
    data = tmp_path / "data"
    with running_server(
        thresholds=art, data_dir=data, tls_cert=pki.server_cert, tls_key=pki.server_key
    ) as server:
        result = _run_check("--data-dir", str(data))
        assert result.returncode == 0, result.stderr
        assert "TLS" in result.stdout and "SERVING" in result.stdout
        # a plaintext check (the old behaviour) cannot talk to this port
        with pytest.raises(grpc.RpcError):
            healthcheck.check(f"127.0.0.1:{server.port}", timeout_seconds=2)


def test_check_verifies_the_certificate_name_not_the_loopback_address(tmp_path: Path) -> None:
    cert, key = _cert_for_dns_name_only(tmp_path, "labelwatch.internal.example")
    art = write_artifact(tmp_path / "t.json")
    data = tmp_path / "data"
    with running_server(thresholds=art, data_dir=data, tls_cert=cert, tls_key=key):
        assert healthcheck.certificate_names(cert) == ["labelwatch.internal.example"]
        result = _run_check("--data-dir", str(data))
        assert result.returncode == 0, result.stderr
        assert "labelwatch.internal.example" in result.stdout
        # the name really is verified: a wrong one is refused
        wrong = _run_check("--data-dir", str(data), "--tls-server-name", "other.example")
        assert wrong.returncode == 1, wrong.stdout


def test_check_uses_a_client_certificate_for_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    art = write_artifact(tmp_path / "t.json")
    data = tmp_path / "data"
    with running_server(
        thresholds=art,
        data_dir=data,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca_cert,
    ):
        without = _run_check("--data-dir", str(data))
        assert without.returncode == 1
        assert "LABELWATCH_HEALTHCHECK_TLS_CLIENT_CERT" in without.stderr
        client_env = {
            "LABELWATCH_HEALTHCHECK_TLS_CLIENT_CERT": str(pki.client_cert),
            "LABELWATCH_HEALTHCHECK_TLS_CLIENT_KEY": str(pki.client_key),
        }
        result = _run_check("--data-dir", str(data), env=client_env)
        assert result.returncode == 0, result.stderr
        rogue_env = {
            "LABELWATCH_HEALTHCHECK_TLS_CLIENT_CERT": str(pki.rogue_client_cert),
            "LABELWATCH_HEALTHCHECK_TLS_CLIENT_KEY": str(pki.rogue_client_key),
        }
        assert _run_check("--data-dir", str(data), env=rogue_env).returncode == 1


def test_check_follows_a_port_given_on_the_command_line(tmp_path: Path) -> None:
    """A plaintext server started with --port on the command line (not LABELWATCH_PORT)."""
    art = write_artifact(tmp_path / "t.json")
    data = tmp_path / "data"
    with server_process(["--thresholds", str(art), "--data-dir", str(data)]) as proc:
        assert proc.port != 50051
        # the data dir comes from LABELWATCH_DATA_DIR, as in the image; no LABELWATCH_PORT is set
        result = _run_check(env={"LABELWATCH_DATA_DIR": str(data)})
        assert result.returncode == 0, result.stderr
        assert f"127.0.0.1:{proc.port} (plaintext)" in result.stdout
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(timeout=60) == 0
    stopped = _run_check("--data-dir", str(data), "--timeout", "1")
    assert stopped.returncode == 1
    assert f"127.0.0.1:{proc.port}" in stopped.stderr


def test_check_reports_not_serving_while_the_server_drains(tmp_path: Path) -> None:
    art = write_artifact(tmp_path / "t.json")
    data = tmp_path / "data"
    with running_server(thresholds=art, data_dir=data) as server:
        assert healthcheck.main(["--data-dir", str(data)], environ={}) == 0
        server.health.enter_graceful_shutdown()
        assert healthcheck.main(["--data-dir", str(data)], environ={}) == 1


def test_without_a_state_file_the_check_falls_back_to_the_environment(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    art = write_artifact(tmp_path / "t.json")
    with running_server(
        thresholds=art,
        data_dir=tmp_path / "data",
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
    ) as server:
        env = {"LABELWATCH_PORT": str(server.port), "LABELWATCH_TLS_CERT": str(pki.server_cert)}
        elsewhere = ["--data-dir", str(tmp_path / "elsewhere")]
        assert healthcheck.main(elsewhere, environ=env) == 0
        assert healthcheck.main(elsewhere, environ={"LABELWATCH_PORT": str(server.port)}) == 1


@pytest.mark.parametrize(
    ("host", "target"),
    [("0.0.0.0", "127.0.0.1:1"), ("::", "127.0.0.1:1"), ("127.0.0.1", "127.0.0.1:1")],
)
def test_wildcard_and_loopback_binds_are_checked_on_ipv4_loopback(host: str, target: str) -> None:
    assert healthcheck.local_target(host, 1) == target
