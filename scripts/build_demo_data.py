#!/usr/bin/env python3
"""Write the debtags test split that ``labelwatch demo`` streams into the package.

Reads ``data/debtags/debtags.jsonl.gz`` (made by ``scripts/build_debtags_dataset.py``) and
writes ``service/labelwatch/data/debtags_test.jsonl.gz``: the rows of the *test* split (the
packages the default model never saw), in file order, with only ``id``, ``text`` and
``labels`` (about 0.75 MB, against 3.9 MB for all three splits). The output is byte-for-byte
reproducible (gzip level 9, mtime 0); ``tests/test_demo.py`` checks it against the dataset.

    python scripts/build_demo_data.py
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "data" / "debtags" / "debtags.jsonl.gz"
OUT = REPO / "service" / "labelwatch" / "data" / "debtags_test.jsonl.gz"
FIELDS = ("id", "text", "labels")


def test_split_bytes(dataset: Path = DATASET) -> bytes:
    """The gzip-compressed JSON Lines of the test split, as written to :data:`OUT`."""
    lines = []
    with gzip.open(dataset, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["split"] == "test":
                lines.append(json.dumps({f: row[f] for f in FIELDS}, ensure_ascii=False) + "\n")
    return gzip.compress("".join(lines).encode("utf-8"), compresslevel=9, mtime=0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    data = test_split_bytes(args.dataset)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
