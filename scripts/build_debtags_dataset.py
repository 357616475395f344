#!/usr/bin/env python3
"""Build the debtags multi-label text dataset from Debian's package index.

Each output row (JSON Lines, gzip) is one binary package::

    {"id": "python3-requests", "source": "requests", "split": "train",
     "text": "<short description>\\n<long description>",
     "labels": ["devel::lang:python", "implemented-in::python", ...]}

Where the data comes from:

* ``Tag:`` (debtags) and ``Description-md5`` come from ``apt-cache dumpavail`` over the
  *main release* list of one suite (e.g. ``bookworm main``). Update and security lists are
  deliberately left out: newer versions there carry no ``Tag:`` field.
* Long descriptions come from the ``Translation-en`` index, joined on ``Description-md5``.
  The default apt configuration of this machine does not download it, so the script runs
  ``apt-get update`` with a private apt configuration (its own ``Dir::State::Lists`` and
  ``Dir::Cache`` under a temporary directory, ``Acquire::Languages {"en";}``). The system's
  apt state is neither read nor changed.

Which tags become classes (see ``service/labelwatch/data/DATASET.md``):

* facets that describe the package itself are kept; ``suite::`` (which project or
  collection a package belongs to, i.e. provenance) and ``special::`` (tagging
  book-keeping) are dropped, and so is every ``<facet>::TODO`` placeholder tag;
* of those, tags carried by at least ``--min-count`` packages;
* packages left with no class are dropped.

Splits are by *source package* (binary packages built from one source often share most of
their description, so a package split would leak near-copies into the test split): source
names are shuffled with ``--seed`` and assigned to train / calibration / test until each
split holds its share of packages. The output is byte-for-byte reproducible from the same
index files (gzip mtime 0, rows sorted by id).

Run (needs network access to a Debian mirror, ~15 MB)::

    python scripts/build_debtags_dataset.py --out data/debtags/debtags.jsonl.gz

or offline, from index files fetched earlier::

    python scripts/build_debtags_dataset.py --packages Packages --translations Translation-en
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DROPPED_FACETS = ("suite", "special")
SPLITS = ("train", "calibration", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class Package:
    """One binary package from the index, before class filtering."""

    name: str
    source: str
    description_md5: str
    short: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class IndexFiles:
    """The two index files the dataset is built from, plus where they came from."""

    packages: Path
    translations: Path
    release: dict[str, str]
    command: str


def parse_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Yield deb822 stanzas as ``{field: value}``; continuation lines keep their newlines."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.split("\n"):
            if not line:
                continue
            if line[0] in " \t":
                if key:
                    fields[key] += "\n" + line
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields:
            yield fields


def parse_packages(text: str) -> list[Package]:
    """Packages carrying a ``Tag:`` field, from ``apt-cache dumpavail`` output."""
    out: list[Package] = []
    for st in parse_stanzas(text):
        if "Tag" not in st or "Package" not in st:
            continue
        tags = tuple(sorted({t.strip() for t in st["Tag"].replace("\n", " ").split(",")} - {""}))
        source = st.get("Source", st["Package"]).split(" ")[0]
        out.append(
            Package(
                name=st["Package"],
                source=source,
                description_md5=st.get("Description-md5", ""),
                short=st.get("Description", "").split("\n")[0].strip(),
                tags=tags,
            )
        )
    return out


def format_long_description(raw: str) -> str:
    """Turn a deb822 long description (continuation lines) into plain text.

    A line ``" ."`` is a paragraph break; the one leading space of every line is dropped.
    """
    lines = []
    for line in raw.split("\n"):
        body = line[1:] if line.startswith(" ") else line
        lines.append("" if body.strip() == "." else body.rstrip())
    return "\n".join(lines).strip()


def parse_translations(text: str) -> dict[str, str]:
    """``Description-md5 -> "short\\nlong"`` from a ``Translation-en`` file."""
    out: dict[str, str] = {}
    for st in parse_stanzas(text):
        md5 = st.get("Description-md5")
        desc = st.get("Description-en")
        if not md5 or desc is None:
            continue
        short, _, long = desc.partition("\n")
        long_text = format_long_description(long)
        out[md5] = short.strip() + ("\n" + long_text if long_text else "")
    return out


def is_class_candidate(tag: str) -> bool:
    """True for tags of facets that describe the package (not provenance, not placeholders)."""
    facet, sep, value = tag.partition("::")
    return bool(sep) and facet not in DROPPED_FACETS and value != "TODO"


def select_classes(packages: Sequence[Package], min_count: int) -> list[str]:
    """Sorted class names: candidate tags carried by at least ``min_count`` packages."""
    counts = collections.Counter(t for p in packages for t in p.tags if is_class_candidate(t))
    return sorted(t for t, c in counts.items() if c >= min_count)


def assign_splits(sources: Sequence[str], sizes: dict[str, int], seed: int) -> dict[str, str]:
    """Map each source to a split; shuffle sources, fill splits in order by package count.

    ``sources`` has one entry per package (so a source's weight is its package count).
    """
    weights = collections.Counter(sources)
    order = sorted(weights)
    random.Random(seed).shuffle(order)
    total = sum(weights.values())
    bounds = []
    acc = 0.0
    for frac in SPLIT_FRACTIONS:
        acc += frac
        bounds.append(acc * total)
    out: dict[str, str] = {}
    seen = 0
    for src in order:
        idx = next(i for i, b in enumerate(bounds) if seen < b or i == len(bounds) - 1)
        out[src] = SPLITS[idx]
        seen += weights[src]
        sizes[SPLITS[idx]] = sizes.get(SPLITS[idx], 0) + weights[src]
    return out


def fetch_index(workdir: Path, mirror: str, suite: str, keyring: str) -> IndexFiles:
    """Run ``apt-get update`` with a private apt config; return the fetched index files."""
    lists = workdir / "lists"
    for sub in (lists / "partial", workdir / "cache" / "archives" / "partial", workdir / "empty"):
        sub.mkdir(parents=True, exist_ok=True)
    (workdir / "state").mkdir(exist_ok=True)
    status = workdir / "state" / "status"
    status.write_text("")
    sources = workdir / "sources.list"
    sources.write_text(f"deb [signed-by={keyring}] {mirror} {suite} main\n")
    conf = workdir / "apt.conf"
    conf.write_text(
        "\n".join(
            [
                f'Dir::State "{workdir}/state";',
                f'Dir::State::Lists "{lists}";',
                # an empty dpkg status: dumpavail would otherwise mix in this machine's
                # installed packages (other versions, other tags)
                f'Dir::State::status "{status}";',
                f'Dir::Cache "{workdir}/cache";',
                f'Dir::Etc::sourcelist "{sources}";',
                f'Dir::Etc::sourceparts "{workdir}/empty";',
                f'Dir::Etc::parts "{workdir}/empty";',
                f'Dir::Etc::preferencesparts "{workdir}/empty";',
                'Acquire::Languages { "en"; };',
                'Acquire::GzipIndexes "false";',
                # point releases of an old suite are signed but may be past Valid-Until
                'Acquire::Check-Valid-Until "false";',
                # the private lists dir is root-owned; apt's _apt sandbox user cannot write it
                'APT::Sandbox::User "root";',
                "",
            ]
        )
    )
    env = {**os.environ, "APT_CONFIG": str(conf), "LC_ALL": "C"}
    subprocess.run(["apt-get", "update"], env=env, check=True)
    dump = workdir / "dumpavail.txt"
    with dump.open("w") as handle:
        subprocess.run(["apt-cache", "dumpavail"], env=env, check=True, stdout=handle)
    (translations,) = sorted(lists.glob("*_i18n_Translation-en"))
    (release_file,) = sorted(lists.glob("*_InRelease"))
    release = read_release(release_file.read_text(errors="replace"))
    command = (
        "APT_CONFIG=<private apt.conf> apt-get update && APT_CONFIG=<private apt.conf> "
        f"apt-cache dumpavail; sources.list: deb {mirror} {suite} main; "
        'Acquire::Languages {"en";}'
    )
    return IndexFiles(dump, translations, release, command)


def read_release(text: str) -> dict[str, str]:
    """Origin/Suite/Version/Codename/Date of an (In)Release file."""
    keep = ("Origin", "Suite", "Version", "Codename", "Date")
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in keep and key not in out:
            out[key] = value.strip()
    return out


def build_rows(
    packages: Sequence[Package], translations: dict[str, str], min_count: int, seed: int
) -> tuple[list[dict[str, object]], list[str], dict[str, int]]:
    """Rows (sorted by id), class names and stats; see the module docstring."""
    classes = select_classes(packages, min_count)
    class_set = set(classes)
    kept: list[tuple[Package, list[str]]] = []
    stats = collections.Counter[str]()
    for p in packages:
        labels = [t for t in p.tags if t in class_set]
        if not labels:
            stats["dropped_no_class"] += 1
            continue
        kept.append((p, labels))
    sizes: dict[str, int] = {}
    split_of = assign_splits([p.source for p, _ in kept], sizes, seed)
    rows: list[dict[str, object]] = []
    for p, labels in sorted(kept, key=lambda pl: pl[0].name):
        text = translations.get(p.description_md5)
        if text is None:
            stats["no_long_description"] += 1
            text = p.short
        rows.append(
            {
                "id": p.name,
                "source": p.source,
                "split": split_of[p.source],
                "text": text,
                "labels": labels,
            }
        )
    stats.update({f"split_{k}": v for k, v in sizes.items()})
    stats["packages_with_tags"] = len(packages)
    stats["packages"] = len(rows)
    stats["classes"] = len(classes)
    stats["sources"] = len(split_of)
    return rows, classes, dict(stats)


def write_jsonl_gz(rows: Sequence[dict[str, object]], path: Path) -> None:
    """Write rows as gzip JSON Lines, reproducibly (mtime 0, no file name in the header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
    ):
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n").encode())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the debtags multi-label dataset (JSONL.gz with train/calibration/"
        "test splits) from Debian's package index.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("data/debtags/debtags.jsonl.gz"), help="output file"
    )
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror URL")
    parser.add_argument("--suite", default=DEFAULT_SUITE, help="release suite (codename)")
    parser.add_argument("--keyring", default=DEFAULT_KEYRING, help="archive keyring for apt")
    parser.add_argument("--min-count", type=int, default=100, help="min packages per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split shuffle")
    parser.add_argument(
        "--packages",
        type=Path,
        help="use this apt-cache dumpavail output (or Packages file) instead of fetching",
    )
    parser.add_argument(
        "--translations", type=Path, help="use this Translation-en file instead of fetching"
    )
    parser.add_argument(
        "--release", type=Path, help="(In)Release file of the offline index, for the metadata"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="debtags-apt-") as tmp:
        if args.packages is not None and args.translations is not None:
            release = read_release(args.release.read_text()) if args.release else {}
            index = IndexFiles(args.packages, args.translations, release, "offline files")
        elif args.packages is None and args.translations is None:
            index = fetch_index(Path(tmp), args.mirror, args.suite, args.keyring)
        else:
            parser.error("--packages and --translations go together")
        packages = parse_packages(index.packages.read_text(errors="replace"))
        translations = parse_translations(index.translations.read_text(errors="replace"))
        packages_sha = hashlib.sha256(index.packages.read_bytes()).hexdigest()
        translations_sha = hashlib.sha256(index.translations.read_bytes()).hexdigest()

    rows, classes, stats = build_rows(packages, translations, args.min_count, args.seed)
    write_jsonl_gz(rows, args.out)
    meta = {
        "release": index.release,
        "mirror": args.mirror,
        "suite": args.suite,
        "fetch": index.command,
        "build_command": "python scripts/build_debtags_dataset.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "min_count": args.min_count,
        "seed": args.seed,
        "dropped_facets": list(DROPPED_FACETS),
        "dropped_tags": "<facet>::TODO",
        "split_fractions": dict(zip(SPLITS, SPLIT_FRACTIONS, strict=True)),
        "index_sha256": {"packages": packages_sha, "translations": translations_sha},
        "stats": stats,
        "classes": classes,
    }
    meta_path = args.out.with_name(args.out.name.split(".")[0] + ".meta.json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k != "classes"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
