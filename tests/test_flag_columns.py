"""Flags stored as columns read back as the flags stored as JSON: same Flag, same wire form.

The pipeline stores a batch's flags in the compact column form
(:mod:`labelwatch.flag_columns`); rows written before (and flags written as
:class:`Flag` objects) hold JSON. Readers (sinks, WatchFlags, ``labelwatch flags``,
Label Studio) must not be able to tell the two apart.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from test_outbox_schema import V1_SCHEMA

from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.flag_columns import ClassTable, columns_from_batch
from labelwatch.flag_record import dedupe_key, flags_from_batch
from labelwatch.grpc.flag_feed import flag_to_proto
from labelwatch.outbox import Outbox
from labelwatch.outbox.schema import MIGRATIONS

NAMES = ("cat", "dog", "Zebra", "ñandú", 'quo"te', "back\\slash", "tab\tname", "emoji 🐈", "b")


def _example(rng: np.random.Generator, i: int, k: int) -> LabeledExample:
    kind = i % 3
    ids = [f"ex-{i}", f'é"{i}\\', f"\u2028{i}\x01", f"🐕-{i}"]
    return LabeledExample(
        id=ids[i % len(ids)],
        labels=rng.random(k) < 0.3,
        text=f"text {i} «ü»" if kind == 0 else None,
        features=np.zeros(2, dtype=np.float32) if kind == 1 else None,
        probabilities=rng.random(k) if kind == 2 else None,
        annotator_id=f"ann-{i % 2}" if i % 4 else "",
        metadata={"source": "t", "n": str(i), "ü": "ß\n"} if i % 2 else {},
    )


def random_batch(seed: int, n: int, *, chances: bool, version: str = "m-1") -> ScoredBatch:
    rng = np.random.default_rng(seed)
    k = len(NAMES)
    examples = tuple(_example(rng, i, k) for i in range(n))
    flags = rng.random((n, k)) < 0.15
    flags[:1] = False  # an example without flags
    return ScoredBatch(
        examples=examples,
        probabilities=rng.random((n, k)),
        labels=np.stack([ex.labels for ex in examples]) if n else np.zeros((0, k), bool),
        flags=flags,
        label_quality=rng.random(n),
        t0=rng.random(k),
        t1=rng.random(k),
        model_version=version,
        error_probability=np.where(flags, rng.random((n, k)), np.nan) if chances else None,
    )


def _both(tmp_path: Path, batches: list[ScoredBatch]) -> tuple[Outbox, Outbox]:
    """Outbox ``json`` holding the batches' flags as Flag objects, ``columns`` as columns."""
    as_json, as_columns = Outbox(tmp_path / "json.sqlite3"), Outbox(tmp_path / "cols.sqlite3")
    table = ClassTable(NAMES)
    for n, batch in enumerate(batches):
        as_json.write(flags_from_batch(batch, NAMES, now=1_700_000_000.5 + n))
        as_columns.write((), columns=[columns_from_batch(batch, table, now=1_700_000_000.5 + n)])
    return as_json, as_columns


@pytest.mark.parametrize("chances", [False, True], ids=["no-context", "error-probability"])
def test_flags_stored_as_columns_read_back_equal_to_flags_stored_as_json(
    tmp_path: Path, chances: bool
) -> None:
    batches = [random_batch(seed, 40, chances=chances) for seed in range(4)]
    as_json, as_columns = _both(tmp_path, batches)
    expected = [f for b in batches for f in flags_from_batch(b, NAMES)]
    assert as_json.count() == as_columns.count() == len({f.flag_id for f in expected}) > 20
    read_json, read_columns = as_json.flags(limit=1000), as_columns.flags(limit=1000)
    assert read_columns == read_json
    assert [f.to_json() for f in read_columns] == [f.to_json() for f in read_json]
    assert [flag_to_proto(f) for f in read_columns] == [flag_to_proto(f) for f in read_json]
    for flag in read_json[::7]:
        assert as_columns.get(flag.flag_id) == flag
        assert as_columns.get(str(flag.position)) == flag
    for box in (as_json, as_columns):
        box.ensure_consumer("watch", "ui")
        box.ensure_consumer("sink", "hook")
    assert as_columns.pending("watch", "ui", limit=1000) == as_json.pending(
        "watch", "ui", limit=1000
    )
    assert as_columns.next_for_sink("hook", 5) == as_json.next_for_sink("hook", 5)


