"""The webhook sink and its worker against a real local HTTP server."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from labelwatch.metrics import DeliveryMetrics
from labelwatch.outbox import Outbox
from labelwatch.sinks.base import RetryPolicy, SinkWorker
from labelwatch.sinks.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSink, verify
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_delivery import (
    WebhookReceiver,
    flagged_example,
    make_flag,
    wait_until,
    webhook_receiver,
)
from support_server import running_server, target_of, write_artifact

SECRET = b"test-secret"
FAST = RetryPolicy(max_attempts=3, initial_seconds=0.01, max_seconds=0.05)


class Harness:
    """An outbox, metrics and a started worker for one webhook sink."""

    def __init__(self, tmp: Path, url: str, *, policy: RetryPolicy = FAST, timeout: float = 5.0):
        self.registry = CollectorRegistry()
        self.metrics = DeliveryMetrics(self.registry)
        self.outbox = Outbox(tmp / "outbox.sqlite3")
        self.metrics.track(self.outbox, ["webhook"])
        sink = WebhookSink(url, secret=SECRET, max_batch=10, timeout_seconds=timeout)
        self.worker = SinkWorker(
            sink, self.outbox, self.metrics, policy=policy, rng=random.Random(0), poll_seconds=0.2
        )
        self.worker.start()

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def pending(self) -> float:
        return self.sample("labelwatch_outbox_pending", sink="webhook")

    def stop(self) -> None:
        self.worker.stop(5.0)
        self.outbox.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as r:
        yield r


def test_batches_are_signed_with_hmac_sha256_over_timestamp_and_body(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    h = Harness(tmp_path, receiver.url)
    flags = [make_flag(i) for i in range(25)]
    h.outbox.write(flags)
    wait_until(lambda: len(receiver.flag_ids()) == 25, 10, "25 flags at the webhook")
    h.stop()
    assert receiver.flag_ids() == [f.flag_id for f in flags]
    for request in receiver.received:
        assert len(request.flags) <= 10
        headers = {k.lower(): v for k, v in request.headers.items()}
        timestamp = headers[TIMESTAMP_HEADER.lower()]
        assert verify(SECRET, timestamp, request.body, headers[SIGNATURE_HEADER.lower()])
        assert not verify(b"other", timestamp, request.body, headers[SIGNATURE_HEADER.lower()])
        assert headers["content-type"] == "application/json"
        assert len(headers["idempotency-key"]) == 64
    first = receiver.received[0].flags[0]
    assert first["schema"] == "labelwatch.flag/v1"
    assert first["issues"][0] == {
        "label": "dog",
        "class_index": 1,
        "kind": "MISSING",
        "probability": 0.97,
        "threshold": 0.6,
        "error_probability": None,
    }
    assert h.sample("labelwatch_deliveries_total", sink="webhook", outcome="delivered") == 25


def test_5xx_and_429_are_retried_until_delivered(tmp_path: Path) -> None:
    with webhook_receiver(statuses=[500, 429, 503]) as receiver:
        h = Harness(tmp_path, receiver.url, policy=RetryPolicy(10, 0.01, 0.05))
        h.outbox.write([make_flag(i) for i in range(3)])
        wait_until(lambda: len(receiver.flag_ids()) == 3, 10, "delivery after retries")
        h.stop()
    assert receiver.answered == [500, 429, 503, 200]
    assert h.sample("labelwatch_deliveries_total", sink="webhook", outcome="retry") == 9
    assert h.outbox.dead_letters() == []


def test_a_refused_flag_is_isolated_and_dead_lettered_the_rest_delivered_in_order(
    tmp_path: Path,
) -> None:
    flags = [make_flag(i) for i in range(6)]
    with webhook_receiver(refuse_flag_ids={flags[3].flag_id}) as receiver:
        h = Harness(tmp_path, receiver.url)
        h.outbox.write(flags)
        wait_until(lambda: len(receiver.flag_ids()) == 5, 10, "the 5 good flags")
        h.stop()
    assert receiver.flag_ids() == [f.flag_id for i, f in enumerate(flags) if i != 3]
    (letter,) = h.outbox.dead_letters("webhook")
    assert letter.flag.flag_id == flags[3].flag_id and "HTTP 422" in letter.error
    assert h.sample("labelwatch_dead_letters_total", sink="webhook") == 1
    assert h.pending() == 0


def test_a_flag_dead_lettered_after_max_attempts_can_be_requeued(tmp_path: Path) -> None:
    with webhook_receiver(default_status=500) as receiver:
        h = Harness(tmp_path, receiver.url)
        h.outbox.write([make_flag(0)])
        wait_until(lambda: len(h.outbox.dead_letters()) == 1, 10, "a dead letter")
        assert receiver.answered == [500, 500, 500]  # max_attempts
        receiver.default_status = 200
        assert h.outbox.requeue_dead("webhook") == 1
        wait_until(lambda: len(receiver.flag_ids()) == 1, 10, "the requeued flag")
        h.stop()
    assert h.outbox.dead_letters() == []


def test_a_timeout_is_retried(tmp_path: Path) -> None:
    with webhook_receiver(delay_seconds=0.6) as receiver:
        h = Harness(tmp_path, receiver.url, timeout=0.3)
        h.outbox.write([make_flag(0)])
        wait_until(
            lambda: h.sample("labelwatch_deliveries_total", sink="webhook", outcome="retry") >= 1,
            10,
            "a retry after a timeout",
        )
        receiver.delay_seconds = 0.0
        wait_until(lambda: h.pending() == 0, 10, "delivery once the receiver is fast")
        h.stop()


def test_a_down_receiver_keeps_the_backlog_and_it_drains_in_order_when_back(
    tmp_path: Path,
) -> None:
    receiver = WebhookReceiver()
    receiver.start()
    port = receiver.port
    receiver.stop()  # nothing listens on the port now
    h = Harness(tmp_path, f"http://127.0.0.1:{port}/hook")
    flags = [make_flag(i) for i in range(30)]
    for start in range(0, 30, 5):
        h.outbox.write(flags[start : start + 5])
    wait_until(
        lambda: h.sample("labelwatch_deliveries_total", sink="webhook", outcome="unavailable") > 0,
        10,
        "an unavailable attempt",
    )
    assert h.pending() == 30
    assert h.outbox.dead_letters() == []  # unreachable is not the flags' fault
    back = WebhookReceiver(port=port)
    back.start()
    wait_until(lambda: h.pending() == 0, 15, "the backlog to drain")
    h.stop()
    back.stop()
    assert back.flag_ids() == [f.flag_id for f in flags]


def test_the_server_delivers_scored_flags_to_a_configured_webhook(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    with running_server(
        thresholds=write_artifact(tmp_path / "t.json"),
        outbox=tmp_path / "o.sqlite3",
        webhook_url=receiver.url,
        webhook_secret_file=secret_file,
    ) as srv:
        assert "s3cret" not in json.dumps(srv.delivery.settings.describe() if srv.delivery else {})
        with grpc.insecure_channel(target_of(srv)) as ch:
            stub = pb_grpc.LabelQualityStub(ch)
            stub.Score(pb.ScoreRequest(examples=[flagged_example(i) for i in range(4)]))
        wait_until(lambda: len(receiver.flag_ids()) == 4, 15, "4 flags at the webhook")
        request = receiver.received[0]
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert verify(
            b"s3cret",
            headers[TIMESTAMP_HEADER.lower()],
            request.body,
            headers[SIGNATURE_HEADER.lower()],
        )
        assert [f["example_id"] for f in request.flags][:1] == ["flagged-0"]


def test_webhook_without_a_secret_refuses_to_start(tmp_path: Path) -> None:
    from labelwatch.errors import StartupError

    with (
        pytest.raises(
            StartupError,
            match="LABELWATCH_TEST_SECRET_THAT_IS_NOT_SET or pass --webhook-secret-file",
        ),
        running_server(
            thresholds=write_artifact(tmp_path / "t.json"),
            outbox=tmp_path / "o.sqlite3",
            webhook_url="http://127.0.0.1:9/hook",
            webhook_secret_env="LABELWATCH_TEST_SECRET_THAT_IS_NOT_SET",
        ),
    ):
        pass
