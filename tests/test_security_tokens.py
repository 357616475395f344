"""Bearer tokens with roles: the token file, the CLI, and every method of a live server."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client import generate_latest

from labelwatch.cli import main
from labelwatch.errors import StartupError
from labelwatch.security.auth import OPEN_SERVICES, authorize, required_role
from labelwatch.security.tokens import (
    Role,
    TokenFileError,
    TokenStore,
    create_token,
    load_tokens,
    parse_token_lines,
    token_digest,
)
from labelwatch.server import RunningServer
from labelwatch_client import LabelwatchClient, PermissionDenied, Unauthenticated
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_security import Tokens, bearer, make_tokens, score_request
from support_server import running_server, server_process, target_of, write_artifact

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
# looks like a real token, matches none: must never be echoed anywhere either
FORGED = "lw_" + "Q" * 43


# --- the token file -------------------------------------------------------------------------


def test_created_token_is_stored_only_as_its_sha256_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    token, entry = create_token(path, frozenset({Role.SCORE}), "labeling-ui")
    text = path.read_text()
    assert token not in text
    assert token_digest(token).hex() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(text) == {
        "name": "labeling-ui",
        "sha256": token_digest(token).hex(),
        "roles": ["score"],
        "created_at": entry.created_at,
    }
    assert token.startswith("lw_") and len(token) == 46


def test_store_verifies_each_token_to_its_own_entry_and_nothing_else(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path / "t.jsonl")
    store = load_tokens(tokens.path)
    assert [store.verify(t).name for t in tokens.all()] == ["score-client", "watch-client", "ops"]  # type: ignore[union-attr]
    assert store.verify(FORGED) is None
    assert store.verify("") is None
    assert store.verify(tokens.score[:-1]) is None


def test_admin_role_allows_every_role_and_the_others_only_their_own(tmp_path: Path) -> None:
    store = load_tokens(make_tokens(tmp_path / "t.jsonl").path)
    allowed = {e.name: {r for r in Role if e.allows(r)} for e in store.entries}
    assert allowed == {
        "score-client": {Role.SCORE},
        "watch-client": {Role.WATCH},
        "ops": set(Role),
    }


GOOD = '{"name": "a", "sha256": "%s", "roles": ["score"]}' % ("ab" * 32)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 3: not valid JSON"),
        ('["a"]', "line 3: expected a JSON object"),
        (GOOD.replace('"score"', '"scor"'), "line 3: field 'roles': unknown role 'scor'"),
        (GOOD.replace('["score"]', "[]"), "line 3: field 'roles': give at least one role"),
        (GOOD.replace("ab" * 32, "ab" * 31), "line 3: field 'sha256': must be 64"),
        (GOOD.replace('"a"', '"bad name!"'), "line 3: field 'name'"),
        (GOOD.replace('"roles"', '"role"'), "line 3: unknown field(s) 'role'"),
        (GOOD.replace('"a"', '"b"'), "line 3: same sha256 as line 2"),
        (GOOD.replace("ab" * 32, "cd" * 32), "line 3: name 'a' is already used on line 2"),
    ],
)
def test_bad_token_file_lines_are_named_by_line(line: str, message: str) -> None:
    text = f"# tokens\n{GOOD}\n{line}\n"
    with pytest.raises(TokenFileError) as err:
        parse_token_lines(text, "tokens.jsonl")
    assert f"tokens.jsonl: {message}" in str(err.value)


def test_a_plain_token_in_the_file_is_refused_without_being_echoed() -> None:
    line = json.dumps({"name": "x", "token": FORGED, "roles": ["score"]})
    with pytest.raises(TokenFileError, match="plain tokens are not accepted") as err:
        parse_token_lines(line, "t.jsonl")
    assert FORGED not in str(err.value)


def test_a_token_file_without_tokens_stops_start_up(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("# nothing yet\n")
    artifact = write_artifact(tmp_path / "t.json")
    with pytest.raises(StartupError, match=r"--auth-tokens: token file .* holds no tokens"):
        with running_server(thresholds=artifact, auth_tokens=empty):
            pass


def test_create_refuses_a_name_already_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    create_token(path, frozenset({Role.SCORE}), "ui")
    with pytest.raises(TokenFileError, match="a token named 'ui' exists already"):
        create_token(path, frozenset({Role.WATCH}), "ui")
    assert len(load_tokens(path)) == 1


# --- method -> role, and the authorization header ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "role"),
    [
        ("/labelwatch.v1.LabelQuality/Score", Role.SCORE),
        ("/labelwatch.v1.LabelQuality/GetModelInfo", Role.SCORE),
        ("/labelwatch.v1.FlagFeed/WatchFlags", Role.WATCH),
        ("/labelwatch.v1.FlagFeed/AckFlags", Role.WATCH),
        ("/labelwatch.v1.Admin/Reload", Role.ADMIN),  # unknown services are closed
        ("/grpc.health.v1.Health/Check", None),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None),
    ],
)
def test_each_service_needs_its_role(method: str, role: Role | None) -> None:
    assert required_role(method) == role


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "missing"),
        ((("x-api-key", "abc"),), "missing"),
        ((("authorization", "Basic dXNlcjpwdw=="),), "malformed"),
        ((("authorization", "Bearer"),), "malformed"),
        ((("authorization", "Bearer a b"),), "malformed"),
        ((("authorization", "Bearer a"), ("authorization", "Bearer b")), "malformed"),
        ((("authorization", f"Bearer {FORGED}"),), "invalid"),
    ],
)
def test_bad_credentials_are_unauthenticated_with_a_reason(
    tmp_path: Path, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    store = load_tokens(make_tokens(tmp_path / "t.jsonl").path)
    decision = authorize(metadata, "/labelwatch.v1.LabelQuality/Score", store)
    assert (decision.code, decision.reason) == (UNAUTH, reason)
    assert FORGED not in decision.message


def test_scheme_is_case_insensitive(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path / "t.jsonl")
    store = TokenStore(load_tokens(tokens.path).entries)
    decision = authorize(
        (("authorization", f"bearer {tokens.score}"),), "/labelwatch.v1.LabelQuality/Score", store
    )
    assert decision.allowed and decision.entry is not None and decision.entry.name == "score-client"


# --- the CLI ------------------------------------------------------------------------------------


def test_token_create_prints_the_token_once_and_appends_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.jsonl"
    argv = ["token", "create", "--role", "score,watch", "--name", "ui", "--file", str(path)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert out == token + "\n" and token.startswith("lw_")
    assert token not in err and "'ui'" in err and "restart" in err
    entry = load_tokens(path).verify(token)
    assert entry is not None and entry.roles == {Role.SCORE, Role.WATCH}
    assert main(["token", "list", "--file", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("ui\tscore,watch\t") and token_digest(token).hex() not in out


def test_token_create_with_an_unknown_role_fails_with_the_roles_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.jsonl"
    assert main(["token", "create", "--role", "root", "--file", str(path)]) == 2
    _, err = capsys.readouterr()
    assert "unknown role 'root'; roles are score, watch, admin" in err
    assert not path.exists()


def test_token_file_defaults_to_the_serve_setting_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "from-env.jsonl"
    monkeypatch.setenv("LABELWATCH_AUTH_TOKENS", str(path))
    assert main(["token", "create", "--role", "admin"]) == 0
    token = capsys.readouterr().out.strip()
    assert load_tokens(path).verify(token) is not None


# --- a live server: every method, every credential ---------------------------------------------


@dataclass(frozen=True)
class Method:
    path: str  # /package.Service/Method
    client_streaming: bool
    server_streaming: bool


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return make_tokens(tmp_path_factory.mktemp("tokens") / "tokens.jsonl")


@pytest.fixture(scope="module")
def auth_server(
    tokens: Tokens, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    artifact = write_artifact(tmp_path_factory.mktemp("art") / "thresholds.json")
    with running_server(thresholds=artifact, auth_tokens=tokens.path) as server:
        yield server


@pytest.fixture(scope="module")
def methods(auth_server: RunningServer) -> list[Method]:
    """Every method the server offers, found through (open) reflection."""
    with grpc.insecure_channel(target_of(auth_server)) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(db)
        found = []
        for name in db.get_services():
            service = pool.FindServiceByName(name)
            for m in service.methods:
                found.append(Method(f"/{name}/{m.name}", m.client_streaming, m.server_streaming))
    return found


def _code(channel: grpc.Channel, method: Method, metadata: tuple[tuple[str, str], ...]) -> str:
    """Call ``method`` with an empty message; return the status name (OK if it answered).

    Streams that answer nothing within the timeout passed authentication: they report
    DEADLINE_EXCEEDED.
    """
    ident = {"request_serializer": None, "response_deserializer": None}
    try:
        if method.client_streaming and method.server_streaming:
            call = channel.stream_stream(method.path, **ident)
            responses = call(iter([b""]), metadata=metadata, timeout=2)
            next(responses, None)
            responses.cancel()
        elif method.server_streaming:
            responses = channel.unary_stream(method.path, **ident)(
                b"", metadata=metadata, timeout=2
            )
            next(responses, None)
            responses.cancel()
        elif method.client_streaming:
            channel.stream_unary(method.path, **ident)(iter([b""]), metadata=metadata, timeout=2)
        else:
            channel.unary_unary(method.path, **ident)(b"", metadata=metadata, timeout=2)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return str(exc.code().name)
    return "OK"


def test_every_method_demands_a_token_with_its_role(
    auth_server: RunningServer, tokens: Tokens, methods: list[Method]
) -> None:
    credentials = {
        "none": (),
        "forged": bearer(FORGED),
        "score": bearer(tokens.score),
        "watch": bearer(tokens.watch),
        "admin": bearer(tokens.admin),
    }
    guarded = [m for m in methods if required_role(m.path) is not None]
    assert {m.path for m in guarded} >= {
        "/labelwatch.v1.LabelQuality/Score",
        "/labelwatch.v1.LabelQuality/ScoreStream",
        "/labelwatch.v1.LabelQuality/GetModelInfo",
    }
    wrong: list[str] = []
    with grpc.insecure_channel(target_of(auth_server)) as channel:
        for method in guarded:
            role = required_role(method.path)
            assert role is not None
            for who, metadata in credentials.items():
                got = _code(channel, method, metadata)
                if who in ("none", "forged"):
                    want_ok = False
                    expected = {"UNAUTHENTICATED"}
                elif who == "admin" or who == role.value:
                    want_ok = True
                    expected = set()
                else:
                    want_ok = False
                    expected = {"PERMISSION_DENIED"}
                if want_ok and got in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                    wrong.append(f"{method.path} as {who}: {got}, expected to pass auth")
                if not want_ok and got not in expected:
                    wrong.append(f"{method.path} as {who}: {got}, expected {expected}")
    assert wrong == []


def test_health_and_reflection_stay_open_without_a_token(
    auth_server: RunningServer, methods: list[Method]
) -> None:
    assert {m.path.split("/")[1] for m in methods} >= {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }  # reflection answered the fixture without a token
    with grpc.insecure_channel(target_of(auth_server)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    for method in methods:
        if method.path.split("/")[1] in OPEN_SERVICES:
            assert required_role(method.path) is None


def test_typed_client_with_a_token_scores_and_without_one_is_told_why(
    auth_server: RunningServer, tokens: Tokens
) -> None:
    target = target_of(auth_server)
    with LabelwatchClient(target, token=tokens.score, timeout=5, max_retries=0) as client:
        assert client.model_info().class_names
    with LabelwatchClient(target, timeout=5, max_retries=0) as client:
        with pytest.raises(Unauthenticated, match="authorization: Bearer <token>"):
            client.model_info()
    with LabelwatchClient(target, token=tokens.watch, timeout=5, max_retries=0) as client:
        with pytest.raises(PermissionDenied) as err:
            client.model_info()
    assert "token 'watch-client' (roles: watch) lacks role 'score'" in err.value.details
    assert tokens.watch not in str(err.value)


def test_refused_calls_are_counted_by_reason_and_status_code(
    tokens: Tokens, tmp_path: Path
) -> None:
    artifact = write_artifact(tmp_path / "t.json")
    with running_server(thresholds=artifact, auth_tokens=tokens.path) as server:
        registry = server.metrics.registry
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            for metadata in [(), bearer(FORGED), bearer(FORGED), bearer(tokens.watch)]:
                with pytest.raises(grpc.RpcError):
                    stub.Score(score_request(), metadata=metadata, timeout=5)
            stub.Score(score_request(), metadata=bearer(tokens.score), timeout=5)

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        assert value("labelwatch_auth_failures_total", reason="missing") == 1
        assert value("labelwatch_auth_failures_total", reason="invalid") == 2
        assert value("labelwatch_auth_failures_total", reason="forbidden") == 1
        assert value("labelwatch_auth_failures_total", reason="malformed") == 0
        score = {"grpc_service": "labelwatch.v1.LabelQuality", "grpc_method": "Score"}
        score["grpc_type"] = "unary"
        assert value("grpc_server_handled_total", **score, grpc_code="UNAUTHENTICATED") == 3
        assert value("grpc_server_handled_total", **score, grpc_code="PERMISSION_DENIED") == 1
        assert value("grpc_server_handled_total", **score, grpc_code="OK") == 1
        exposition = generate_latest(registry).decode()
        for token in (*tokens.all(), FORGED):
            assert token not in exposition


def test_no_token_text_reaches_the_log_in_process(
    auth_server: RunningServer, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    presented = (*tokens.all(), FORGED, "Bearer-ish " + FORGED)
    with caplog.at_level(logging.DEBUG):
        with grpc.insecure_channel(target_of(auth_server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            for token in presented:
                try:
                    stub.Score(score_request(), metadata=bearer(token), timeout=5)
                except grpc.RpcError as exc:
                    assert isinstance(exc, grpc.Call)
                    assert token not in (exc.details() or "")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "event=auth_refused" in text
    for token in presented:
        assert token not in text
    assert FORGED[:12] not in text


def test_no_token_text_reaches_the_server_process_output(tokens: Tokens, tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "t.json")
    args = [
        "--thresholds",
        str(artifact),
        "--auth-tokens",
        str(tokens.path),
        "--log-level",
        "debug",
    ]
    with server_process(args) as proc:
        with grpc.insecure_channel(proc.target) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            for token in (*tokens.all(), FORGED):
                with contextlib.suppress(grpc.RpcError):
                    stub.Score(score_request(), metadata=bearer(token), timeout=10)
            bad = score_request()
            bad.examples[0].probabilities.values[0] = 7.0  # an error logged with details
            with pytest.raises(grpc.RpcError):
                stub.Score(bad, metadata=bearer(tokens.score), timeout=10)
        proc.process.send_signal(signal.SIGTERM)
        out, err = proc.process.communicate(timeout=30)
    assert proc.process.returncode == 0
    assert "event=auth_refused" in err and "token_name=watch-client" in err
    for token in (*tokens.all(), FORGED):
        assert token not in out and token not in err
