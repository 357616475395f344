"""The SQLite flag outbox: batches, dedupe, cursors, acks, dead letters, retention, failures."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.flag_record import Flag, FlagIssue, dedupe_key, flags_from_batch
from labelwatch.outbox import Outbox, OutboxError, RetentionPolicy, UnknownConsumer
from labelwatch.scoring import IssueKind
from support_delivery import make_flag


class Clock:
    """A settable unix-seconds clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "data" / "outbox.sqlite3", clock=Clock())


def test_outbox_is_created_with_parent_dirs_in_wal_mode(outbox: Outbox) -> None:
    assert outbox.path.is_file()
    conn = sqlite3.connect(outbox.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_batch_is_written_in_one_transaction_and_read_back_in_order(outbox: Outbox) -> None:
    flags = [make_flag(i) for i in range(50)]
    assert outbox.write(flags) == 50
    stored = outbox.flags(limit=100)
    assert [f.example_id for f in stored] == [f.example_id for f in flags]
    positions = [f.position for f in stored]
    assert positions == sorted(positions) and len(set(positions)) == 50
    assert stored[0] == flags[0].with_position(positions[0])


def test_a_failing_row_rolls_back_the_whole_batch(outbox: Outbox) -> None:
    outbox.write([make_flag(0)])
    conn = sqlite3.connect(outbox.path)
    # a trigger that refuses the 3rd row of the next batch: nothing of it may be stored
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON flags WHEN NEW.payload LIKE '%ex-3\"%' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    conn.commit()
    conn.close()
    with pytest.raises(OutboxError):
        outbox.write([make_flag(i) for i in (1, 2, 3, 4)])
    assert outbox.count() == 1
    assert not outbox.writable


def test_the_same_example_scored_twice_is_one_flag(outbox: Outbox) -> None:
    assert outbox.write([make_flag(1), make_flag(2)]) == 2
    assert outbox.write([make_flag(2), make_flag(3)]) == 1
    assert [f.example_id for f in outbox.flags()] == ["ex-1", "ex-2", "ex-3"]


def test_dedupe_key_depends_on_example_model_and_label_set_not_label_order() -> None:
    assert dedupe_key("a", "m", ["x", "y"]) == dedupe_key("a", "m", ["y", "x"])
    assert dedupe_key("a", "m", ["x"]) != dedupe_key("a", "m", ["x", "y"])
    assert dedupe_key("a", "m", ["x"]) != dedupe_key("a", "m2", ["x"])
    assert dedupe_key("a", "m", ["x"]) != dedupe_key("b", "m", ["x"])
    # no separator tricks: the parts are JSON-encoded
    assert dedupe_key("a|m", "", []) != dedupe_key("a", "m", [])


def test_flags_from_batch_builds_one_flag_per_flagged_example() -> None:
    names = ("cat", "dog", "bird")
    examples = tuple(
        LabeledExample(id=f"e{i}", labels=np.array(lab), text=f"t{i}", annotator_id="a")
        for i, lab in enumerate([[1, 0, 0], [0, 1, 0]])
    )
    batch = ScoredBatch(
        examples=examples,
        probabilities=np.array([[0.9, 0.95, 0.1], [0.1, 0.9, 0.1]]),
        labels=np.array([[1, 0, 0], [0, 1, 0]], dtype=bool),
        flags=np.array([[0, 1, 0], [0, 0, 0]], dtype=bool),
        label_quality=np.array([0.2, 0.9]),
        t0=np.array([0.7, 0.7, 0.7]),
        t1=np.array([0.6, 0.6, 0.6]),
        model_version="m-1",
    )
    (flag,) = flags_from_batch(batch, names, now=123.0)
    assert flag.example_id == "e0"
    assert flag.labels == ("cat",)
    assert flag.suggested_labels == ("cat", "dog")
    assert flag.issues == (FlagIssue("dog", 1, IssueKind.MISSING, 0.95, 0.6),)
    assert flag.flag_id == dedupe_key("e0", "m-1", ["cat"])
    assert (flag.text, flag.input_kind, flag.flagged_at) == ("t0", "text", 123.0)
    assert Flag.from_json(flag.to_json()) == flag


def test_each_consumer_has_its_own_cursor_and_sees_every_flag(outbox: Outbox) -> None:
    outbox.write([make_flag(i) for i in range(5)])
    for name in ("a", "b"):
        outbox.ensure_consumer("watch", name)
    got_a, _ = outbox.pending("watch", "a", limit=10)
    outbox.ack("watch", "a", up_to=got_a[2].position)
    assert [f.example_id for f in outbox.pending("watch", "a")[0]] == ["ex-3", "ex-4"]
    assert len(outbox.pending("watch", "b")[0]) == 5


def test_acking_by_id_moves_the_cursor_only_over_a_contiguous_prefix(outbox: Outbox) -> None:
    flags = [make_flag(i) for i in range(5)]
    outbox.write(flags)
    outbox.ensure_consumer("watch", "c")
    stored = outbox.flags()
    result = outbox.ack("watch", "c", flag_ids=[flags[1].flag_id, flags[3].flag_id, "nope"])
    assert result.cursor == 0
    assert result.unknown_flag_ids == ("nope",)
    assert [f.example_id for f in outbox.pending("watch", "c")[0]] == ["ex-0", "ex-2", "ex-4"]
    result = outbox.ack("watch", "c", flag_ids=[flags[0].flag_id])
    assert result.cursor == stored[1].position
    result = outbox.ack("watch", "c", flag_ids=[flags[2].flag_id])
    assert result.cursor == stored[3].position


def test_ack_up_to_cannot_run_ahead_of_the_stored_flags(outbox: Outbox) -> None:
    outbox.write([make_flag(0)])
    outbox.ensure_consumer("watch", "c")
    assert outbox.ack("watch", "c", up_to=10**9).cursor == outbox.last_position()
    outbox.write([make_flag(1)])
    assert [f.example_id for f in outbox.pending("watch", "c")[0]] == ["ex-1"]


def test_ack_for_an_unknown_consumer_is_refused_without_marking_the_outbox_broken(
    outbox: Outbox,
) -> None:
    with pytest.raises(UnknownConsumer):
        outbox.ack("watch", "ghost", up_to=1)
    assert outbox.writable


def test_a_new_consumer_can_start_from_a_position_or_a_time(outbox: Outbox) -> None:
    outbox.write([make_flag(i, at=1000.0) for i in range(10)])  # flagged_at 1000..1009
    stored = outbox.flags()
    outbox.ensure_consumer("watch", "from-pos", cursor=stored[6].position - 1)
    assert outbox.pending("watch", "from-pos")[0][0].example_id == "ex-6"
    outbox.ensure_consumer("watch", "from-time", cursor=outbox.position_before(1004.0))
    assert outbox.pending("watch", "from-time")[0][0].example_id == "ex-4"
    # after the newest flag: nothing yet
    outbox.ensure_consumer("watch", "future", cursor=outbox.position_before(5000.0))
    assert outbox.pending("watch", "future")[0] == []


def test_replay_moves_a_cursor_back_and_forgets_its_acks(outbox: Outbox) -> None:
    flags = [make_flag(i) for i in range(4)]
    outbox.write(flags)
    outbox.ensure_consumer("watch", "c")
    outbox.ack("watch", "c", up_to=outbox.last_position())
    assert outbox.pending("watch", "c")[0] == []
    outbox.set_cursor("watch", "c", 0)
    assert len(outbox.pending("watch", "c")[0]) == 4


def test_sink_dead_letters_are_kept_and_can_be_requeued_before_newer_flags(
    outbox: Outbox,
) -> None:
    outbox.write([make_flag(i) for i in range(4)])
    outbox.ensure_consumer("sink", "webhook")
    batch, requeued = outbox.next_for_sink("webhook", 10)
    assert not requeued
    outbox.delivered("webhook", batch[:1])
    outbox.dead_letter("webhook", batch[1], attempts=10, error="HTTP 400: bad")
    assert [f.example_id for f in outbox.next_for_sink("webhook", 10)[0]] == ["ex-2", "ex-3"]
    (letter,) = outbox.dead_letters("webhook")
    assert (letter.flag.example_id, letter.attempts, letter.error) == ("ex-1", 10, "HTTP 400: bad")
    assert outbox.backlog("sink", "webhook").pending == 2
    assert outbox.requeue_dead("webhook") == 1
    assert outbox.backlog("sink", "webhook").pending == 3
    again, requeued = outbox.next_for_sink("webhook", 10)
    assert requeued and [f.example_id for f in again] == ["ex-1"]
    outbox.delivered("webhook", again)
    assert outbox.dead_letters("webhook") == []
    assert [f.example_id for f in outbox.next_for_sink("webhook", 10)[0]] == ["ex-2", "ex-3"]


def test_backlog_reports_count_and_oldest_pending_time(outbox: Outbox) -> None:
    outbox.write([make_flag(i, at=500.0) for i in range(3)])
    outbox.ensure_consumer("sink", "nats")
    assert outbox.backlog("sink", "nats").pending == 3
    assert outbox.backlog("sink", "nats").oldest_created_at == 500.0
    outbox.delivered("nats", outbox.next_for_sink("nats", 2)[0])
    assert outbox.backlog("sink", "nats").oldest_created_at == 502.0


def test_retention_by_age_prunes_old_flags_and_counts_the_unsent(tmp_path: Path) -> None:
    clock = Clock(10_000.0)
    outbox = Outbox(tmp_path / "o.sqlite3", clock=clock)
    outbox.write([make_flag(i, at=1000.0) for i in range(6)])  # 1000..1005
    outbox.write([make_flag(i, at=9000.0) for i in range(6, 8)])
    outbox.ensure_consumer("sink", "nats")
    outbox.delivered("nats", outbox.next_for_sink("nats", 2)[0])  # ex-0, ex-1 sent
    result = outbox.prune(RetentionPolicy(max_age_seconds=5000.0, max_bytes=0))
    assert (result.pruned, result.unsent) == (6, 4)
    assert [f.example_id for f in outbox.flags()] == ["ex-6", "ex-7"]
    assert [f.example_id for f in outbox.next_for_sink("nats", 10)[0]] == ["ex-6", "ex-7"]
    assert outbox.counters() == {"pruned_total": 6, "pruned_unsent_total": 4}
    assert outbox.prune(RetentionPolicy(max_age_seconds=5000.0, max_bytes=0)).pruned == 0


def test_retention_by_size_keeps_the_newest_flags_under_the_limit(outbox: Outbox) -> None:
    for start in range(0, 3000, 500):
        outbox.write([make_flag(i) for i in range(start, start + 500)])
    limit = outbox.size_bytes() // 2
    result = outbox.prune(RetentionPolicy(max_age_seconds=0, max_bytes=limit))
    assert result.pruned > 0 and result.unsent == 0  # no consumer: nothing was owed
    assert outbox.size_bytes() <= limit
    assert outbox.flags(limit=1)[0].example_id == f"ex-{result.pruned}"
    assert outbox.flags(after=outbox.last_position() - 1)[0].example_id == "ex-2999"


def test_a_second_process_sees_the_writes_and_integrity_holds(outbox: Outbox) -> None:
    outbox.write([make_flag(i) for i in range(3)])
    other = Outbox(outbox.path, create=False)
    assert other.count() == 3
    other.close()
    assert outbox.integrity_check() == "ok"


def test_admin_open_of_a_missing_file_does_not_create_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite3"
    box = Outbox(missing, create=False)
    assert not box.writable and "no outbox" in box.last_error
    assert not missing.exists()


def test_unwritable_path_reports_unwritable_and_recovers_when_fixed(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")
    box = Outbox(blocker / "outbox.sqlite3")
    changes: list[bool] = []
    box.add_writable_listener(changes.append)
    assert not box.writable
    with pytest.raises(OutboxError, match="cannot open outbox"):
        box.write([make_flag(0)])
    assert not box.probe()
    blocker.unlink()
    assert box.probe()
    assert box.writable and changes == [True]
    assert box.write([make_flag(0)]) == 1


def test_disk_full_fails_the_write_and_keeps_what_was_committed(outbox: Outbox) -> None:
    outbox.write([make_flag(0)])
    conn = sqlite3.connect(outbox.path)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    # the outbox's own connection hits the page limit like a full disk (SQLITE_FULL)
    assert outbox._conn is not None
    outbox._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(OutboxError, match="full"):
        outbox.write([make_flag(i) for i in range(1, 400)])
    assert not outbox.writable
    outbox._conn.execute("PRAGMA max_page_count = 1073741823")
    assert outbox.probe()
    assert outbox.count() == 1


def test_concurrent_writers_from_threads_lose_nothing(outbox: Outbox) -> None:
    def writer(base: int) -> None:
        for j in range(20):
            outbox.write([make_flag(base + j * 10 + k) for k in range(10)])

    threads = [threading.Thread(target=writer, args=(t * 1000,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outbox.count() == 4 * 200
    assert os.path.getsize(outbox.path) > 0


# -- the admin command: `labelwatch flags ...` works on the file, server up or down ----------


def run_cli(*args: str) -> int:
    from labelwatch.cli import main

    return main(["flags", *args])


def test_flags_cli_lists_shows_replays_and_requeues(
    outbox: Outbox, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [make_flag(i) for i in range(5)]
    outbox.write(flags)
    outbox.ensure_consumer("sink", "nats")
    outbox.delivered("nats", outbox.flags(limit=2))
    outbox.dead_letter("nats", outbox.flags(limit=3)[2], attempts=10, error="HTTP 400: nope")
    path = str(outbox.path)

    assert run_cli("status", "--outbox", path, "--check") == 0
    out = capsys.readouterr().out
    assert "5 stored" in out and "integrity    ok" in out
    assert "sink   nats" in out

    assert run_cli("list", "--outbox", path, "--pending-for", "nats", "--json") == 0
    listed = [Flag.from_json(line) for line in capsys.readouterr().out.splitlines()]
    assert [f.example_id for f in listed] == ["ex-3", "ex-4"]

    assert run_cli("show", "--outbox", path, flags[2].flag_id) == 0
    out = capsys.readouterr().out
    assert '"example_id": "ex-2"' in out and "dead letter for nats: 10 attempts" in out

    assert run_cli("requeue-dead", "--outbox", path, "--sink", "nats") == 0
    assert "requeued 1" in capsys.readouterr().out
    assert outbox.next_for_sink("nats", 10)[1] is True

    assert run_cli("replay", "--outbox", path, "--sink", "nats", "--from-position", "1") == 0
    assert outbox.consumer("sink", "nats").cursor == 0  # type: ignore[union-attr]
    assert run_cli("replay", "--outbox", path, "--consumer", "new-ui", "--since", "1d") == 0
    assert "created watch consumer 'new-ui'" in capsys.readouterr().out


def test_flags_cli_finds_the_outbox_through_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite3")
    box.write([make_flag(0)])
    assert run_cli("list", "--data-dir", str(tmp_path)) == 0
    assert "ex-0" in capsys.readouterr().out


def test_flags_cli_on_a_missing_outbox_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("status", "--outbox", str(tmp_path / "none.sqlite3")) == 1
    assert "no outbox at" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite3").exists()
