"""``labelwatch consume`` against a real nats-server on 127.0.0.1 (docs/ingestion.md).

Consumers run as child processes in thresholds-only mode (probabilities in),
so each test takes seconds. A missing nats-server skips (fails with CI=true).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support_ingest import (
    DEAD,
    DURABLE,
    RESULTS,
    STREAM,
    _ack_floor,
    _count,
    as_json,
    consumers,
    examples,
    expected_flags,
    outbox_flags,
    outputs,
    publish,
    publish_json,
    result_count,
    run_in_process,
    state,
)

from labelwatch.config import Settings
from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.engine import load_pipeline
from labelwatch.errors import OutboxUnavailable
from labelwatch.ingest import ConsumeOptions, StreamConsumer
from labelwatch.ingest_messages import PROTOBUF_CONTENT_TYPE
from labelwatch.metrics import Metrics
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from support_delivery import NatsServer, nats_server, wait_until
from support_server import CLASS_NAMES, write_artifact


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    with nats_server(tmp_path / "jetstream") as server:
        yield server


@pytest.fixture
def thresholds(tmp_path: Path) -> Path:
    return write_artifact(tmp_path / "thresholds.json")


# -- tests -----------------------------------------------------------------------------------


def test_each_example_gets_one_result_its_flags_reach_the_outbox_and_inputs_are_acked(
    nats: NatsServer, thresholds: Path, tmp_path: Path
) -> None:
    json_examples = examples(120, "j-")
    proto_examples = examples(30, "p-")
    outbox = tmp_path / "outbox.sqlite3"
    publish_json(nats.url, json_examples)
    publish(
        nats.url,
        [
            (ex.SerializeToString(), {"Content-Type": PROTOBUF_CONTENT_TYPE})
            for ex in proto_examples
        ],
    )
    with consumers(nats, thresholds, outbox) as (consumer,):
        wait_until(lambda: result_count(nats.url) >= 150, 30, "150 results")
        wait_until(lambda: state(nats.url)["stream_messages"] == 0, 10, "inputs acked")
        assert consumer.terminate() == 0
    results = outputs(nats.url, RESULTS)
    assert len(results) == 150
    assert len({r.msg_id for r in results}) == 150
    assert all(r.msg_id == f"{STREAM}-{r.body['input']['sequence']}" for r in results)
    by_id = {r.body["id"]: r.body for r in results}
    everything = json_examples + proto_examples
    assert set(by_id) == {ex.id for ex in everything}
    assert {i for i, b in by_id.items() if b.get("is_issue")} == {
        ex.id for ex in everything if ex.id.split("-", 1)[1].startswith("flagged")
    }
    assert outbox_flags(outbox) == expected_flags(thresholds, everything)
    final = state(nats.url)
    assert final["pending"] == 0 and final["ack_pending"] == 0
    assert final["redelivered"] == 0
    assert outputs(nats.url, DEAD) == []


def test_malformed_messages_are_dead_lettered_with_their_reason_and_not_redelivered(
    nats: NatsServer, thresholds: Path, tmp_path: Path
) -> None:
    unknown_label = pb.Example(
        id="bad-label",
        probabilities=pb.Probabilities(values=[0.5] * len(CLASS_NAMES)),
        labels=["unicorn"],
    )
    good = examples(1, "ok-")
    publish(
        nats.url,
        [
            (b'{"id": "broken", "probabilities": [0.1,', None),
            (as_json(unknown_label), None),
            (b"\xff\x00not a protobuf", {"Content-Type": PROTOBUF_CONTENT_TYPE}),
            (as_json(good[0]), None),
        ],
    )
    with consumers(
        nats, thresholds, tmp_path / "outbox.sqlite3", extra=["--ack-wait-seconds", "1"]
    ) as (consumer,):
        wait_until(lambda: asyncio.run(_count(nats.url, DEAD)) >= 3, 20, "3 dead letters")
        wait_until(lambda: result_count(nats.url) >= 1, 10, "the good example's result")
        # a work-queue stream deletes what is acked: once empty, nothing can come back
        wait_until(lambda: state(nats.url)["stream_messages"] == 0, 10, "every input acked")
        assert consumer.terminate() == 0
    dead = outputs(nats.url, DEAD)
    assert len(dead) == 3
    reasons = sorted(d.body["reason"] for d in dead)
    assert any("not valid JSON" in r for r in reasons), reasons
    assert any("example 'bad-label'" in r and "unknown class name 'unicorn'" in r for r in reasons)
    assert any("not a valid labelwatch.v1.Example" in r for r in reasons), reasons
    assert all(d.headers["Labelwatch-Dead-Letter-Reason"] == d.body["reason"] for d in dead)
    broken = next(d for d in dead if "not valid JSON" in d.body["reason"])
    assert base64.b64decode(broken.body["data_base64"]).startswith(b'{"id": "broken"')
    final = state(nats.url)
    assert final == {"pending": 0, "ack_pending": 0, "redelivered": 0, "stream_messages": 0}
    assert [r.body["id"] for r in outputs(nats.url, RESULTS)] == ["ok-flagged-0"]


@pytest.mark.slow
def test_two_processes_on_one_durable_share_the_work_without_loss_or_duplicates(
    nats: NatsServer, thresholds: Path, tmp_path: Path
) -> None:
    n = 3000
    exs = examples(n, "s-")
    outbox = tmp_path / "outbox.sqlite3"
    with consumers(nats, thresholds, outbox, n=2, extra=["--batch", "16"]) as pair:
        publish_json(nats.url, exs)
        wait_until(lambda: result_count(nats.url) >= n, 60, f"{n} results", interval=0.5)
        assert [c.terminate() for c in pair] == [0, 0]
    results = outputs(nats.url, RESULTS)
    assert len(results) == n
    assert sorted(r.body["id"] for r in results) == sorted(ex.id for ex in exs)
    shares = [c.processed() for c in pair]
    assert sum(shares) == n and min(shares) > 0, shares
    assert outbox_flags(outbox) == expected_flags(thresholds, exs)
    assert state(nats.url)["stream_messages"] == 0


@pytest.mark.slow
def test_sigterm_finishes_and_acks_what_is_in_hand_and_leaves_the_rest(
    nats: NatsServer, thresholds: Path, tmp_path: Path
) -> None:
    n = 6000
    exs = examples(n, "d-")
    outbox = tmp_path / "outbox.sqlite3"
    publish_json(nats.url, exs)
    with consumers(nats, thresholds, outbox, extra=["--batch", "8"]) as (first,):
        wait_until(lambda: result_count(nats.url) >= 1, 20, "the first result", interval=0.02)
        assert first.terminate() == 0
    assert "event=shutdown_requested signal=SIGTERM" in first.log()
    done = first.processed()
    after = state(nats.url)
    assert 0 < done < n, "the test needs the consumer stopped midway"
    assert after["ack_pending"] == 0  # nothing fetched was left unacked
    assert after["redelivered"] == 0
    assert result_count(nats.url) == done
    assert after["stream_messages"] == n - done  # the rest waits for the others
    with consumers(nats, thresholds, outbox) as (second,):
        wait_until(lambda: result_count(nats.url) >= n, 60, f"{n} results", interval=0.5)
        assert second.terminate() == 0
    assert second.processed() == n - done
    results = outputs(nats.url, RESULTS)
    assert sorted(r.body["id"] for r in results) == sorted(ex.id for ex in exs)


@pytest.mark.slow
def test_killed_consumer_loses_nothing_and_a_restart_resumes_from_the_ack_floor(
    nats: NatsServer, thresholds: Path, tmp_path: Path
) -> None:
    n = 10_000
    exs = examples(n, "k-")
    outbox = tmp_path / "outbox.sqlite3"
    extra = ["--batch", "32", "--max-inflight", "128", "--ack-wait-seconds", "2"]
    with consumers(nats, thresholds, outbox, n=3, extra=extra) as trio:
        publish_json(nats.url, exs)
        wait_until(lambda: result_count(nats.url) >= n // 5, 60, "a fifth of the results")
        trio[0].process.send_signal(signal.SIGKILL)  # whatever it held comes back after ack_wait
        trio[0].process.wait(10)
        assert result_count(nats.url) < n, "the test needs the kill to happen midway"
        wait_until(lambda: result_count(nats.url) >= n, 60, f"{n} results", interval=0.5)
        wait_until(lambda: state(nats.url)["stream_messages"] == 0, 20, "every input acked")
        assert [c.terminate() for c in trio[1:]] == [0, 0]
    results = outputs(nats.url, RESULTS)
    assert len(results) == n  # a re-scored redelivery's result was dropped as a duplicate
    assert sorted(r.body["id"] for r in results) == sorted(ex.id for ex in exs)
    assert outbox_flags(outbox) == expected_flags(thresholds, exs)

    floor = asyncio.run(_ack_floor(nats.url))
    more = examples(500, "late-")
    publish_json(nats.url, more)  # the stream grew while no consumer ran
    assert asyncio.run(_ack_floor(nats.url)) == floor  # JetStream kept the durable's position
    with consumers(nats, thresholds, outbox) as (restarted,):
        wait_until(lambda: result_count(nats.url) >= n + 500, 30, "the new results")
        assert restarted.terminate() == 0
    assert restarted.processed() == 500  # only what was past the ack floor
    late = [r for r in outputs(nats.url, RESULTS) if r.body["input"]["sequence"] > floor]
    assert sorted(r.body["id"] for r in late) == sorted(ex.id for ex in more)
    assert len(outputs(nats.url, RESULTS)) == n + 500


def test_transient_scoring_failure_naks_and_the_redelivery_is_scored_and_counted(
    nats: NatsServer, thresholds: Path
) -> None:
    registry = CollectorRegistry()
    pipeline = load_pipeline(Settings(thresholds=thresholds), Metrics(registry))
    calls: list[int] = []

    def flaky(batch: Sequence[LabeledExample]) -> ScoredBatch:
        calls.append(len(batch))
        if len(calls) == 1:
            raise OutboxUnavailable("the flag outbox is not writable")
        return pipeline.score(batch)

    options = ConsumeOptions(
        url=nats.url,
        stream=STREAM,
        subject="examples.>",
        durable=DURABLE,
        nak_delay_seconds=0.3,
        fetch_timeout_seconds=0.2,
    )
    publish_json(nats.url, examples(5, "t-"))
    consumer = run_in_process(
        options, flaky, pipeline.spec, registry, lambda c: c.stats.processed >= 5
    )
    assert consumer.stats.processed == 5
    assert consumer.stats.naked == calls[0] > 0
    assert len(calls) >= 2
    sample = registry.get_sample_value
    assert sample("labelwatch_ingest_nak_messages_total") == calls[0]
    assert sample("labelwatch_ingest_processed_messages_total") == 5
    assert sample("labelwatch_ingest_end_to_end_seconds_count") == 5
    assert sample("labelwatch_ingest_batch_size_sum") == sum(calls)
    assert sample("labelwatch_ingest_in_flight_messages") == 0
    assert sample("labelwatch_ingest_pending_messages") is not None
    assert sorted(r.body["id"] for r in outputs(nats.url, RESULTS)) == sorted(
        ex.id for ex in examples(5, "t-")
    )
    assert state(nats.url)["stream_messages"] == 0


def test_text_examples_are_scored_by_the_default_model_and_features_are_dead_lettered(
    nats: NatsServer, tmp_path: Path
) -> None:
    text = {
        "id": "pkg-1",
        "text": "command-line tool to compress and extract zip archives",
        "labels": ["role::documentation"],
    }
    wrong_kind = {"id": "pkg-2", "features": [0.1, 0.2], "labels": []}
    publish(nats.url, [(json.dumps(text).encode(), None), (json.dumps(wrong_kind).encode(), None)])
    with consumers(nats, None, tmp_path / "outbox.sqlite3") as (consumer,):
        wait_until(lambda: result_count(nats.url) >= 1, 30, "the text example's result")
        wait_until(lambda: asyncio.run(_count(nats.url, DEAD)) >= 1, 10, "the dead letter")
        assert consumer.terminate() == 0
    (result,) = outputs(nats.url, RESULTS)
    assert result.body["id"] == "pkg-1"
    assert 0.0 <= result.body["label_quality"] <= 1.0
    assert result.body["model_version"]
    (dead,) = outputs(nats.url, DEAD)
    assert "example 'pkg-2'" in dead.body["reason"]
    assert "field 'features'" in dead.body["reason"]


def test_a_message_that_fails_to_score_on_every_delivery_is_dead_lettered_alone(
    nats: NatsServer, thresholds: Path
) -> None:
    registry = CollectorRegistry()
    pipeline = load_pipeline(Settings(thresholds=thresholds), Metrics(registry))
    exs = examples(6, "x-")
    poison = exs[2].id

    def crashes_on_poison(batch: Sequence[LabeledExample]) -> ScoredBatch:
        if any(ex.id == poison for ex in batch):
            raise RuntimeError("model crashed")
        return pipeline.score(batch)

    options = ConsumeOptions(
        url=nats.url,
        stream=STREAM,
        subject="examples.>",
        durable=DURABLE,
        nak_delay_seconds=0.1,
        fetch_timeout_seconds=0.2,
        max_deliveries=3,
    )
    publish_json(nats.url, exs)
    consumer = run_in_process(
        options,
        crashes_on_poison,
        pipeline.spec,
        registry,
        lambda c: c.stats.processed + c.stats.dead_lettered >= 6,
    )
    assert (consumer.stats.processed, consumer.stats.dead_lettered) == (5, 1)
    assert consumer.stats.naked == 2  # deliveries 1 and 2 of the poison message
    (dead,) = outputs(nats.url, DEAD)
    assert dead.body["reason"] == (
        f"example {poison!r}: scoring failed on each of 3 deliveries; "
        "last error: RuntimeError: model crashed"
    )
    assert sorted(r.body["id"] for r in outputs(nats.url, RESULTS)) == sorted(
        ex.id for ex in exs if ex.id != poison
    )
    sample = registry.get_sample_value
    assert sample("labelwatch_ingest_dead_lettered_messages_total", {"reason": "scoring_failed"})
    assert state(nats.url)["stream_messages"] == 0


def test_a_slow_model_holds_fetching_to_max_inflight_and_the_lag_is_reported(
    nats: NatsServer, thresholds: Path
) -> None:
    registry = CollectorRegistry()
    pipeline = load_pipeline(Settings(thresholds=thresholds), Metrics(registry))
    release = threading.Event()

    def slow(batch: Sequence[LabeledExample]) -> ScoredBatch:
        release.wait(20)
        return pipeline.score(batch)

    options = ConsumeOptions(
        url=nats.url,
        stream=STREAM,
        subject="examples.>",
        durable=DURABLE,
        batch=2,
        max_inflight=2,
        fetch_timeout_seconds=0.2,
        lag_interval_seconds=0.05,
    )
    publish_json(nats.url, examples(10, "l-"))
    sample = registry.get_sample_value
    seen: list[tuple[float | None, ...]] = []

    def lag_seen(consumer: StreamConsumer) -> bool:
        if not release.is_set():
            now = (
                sample("labelwatch_ingest_pending_messages"),
                sample("labelwatch_ingest_ack_pending_messages"),
                sample("labelwatch_ingest_in_flight_messages"),
            )
            seen.append(now)
            if now == (8.0, 2.0, 2.0):  # 2 held by the slow model, 8 waiting in JetStream
                release.set()
        return consumer.stats.processed >= 10

    consumer = run_in_process(options, slow, pipeline.spec, registry, lag_seen)
    release.set()
    assert (8.0, 2.0, 2.0) in seen, seen[-5:]
    assert max(v[2] or 0 for v in seen) <= 2  # never more in hand than --max-inflight
    assert consumer.stats.processed == 10
    assert sample("labelwatch_ingest_in_flight_messages") == 0


def test_consume_help_offers_model_and_stream_flags_but_not_the_servers() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "labelwatch.cli", "consume", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    options = set(re.findall(r"^  (--[a-z-]+)", out, re.M))  # option lines, not wrapped help
    assert {"--nats", "--durable", "--model", "--thresholds", "--outbox"} <= options
    assert "--max-inflight" in options
    serve_only = {"--port", "--workers", "--threads", "--max-streams", "--tls-cert", "--http-port"}
    assert not options & serve_only
