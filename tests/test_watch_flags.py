"""WatchFlags / AckFlags against a real in-process server on 127.0.0.1."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from labelwatch.flag_record import dedupe_key
from labelwatch.server import RunningServer
from labelwatch_proto.labelwatch.v1 import flags_pb2 as fpb
from labelwatch_proto.labelwatch.v1 import flags_pb2_grpc as fpb_grpc
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_delivery import clean_example, flagged_example
from support_server import running_server, target_of, write_artifact


class Watch:
    """A WatchFlags stream read by a background thread, with timeouts."""

    def __init__(self, stub: fpb_grpc.FlagFeedStub, request: fpb.WatchFlagsRequest) -> None:
        self.call: Any = stub.WatchFlags(request)
        self._queue: queue.Queue[fpb.Flag | grpc.RpcError | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for flag in self.call:
                self._queue.put(flag)
        except grpc.RpcError as exc:
            self._queue.put(exc)
            return
        self._queue.put(None)

    def take(self, n: int, timeout: float = 10.0) -> list[fpb.Flag]:
        out: list[fpb.Flag] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            item = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(item, grpc.RpcError):
                raise item
            assert item is not None, "stream ended early"
            out.append(item)
        return out

    def nothing_within(self, seconds: float) -> bool:
        try:
            item = self._queue.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"expected nothing, got {item}")

    def error(self, timeout: float = 10.0) -> grpc.RpcError:
        deadline = time.monotonic() + timeout
        while True:
            item = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(item, grpc.RpcError):
                return item

    def close(self) -> None:
        self.call.cancel()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    artifact = write_artifact(tmp_path / "thresholds.json")
    with running_server(
        thresholds=artifact, outbox=tmp_path / "outbox.sqlite3", watch_ack_timeout_seconds=30.0
    ) as srv:
        yield srv


@pytest.fixture
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target_of(server)) as ch:
        yield ch


def score(channel: grpc.Channel, examples: list[pb.Example]) -> pb.ScoreResponse:
    response: pb.ScoreResponse = pb_grpc.LabelQualityStub(channel).Score(
        pb.ScoreRequest(examples=examples)
    )
    return response


def watch(channel: grpc.Channel, consumer: str, **fields: Any) -> Watch:
    return Watch(fpb_grpc.FlagFeedStub(channel), fpb.WatchFlagsRequest(consumer=consumer, **fields))


def ack(channel: grpc.Channel, consumer: str, **fields: Any) -> fpb.AckFlagsResponse:
    response: fpb.AckFlagsResponse = fpb_grpc.FlagFeedStub(channel).AckFlags(
        fpb.AckFlagsRequest(consumer=consumer, **fields)
    )
    return response


def test_watch_sends_stored_flags_then_new_ones_as_they_are_scored(channel: grpc.Channel) -> None:
    score(channel, [flagged_example(i) for i in range(3)] + [clean_example(0)])
    w = watch(channel, "ui")
    first = w.take(3)
    assert [f.example_id for f in first] == ["flagged-0", "flagged-1", "flagged-2"]
    assert [f.position for f in first] == sorted(f.position for f in first)
    score(channel, [flagged_example(3)])
    (later,) = w.take(1)
    assert later.example_id == "flagged-3" and not later.redelivered
    w.close()


def test_a_flag_carries_what_the_score_result_reported(channel: grpc.Channel) -> None:
    example = flagged_example(7, annotator="alice")
    (result,) = score(channel, [example]).results
    w = watch(channel, "ui")
    (flag,) = w.take(1)
    w.close()
    assert flag.flag_id == dedupe_key(example.id, result.model_version, list(example.labels))
    assert list(flag.labels) == list(example.labels)
    assert [(i.label, i.kind, i.probability) for i in flag.issues] == [
        (i.label, i.kind, i.probability) for i in result.issues
    ]
    assert list(flag.suggested_labels) == list(result.suggested_labels)
    assert flag.label_quality == pytest.approx(result.label_quality)
    assert flag.model_version == result.model_version
    assert flag.annotator_id == "alice"
    assert dict(flag.metadata) == {"source": "tests", "n": "7"}
    assert flag.input_kind == "probabilities" and flag.text == ""
    assert abs(flag.flagged_at.ToSeconds() - time.time()) < 60


def test_scoring_the_same_example_twice_yields_one_flag(channel: grpc.Channel) -> None:
    score(channel, [flagged_example(1)])
    score(channel, [flagged_example(1), flagged_example(2)])
    w = watch(channel, "ui")
    assert [f.example_id for f in w.take(2)] == ["flagged-1", "flagged-2"]
    assert w.nothing_within(0.5)
    w.close()


def test_a_consumer_that_disconnects_without_acking_gets_the_same_flags_again(
    channel: grpc.Channel,
) -> None:
    score(channel, [flagged_example(i) for i in range(4)])
    w = watch(channel, "reviewer")
    first = [f.flag_id for f in w.take(4)]
    w.close()
    w = watch(channel, "reviewer")
    assert [f.flag_id for f in w.take(4)] == first
    w.close()


def test_a_consumer_that_acked_resumes_after_what_it_acked(channel: grpc.Channel) -> None:
    score(channel, [flagged_example(i) for i in range(4)])
    w = watch(channel, "reviewer")
    got = w.take(4)
    assert ack(channel, "reviewer", up_to=got[1].position).cursor == got[1].position
    w.close()
    w = watch(channel, "reviewer")
    assert [f.example_id for f in w.take(2)] == ["flagged-2", "flagged-3"]
    assert w.nothing_within(0.5)
    w.close()


def test_acking_by_flag_id_skips_exactly_those_flags(channel: grpc.Channel) -> None:
    score(channel, [flagged_example(i) for i in range(4)])
    w = watch(channel, "reviewer")
    got = w.take(4)
    w.close()
    answer = ack(channel, "reviewer", flag_ids=[got[0].flag_id, got[2].flag_id, "f" * 64])
    assert answer.cursor == got[0].position
    assert list(answer.unknown_flag_ids) == ["f" * 64]
    w = watch(channel, "reviewer")
    assert [f.example_id for f in w.take(2)] == ["flagged-1", "flagged-3"]
    w.close()


def test_an_unacked_flag_is_resent_on_the_same_stream_after_the_ack_timeout(
    channel: grpc.Channel,
) -> None:
    score(channel, [flagged_example(i) for i in range(2)])
    w = watch(channel, "slow", ack_timeout_seconds=0.5)
    first = w.take(2)
    ack(channel, "slow", flag_ids=[first[0].flag_id])
    (again,) = w.take(1, timeout=5)
    assert again.flag_id == first[1].flag_id and again.redelivered
    ack(channel, "slow", up_to=again.position)
    assert w.nothing_within(1.2)
    w.close()


def test_every_consumer_sees_every_flag(channel: grpc.Channel) -> None:
    score(channel, [flagged_example(i) for i in range(3)])
    a, b = watch(channel, "a"), watch(channel, "b")
    ids_a = [f.flag_id for f in a.take(3)]
    ack(channel, "a", up_to=10**9)
    assert [f.flag_id for f in b.take(3)] == ids_a
    a.close()
    b.close()


def test_filters_select_by_class_kind_quality_and_annotator(channel: grpc.Channel) -> None:
    examples = [flagged_example(i, annotator="bob" if i % 2 else "amy") for i in range(10)]
    results = score(channel, examples).results
    w = watch(
        channel,
        "filtered",
        classes=["cat"],
        kinds=[pb.ISSUE_KIND_MISSING],
        annotator_ids=["amy"],
        max_label_quality=1.0,
    )
    expected = [
        r.id
        for r, ex in zip(results, examples, strict=True)
        if ex.annotator_id == "amy"
        and any(i.label == "cat" and i.kind == pb.ISSUE_KIND_MISSING for i in r.issues)
    ]
    assert expected  # flagged-0 and flagged-5 would do; the data must exercise the filter
    assert [f.example_id for f in w.take(len(expected))] == expected
    assert w.nothing_within(0.5)
    w.close()
    low = min(r.label_quality for r in results)
    w = watch(channel, "strict", max_label_quality=low)
    assert all(f.label_quality <= low for f in w.take(1))
    w.close()


def test_a_new_consumer_can_replay_from_a_position_or_a_time(channel: grpc.Channel) -> None:
    score(channel, [flagged_example(i) for i in range(3)])
    cut = time.time()
    time.sleep(0.05)
    score(channel, [flagged_example(i) for i in range(3, 5)])
    w = watch(channel, "everything")
    stored = w.take(5)
    w.close()
    w = watch(channel, "from-pos", start_position=stored[3].position)
    assert [f.example_id for f in w.take(2)] == ["flagged-3", "flagged-4"]
    w.close()
    at = Timestamp()
    at.FromNanoseconds(int(cut * 1e9))
    w = watch(channel, "from-time", start_time=at)
    assert [f.example_id for f in w.take(2)] == ["flagged-3", "flagged-4"]
    assert w.nothing_within(0.3)
    w.close()


def test_a_newer_stream_for_the_same_consumer_takes_over(channel: grpc.Channel) -> None:
    score(channel, [flagged_example(0)])
    old = watch(channel, "dup")
    old.take(1)
    new = watch(channel, "dup")
    assert new.take(1)[0].example_id == "flagged-0"
    err = old.error()
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "took over" in (err.details() or "")
    new.close()


def test_bad_requests_get_invalid_argument_or_failed_precondition(channel: grpc.Channel) -> None:
    stub = fpb_grpc.FlagFeedStub(channel)
    with pytest.raises(grpc.RpcError) as bad_name:
        list(stub.WatchFlags(fpb.WatchFlagsRequest(consumer="no spaces!")))
    assert bad_name.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "consumer" in (bad_name.value.details() or "")
    with pytest.raises(grpc.RpcError) as unknown:
        ack(channel, "never-watched", up_to=1)
    assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as empty:
        ack(channel, "x", up_to=0)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_flag_feed_is_in_reflection_and_health(channel: grpc.Channel) -> None:
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "labelwatch.v1.FlagFeed" in services
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="labelwatch.v1.FlagFeed"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_a_server_with_an_open_watch_stream_stops_promptly(tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "t.json")
    with running_server(thresholds=artifact, outbox=tmp_path / "o.sqlite3") as srv:
        ch = grpc.insecure_channel(target_of(srv))
        w = watch(ch, "idle")
        assert w.nothing_within(0.3)
        # a grace far longer than the wait below: stop() must end the watch stream itself
        # rather than wait for the grace to run out
        stopper = threading.Thread(target=srv.stop, args=(3600.0,), daemon=True)
        stopper.start()
        stopper.join(60)
        assert not stopper.is_alive(), "stop() is waiting out the grace for an idle watch stream"
        w.close()
        ch.close()


def test_watch_streams_are_capped_so_scoring_keeps_its_threads(tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "t.json")
    with running_server(thresholds=artifact, outbox=tmp_path / "o.sqlite3", threads=4) as srv:
        with grpc.insecure_channel(target_of(srv)) as ch:
            a, b = watch(ch, "a"), watch(ch, "b")
            assert a.nothing_within(0.2) and b.nothing_within(0.01)
            err = watch(ch, "c").error()
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--threads" in (err.details() or "")
            (result,) = score(ch, [flagged_example(0)]).results  # scoring still has threads
            assert result.is_issue
            a.close()
            b.close()