def test_a_flag_id_from_columns_is_the_dedupe_key() -> None:
    batch = random_batch(7, 60, chances=True, version='v"1\\ü')
    columns = columns_from_batch(batch, ClassTable(NAMES))
    flagged = np.flatnonzero(batch.flags.any(axis=1))
    assert len(columns) == len(flagged)
    for flag_id, i in zip(columns.flag_ids, flagged.tolist(), strict=True):
        given = [NAMES[k] for k in np.flatnonzero(batch.labels[i])]
        assert flag_id == dedupe_key(batch.examples[i].id, batch.model_version, given)


def test_a_batch_without_flags_or_examples_stores_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    empty = random_batch(0, 0, chances=False)
    clean = random_batch(1, 5, chances=False)
    clean = ScoredBatch(**{**clean.__dict__, "flags": np.zeros_like(clean.flags)})
    table = ClassTable(NAMES)
    assert box.write((), columns=[columns_from_batch(b, table) for b in (empty, clean)]) == 0
    assert box.count() == 0


def test_the_same_flag_is_stored_once_in_either_form(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    batch = random_batch(3, 30, chances=True)
    flags = flags_from_batch(batch, NAMES)
    table = ClassTable(NAMES)
    assert box.write(flags[:5]) == 5
    stored = box.write((), columns=[columns_from_batch(batch, table)])
    assert stored == len(flags) - 5
    assert box.write((), columns=[columns_from_batch(batch, table)] * 2) == 0
    assert [f.flag_id for f in box.flags(limit=1000)] == [f.flag_id for f in flags]


def test_two_class_lists_are_kept_apart_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    other = tuple(reversed(NAMES))
    one = random_batch(4, 20, chances=False)
    two = random_batch(5, 20, chances=False, version="m-2")
    box.write((), columns=[columns_from_batch(one, ClassTable(NAMES), now=10.0)])
    box.write((), columns=[columns_from_batch(two, ClassTable(other), now=20.0)])
    expected = flags_from_batch(one, NAMES, now=10.0) + flags_from_batch(two, other, now=20.0)
    box.close()
    got = Outbox(path).flags(limit=1000)
    assert got == [f.with_position(i + 1) for i, f in enumerate(expected)]


def test_a_version_5_file_with_json_rows_migrates_and_takes_column_rows(tmp_path: Path) -> None:
    """Rows written by the previous release stay JSON and read as before, next to new rows."""
    path = tmp_path / "v5.sqlite3"
    old = random_batch(11, 30, chances=True)
    old_flags = flags_from_batch(old, NAMES, now=1_700_000_000.0)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(V1_SCHEMA)
    for migration in MIGRATIONS[1:5]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 5")
    conn.executemany(
        "INSERT INTO flags (flag_id, created_at, payload) VALUES (?, ?, ?)",
        [(f.flag_id, f.flagged_at, f.to_json()) for f in old_flags],
    )
    conn.close()
    box = Outbox(path)
    assert box.writable, box.last_error
    new = random_batch(12, 30, chances=True)
    box.write((), columns=[columns_from_batch(new, ClassTable(NAMES), now=1_700_000_001.0)])
    reference = Outbox(tmp_path / "reference.sqlite3")
    reference.write(old_flags)
    reference.write(flags_from_batch(new, NAMES, now=1_700_000_001.0))
    got, want = box.flags(limit=1000), reference.flags(limit=1000)
    assert got == want and len(got) > len(old_flags)
    assert [flag_to_proto(f) for f in got] == [flag_to_proto(f) for f in want]
    # a dead letter keeps its own JSON copy, whichever form the flag was stored in
    box.ensure_consumer("sink", "hook")
    box.dead_letter("hook", got[-1], attempts=3, error="HTTP 500")
    (letter,) = box.dead_letters("hook")
    assert letter.flag == got[-1]
    assert box.integrity_check() == "ok"
