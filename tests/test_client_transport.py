"""Client transport behaviour against a scripted in-process fake server.

Retries, deadlines, the bearer token and stream resends, which the real server
cannot be made to exercise on demand. Needs only grpcio and the generated stubs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from labelwatch_client import (
    AsyncLabelwatchClient,
    DeadlineExceeded,
    Example,
    InvalidArgument,
    LabelwatchClient,
    Unavailable,
)
from labelwatch_client.client import _RequestFeed
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc

Failure = tuple[grpc.StatusCode, str]


@dataclass
class Script:
    """What the fake does: fail the first calls, then answer (echoing ids)."""

    unary_failures: list[Failure] = field(default_factory=list)
    # per stream call: (responses to send before failing, failure) or None to serve all
    stream_plan: list[tuple[int, Failure] | None] = field(default_factory=list)
    # Score holds its answer until ``release`` is set (when ``hold`` is true)
    hold: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    calls: list[str] = field(default_factory=list)
    tokens: list[str | None] = field(default_factory=list)
    stream_requests: list[list[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _token(context: grpc.ServicerContext) -> str | None:
    return dict(context.invocation_metadata()).get("authorization")  # type: ignore[return-value]


def _echo(request: pb.ScoreRequest) -> pb.ScoreResponse:
    return pb.ScoreResponse(
        results=[pb.ScoreResult(id=e.id, label_quality=1.0) for e in request.examples]
    )


class FakeServicer(pb_grpc.LabelQualityServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def _enter(self, method: str, context: grpc.ServicerContext) -> Failure | None:
        with self.script.lock:
            self.script.calls.append(method)
            self.script.tokens.append(_token(context))
            failures = self.script.unary_failures
            return failures.pop(0) if failures and method != "ScoreStream" else None

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        failure = self._enter("Score", context)
        if failure:
            context.abort(*failure)
        if self.script.hold:
            self.script.release.wait(60)
        return _echo(request)

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfo:
        failure = self._enter("GetModelInfo", context)
        if failure:
            context.abort(*failure)
        return pb.ModelInfo(name="fake", class_names=["cat"])

    def ScoreStream(
        self, request_iterator: Iterator[pb.ScoreRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ScoreResponse]:
        self._enter("ScoreStream", context)
        with self.script.lock:
            plan = self.script.stream_plan.pop(0) if self.script.stream_plan else None
            seen: list[str] = []
            self.script.stream_requests.append(seen)
        for sent, request in enumerate(request_iterator):
            seen.extend(e.id for e in request.examples)
            if plan is not None and sent == plan[0]:
                context.abort(*plan[1])
            yield _echo(request)


@pytest.fixture
def fake() -> Iterator[tuple[str, Script]]:
    script = Script()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_LabelQualityServicer_to_server(FakeServicer(script), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", script
    finally:
        server.stop(0)


UNAVAILABLE: Failure = (grpc.StatusCode.UNAVAILABLE, "draining")
EXAMPLE = Example("a", probabilities=[0.5])


def batches(n: int) -> list[list[Example]]:
    return [[Example(f"b{i}", probabilities=[0.5])] for i in range(n)]


def client(target: str, **kwargs: object) -> LabelwatchClient:
    return LabelwatchClient(target, backoff_seconds=0.01, **kwargs)  # type: ignore[arg-type]


def test_token_is_sent_as_bearer_on_every_call(fake: tuple[str, Script]) -> None:
    target, script = fake
    with client(target, token="s3cret") as c:
        c.score([EXAMPLE])
        c.model_info()
        list(c.score_stream(batches(1)))
    assert script.tokens == ["Bearer s3cret"] * 3


def test_no_authorization_header_without_a_token(fake: tuple[str, Script]) -> None:
    target, script = fake
    with client(target) as c:
        c.score([EXAMPLE])
    assert script.tokens == [None]


def test_unary_call_is_retried_on_unavailable(fake: tuple[str, Script]) -> None:
    target, script = fake
    script.unary_failures = [UNAVAILABLE, UNAVAILABLE]
    with client(target, max_retries=3) as c:
        assert [r.id for r in c.score([EXAMPLE])] == ["a"]
        assert c.model_info().name == "fake"
    assert script.calls == ["Score", "Score", "Score", "GetModelInfo"]


def test_unary_call_gives_up_after_max_retries(fake: tuple[str, Script]) -> None:
    target, script = fake
    script.unary_failures = [UNAVAILABLE] * 5
    with client(target, max_retries=2) as c, pytest.raises(Unavailable) as info:
        c.score([EXAMPLE])
    assert len(script.calls) == 3
    assert info.value.details == "draining"


def test_invalid_argument_is_not_retried_and_keeps_the_servers_message(
    fake: tuple[str, Script],
) -> None:
    target, script = fake
    script.unary_failures = [(grpc.StatusCode.INVALID_ARGUMENT, "example 'a': field 'id'")]
    with client(target) as c, pytest.raises(InvalidArgument) as info:
        c.score([EXAMPLE])
    assert script.calls == ["Score"]
    assert info.value.details == "example 'a': field 'id'"


def test_timeout_gives_deadline_exceeded(fake: tuple[str, Script]) -> None:
    target, script = fake
    script.hold = True  # the server never answers until released
    try:
        with client(target, timeout=0.2) as c, pytest.raises(DeadlineExceeded):
            c.score([EXAMPLE])
        # the client gave up on its own deadline, while the answer was still held back
        assert not script.release.is_set()
    finally:
        script.release.set()


def test_empty_score_makes_no_call(fake: tuple[str, Script]) -> None:
    target, script = fake
    with client(target) as c:
        assert c.score([]) == []
    assert script.calls == []


def test_stream_answers_each_batch_in_order(fake: tuple[str, Script]) -> None:
    target, _ = fake
    with client(target) as c:
        out = list(c.score_stream(iter(batches(5))))
    assert [[r.id for r in results] for results in out] == [[f"b{i}"] for i in range(5)]


def test_stream_failing_before_the_first_response_is_retried_and_resends(
    fake: tuple[str, Script],
) -> None:
    target, script = fake
    script.stream_plan = [(0, UNAVAILABLE)]
    with client(target) as c:
        out = list(c.score_stream(iter(batches(3))))
    assert [results[0].id for results in out] == ["b0", "b1", "b2"]
    assert script.calls == ["ScoreStream", "ScoreStream"]
    assert script.stream_requests[1] == ["b0", "b1", "b2"]


def test_stream_failing_after_a_response_is_raised_not_retried(fake: tuple[str, Script]) -> None:
    target, script = fake
    script.stream_plan = [(1, UNAVAILABLE)]
    got: list[str] = []
    with client(target) as c, pytest.raises(Unavailable):
        for results in c.score_stream(iter(batches(3))):
            got.extend(r.id for r in results)
    assert got == ["b0"]
    assert script.calls == ["ScoreStream"]


def test_stream_reports_the_servers_status_and_message(fake: tuple[str, Script]) -> None:
    target, script = fake
    failure = (grpc.StatusCode.INVALID_ARGUMENT, "example 'b1': field 'id'")
    with client(target) as c:
        for _ in range(10):  # requests are pipelined: the abort races later writes
            script.stream_plan = [(1, failure)]
            with pytest.raises(InvalidArgument, match="example 'b1'"):
                list(c.score_stream(batches(20)))


def test_error_in_the_callers_batches_is_raised_after_earlier_results(
    fake: tuple[str, Script],
) -> None:
    target, _ = fake

    def source() -> Iterator[list[Example]]:
        yield [Example("b0", probabilities=[0.5])]
        raise RuntimeError("source broke")

    got: list[str] = []
    with client(target) as c, pytest.raises(RuntimeError, match="source broke"):
        for results in c.score_stream(source()):
            got.extend(r.id for r in results)
    assert got == ["b0"]


def test_request_feed_resends_the_unanswered_request_then_continues() -> None:
    feed = _RequestFeed(iter(batches(3)), include_probabilities=False)
    first = feed.requests()
    assert next(first).examples[0].id == "b0"
    feed.restart()  # the attempt failed before any answer
    assert list(first) == []  # the old attempt pulls nothing more
    second = feed.requests()
    assert next(second).examples[0].id == "b0"  # resent
    feed.mark_answered()  # from the first answer on, requests are pipelined
    assert [r.examples[0].id for r in second] == ["b1", "b2"]


def run(body: Callable[[], Coroutine[None, None, None]]) -> None:
    asyncio.run(body())


def test_async_client_retries_sends_the_token_and_streams(fake: tuple[str, Script]) -> None:
    target, script = fake
    script.unary_failures = [UNAVAILABLE]
    script.stream_plan = [(0, UNAVAILABLE)]

    async def body() -> None:
        async with AsyncLabelwatchClient(target, token="t", backoff_seconds=0.01) as c:
            assert [r.id for r in await c.score([EXAMPLE])] == ["a"]

            async def source() -> AsyncIterator[list[Example]]:
                for batch in batches(3):
                    yield batch

            got = [results[0].id async for results in c.score_stream(source())]
            assert got == ["b0", "b1", "b2"]

    run(body)
    assert script.calls == ["Score", "Score", "ScoreStream", "ScoreStream"]
    assert set(script.tokens) == {"Bearer t"}


def test_async_client_raises_the_status_subclass(fake: tuple[str, Script]) -> None:
    target, script = fake
    script.unary_failures = [(grpc.StatusCode.INVALID_ARGUMENT, "bad id")]

    async def body() -> None:
        async with AsyncLabelwatchClient(target) as c:
            with pytest.raises(InvalidArgument, match="bad id"):
                await c.model_info()

    run(body)


def test_async_stream_reports_the_servers_status_not_internal(fake: tuple[str, Script]) -> None:
    target, script = fake
    script.stream_plan = [(1, (grpc.StatusCode.INVALID_ARGUMENT, "example 'b1': field 'id'"))]

    async def body() -> None:
        got: list[str] = []
        async with AsyncLabelwatchClient(target) as c:
            with pytest.raises(InvalidArgument, match="example 'b1'"):
                async for results in c.score_stream(batches(3)):
                    got.extend(r.id for r in results)
        assert got == ["b0"]

    for _ in range(10):  # the race this guards against (grpc/grpc#36066) is intermittent
        run(body)
        script.stream_plan = [(1, (grpc.StatusCode.INVALID_ARGUMENT, "example 'b1': field 'id'"))]


def test_async_stream_raises_the_callers_error_after_earlier_results(
    fake: tuple[str, Script],
) -> None:
    target, _ = fake

    async def source() -> AsyncIterator[list[Example]]:
        yield [Example("b0", probabilities=[0.5])]
        raise RuntimeError("source broke")

    async def body() -> None:
        got: list[str] = []
        async with AsyncLabelwatchClient(target) as c:
            with pytest.raises(RuntimeError, match="source broke"):
                async for results in c.score_stream(source()):
                    got.extend(r.id for r in results)
        assert got == ["b0"]

    run(body)
