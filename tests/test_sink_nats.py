"""The NATS JetStream sink against a real ``nats-server -js`` on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from labelwatch.metrics import DeliveryMetrics
from labelwatch.outbox import Outbox
from labelwatch.sinks.base import RetryPolicy, SinkWorker
from labelwatch.sinks.nats import NatsSink
from support_delivery import NatsServer, make_flag, nats_server, stream_messages, wait_until

STREAM, SUBJECT = "LW_TEST", "labelwatch.test.flags"
FAST = RetryPolicy(max_attempts=5, initial_seconds=0.05, max_seconds=0.3)


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    with nats_server(tmp_path / "js") as server:
        yield server


class Harness:
    """An outbox with a started NATS sink worker."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.registry = CollectorRegistry()
        self.metrics = DeliveryMetrics(self.registry)
        self.outbox = Outbox(tmp / "outbox.sqlite3")
        self.metrics.track(self.outbox, ["nats"])
        self.sink = NatsSink(
            url, subject=SUBJECT, stream=STREAM, duplicate_window_seconds=120, timeout_seconds=2
        )
        self.worker = SinkWorker(
            self.sink,
            self.outbox,
            self.metrics,
            policy=FAST,
            rng=random.Random(0),
            poll_seconds=0.2,
        )
        self.worker.start()

    def pending(self) -> float:
        value = self.registry.get_sample_value("labelwatch_outbox_pending", {"sink": "nats"})
        return value if value is not None else -1.0

    def stop(self) -> None:
        self.worker.stop(5.0)
        self.outbox.close()


def messages(url: str) -> list[tuple[str, dict[str, object]]]:
    return asyncio.run(stream_messages(url, STREAM, SUBJECT))


def test_each_flag_is_one_json_message_with_its_id_as_nats_msg_id(
    tmp_path: Path, nats: NatsServer
) -> None:
    h = Harness(tmp_path, nats.url)
    flags = [make_flag(i) for i in range(120)]
    h.outbox.write(flags[:70])
    h.outbox.write(flags[70:])
    wait_until(lambda: h.pending() == 0, 20, "every flag published and acked")
    h.stop()
    got = messages(nats.url)
    assert [msg_id for msg_id, _ in got] == [f.flag_id for f in flags]
    first = got[0][1]
    assert first["schema"] == "labelwatch.flag/v1"
    assert first["flag_id"] == flags[0].flag_id and first["example_id"] == "ex-0"
    assert first["labels"] == ["cat"] and first["suggested_labels"] == ["cat", "dog"]
    delivered = h.registry.get_sample_value(
        "labelwatch_deliveries_total", {"sink": "nats", "outcome": "delivered"}
    )
    assert delivered == 120


def test_a_replayed_flag_is_dropped_by_jetstream_dedupe(tmp_path: Path, nats: NatsServer) -> None:
    h = Harness(tmp_path, nats.url)
    h.outbox.write([make_flag(i) for i in range(10)])
    wait_until(lambda: h.pending() == 0, 20, "first delivery")
    h.outbox.set_cursor("sink", "nats", 0)  # `labelwatch flags replay --sink nats ...`
    wait_until(lambda: h.pending() == 0, 20, "the replay")
    h.stop()
    got = messages(nats.url)
    assert len(got) == 10 and len({m for m, _ in got}) == 10


def test_nats_down_grows_the_backlog_and_it_drains_in_order_when_back(
    tmp_path: Path, nats: NatsServer
) -> None:
    h = Harness(tmp_path, nats.url)
    flags = [make_flag(i) for i in range(60)]
    h.outbox.write(flags[:10])
    wait_until(lambda: h.pending() == 0, 20, "delivery while NATS is up")
    nats.stop()
    for start in range(10, 60, 10):
        h.outbox.write(flags[start : start + 10])
    wait_until(lambda: h.pending() == 50, 5, "the backlog")
    wait_until(
        lambda: (
            (
                h.registry.get_sample_value(
                    "labelwatch_deliveries_total", {"sink": "nats", "outcome": "unavailable"}
                )
                or 0
            )
            > 0
        ),
        20,
        "an unavailable attempt",
    )
    assert h.outbox.dead_letters() == []
    nats.start()
    wait_until(lambda: h.pending() == 0, 30, "the backlog to drain")
    h.stop()
    got = messages(nats.url)
    assert [m for m, _ in got] == [f.flag_id for f in flags]
    positions = [int(str(body["position"])) for _, body in got]
    assert positions == sorted(positions)
