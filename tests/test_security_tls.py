"""TLS and mutual TLS on a real server, with certificates made in the test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from labelwatch.errors import StartupError
from labelwatch.security.tls import is_loopback, warn_if_exposed
from labelwatch.server import RunningServer
from labelwatch_client import Example, LabelwatchClient
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_security import Pki, make_pki, score_request
from support_server import CLASS_NAMES, running_server, server_process, write_artifact

K = len(CLASS_NAMES)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_artifact(tmp_path_factory.mktemp("art") / "thresholds.json")


@pytest.fixture(scope="module")
def tls_server(pki: Pki, artifact: Path) -> Iterator[RunningServer]:
    with running_server(thresholds=artifact, tls_cert=pki.server_cert, tls_key=pki.server_key) as s:
        yield s


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, artifact: Path) -> Iterator[RunningServer]:
    with running_server(
        thresholds=artifact,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca_cert,
    ) as s:
        yield s


def _target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


def _score_code(channel: grpc.Channel) -> grpc.StatusCode:
    """Status of one Score call on ``channel`` (OK if it succeeded)."""
    try:
        response = pb_grpc.LabelQualityStub(channel).Score(score_request(), timeout=10)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return exc.code()
    assert [r.id for r in response.results] == ["ex-0", "ex-1"]
    return grpc.StatusCode.OK


def _creds(
    pki: Pki, *, root: Pki | None = None, client: str | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials trusting ``root``'s CA (default ``pki``), with an optional client cert."""
    trust = (root or pki).read("ca_cert")
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=trust)
    return grpc.ssl_channel_credentials(
        root_certificates=trust,
        private_key=pki.read(f"{client}_key"),
        certificate_chain=pki.read(f"{client}_cert"),
    )


def test_tls_server_answers_a_client_that_trusts_its_ca(
    tls_server: RunningServer, pki: Pki
) -> None:
    with grpc.secure_channel(_target(tls_server), _creds(pki)) as channel:
        assert _score_code(channel) == grpc.StatusCode.OK


def test_typed_client_speaks_tls_with_root_certificates(
    tls_server: RunningServer, pki: Pki
) -> None:
    with LabelwatchClient(
        _target(tls_server), root_certificates=pki.read("ca_cert"), timeout=10, max_retries=0
    ) as client:
        results = client.score([Example("a", probabilities=[0.5] * K, labels=["cat"])])
        assert [r.id for r in results] == ["a"]
        assert client.health() == "SERVING"


def test_plaintext_client_to_tls_port_fails_cleanly_and_server_keeps_serving(
    tls_server: RunningServer, pki: Pki
) -> None:
    with grpc.insecure_channel(_target(tls_server)) as channel:
        assert _score_code(channel) == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(_target(tls_server), _creds(pki)) as channel:
        assert _score_code(channel) == grpc.StatusCode.OK


def test_client_that_does_not_trust_the_server_certificate_cannot_connect(
    tls_server: RunningServer, pki: Pki, other_pki: Pki
) -> None:
    with grpc.secure_channel(_target(tls_server), _creds(pki, root=other_pki)) as channel:
        assert _score_code(channel) == grpc.StatusCode.UNAVAILABLE


def test_tls_client_to_plaintext_port_fails_cleanly(pki: Pki, artifact: Path) -> None:
    with running_server(thresholds=artifact) as plain:
        with grpc.secure_channel(_target(plain), _creds(pki)) as channel:
            assert _score_code(channel) == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(_target(plain)) as channel:
            assert _score_code(channel) == grpc.StatusCode.OK


def test_mtls_rejects_a_client_without_a_certificate(mtls_server: RunningServer, pki: Pki) -> None:
    with grpc.secure_channel(_target(mtls_server), _creds(pki)) as channel:
        assert _score_code(channel) == grpc.StatusCode.UNAVAILABLE


def test_mtls_rejects_a_client_certificate_from_another_ca(
    mtls_server: RunningServer, pki: Pki
) -> None:
    with grpc.secure_channel(_target(mtls_server), _creds(pki, client="rogue_client")) as channel:
        assert _score_code(channel) == grpc.StatusCode.UNAVAILABLE


def test_mtls_accepts_a_client_certificate_signed_by_the_client_ca(
    mtls_server: RunningServer, pki: Pki
) -> None:
    with grpc.secure_channel(_target(mtls_server), _creds(pki, client="client")) as channel:
        assert _score_code(channel) == grpc.StatusCode.OK
    with LabelwatchClient(
        _target(mtls_server),
        root_certificates=pki.read("ca_cert"),
        certificate_chain=pki.read("client_cert"),
        private_key=pki.read("client_key"),
        timeout=10,
        max_retries=0,
    ) as client:
        assert client.model_info().class_names == CLASS_NAMES


def test_key_that_does_not_match_the_certificate_stops_start_up(
    pki: Pki, other_pki: Pki, artifact: Path
) -> None:
    with pytest.raises(StartupError, match=r"--tls-cert .* and --tls-key .* do not form"):
        with running_server(
            thresholds=artifact, tls_cert=pki.server_cert, tls_key=other_pki.server_key
        ):
            pass


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"tls_cert": "server_cert"}, "--tls-key is missing"),
        ({"tls_key": "server_key"}, "--tls-cert is missing"),
        ({"tls_client_ca": "ca_cert"}, "--tls-client-ca needs --tls-cert and --tls-key"),
    ],
)
def test_incomplete_tls_flags_stop_start_up(
    pki: Pki, artifact: Path, files: dict[str, str], message: str
) -> None:
    overrides = {flag: getattr(pki, name) for flag, name in files.items()}
    with pytest.raises(StartupError, match=message):
        with running_server(thresholds=artifact, **overrides):
            pass


def test_unreadable_or_non_pem_files_are_named(pki: Pki, artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"--tls-key .*missing.key: cannot read"):
        with running_server(
            thresholds=artifact, tls_cert=pki.server_cert, tls_key=tmp_path / "missing.key"
        ):
            pass
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(StartupError, match=r"--tls-client-ca .*junk.pem: not a PEM file"):
        with running_server(
            thresholds=artifact,
            tls_cert=pki.server_cert,
            tls_key=pki.server_key,
            tls_client_ca=junk,
        ):
            pass


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("labelwatch.internal", False),
    ],
)
def test_only_loopback_addresses_count_as_local(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plaintext_on_a_non_loopback_address_logs_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="labelwatch.security.tls"):
        assert warn_if_exposed("127.0.0.1", tls=False, auth=False) is False
        assert caplog.records == []
        assert warn_if_exposed("0.0.0.0", tls=False, auth=True) is True
    (record,) = caplog.records
    assert "event=plaintext_on_network" in record.getMessage()
    assert "--tls-cert" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="labelwatch.security.tls"):
        assert warn_if_exposed("0.0.0.0", tls=True, auth=True) is False
    assert caplog.records == []


def test_serve_command_takes_tls_files_from_the_environment(
    pki: Pki, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABELWATCH_TLS_CERT", str(pki.server_cert))
    monkeypatch.setenv("LABELWATCH_TLS_KEY", str(pki.server_key))
    monkeypatch.setenv("LABELWATCH_TLS_CLIENT_CA", str(pki.ca_cert))
    with server_process(["--thresholds", str(artifact)]) as proc:
        with grpc.secure_channel(proc.target, _creds(pki, client="client")) as channel:
            assert _score_code(channel) == grpc.StatusCode.OK
        with grpc.secure_channel(proc.target, _creds(pki)) as channel:
            assert _score_code(channel) == grpc.StatusCode.UNAVAILABLE
