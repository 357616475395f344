"""``labelwatch consume --model-repository``: SIGHUP swaps the model between batches."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from support_lifecycle import write_version
from test_ingest import RESULTS, consumers, examples, outputs, publish_json, result_count

from support_delivery import NatsServer, nats_server, wait_until


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    with nats_server(tmp_path / "jetstream") as server:
        yield server


def test_consume_reloads_on_sighup_and_stamps_each_result_with_its_version(
    nats: NatsServer, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    write_version(root, "1", model_seed=None)  # thresholds only: the examples carry probabilities
    extra = ["--model-repository", str(root)]
    with consumers(nats, None, tmp_path / "outbox.sqlite3", extra=extra) as (consumer,):
        publish_json(nats.url, examples(20, "a-"))
        wait_until(lambda: result_count(nats.url) >= 20, 30, "20 results")
        write_version(root, "2", model_seed=None, artifact_seed=3)
        consumer.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "outcome=swapped" in consumer.log(), 30, "the reload")
        publish_json(nats.url, examples(20, "b-"))
        wait_until(lambda: result_count(nats.url) >= 40, 30, "40 results")
        assert consumer.terminate() == 0
    versions = {r.body["id"][:2]: set() for r in outputs(nats.url, RESULTS)}
    for r in outputs(nats.url, RESULTS):
        versions[r.body["id"][:2]].add(r.body["model_version"])
    assert versions == {"a-": {"1"}, "b-": {"2"}}
