"""``labelwatch flags``: inspect and steer the flag outbox, with the server up or down.

``list`` and ``show`` read flags; ``status`` shows every consumer's cursor and
backlog; ``stats`` the precision of flags measured from reviewers' verdicts;
``replay`` moves a sink's or watch consumer's cursor back (or sets a new
consumer's start); ``requeue-dead`` hands a sink's dead letters back to it.
All of them open the outbox file directly (SQLite serialises them with a
running server), so they also work while the server is down.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from labelwatch.errors import PublicError
from labelwatch.flag_record import Flag
from labelwatch.outbox import ConsumerKind, Outbox, OutboxError
from labelwatch.verdicts import ClassPrecision, VerdictBook

_DESCRIPTION = """\
Inspect and steer the flag outbox (the SQLite file every flag is stored in
before it is delivered). Works whether the server runs or not.

  labelwatch flags status
  labelwatch flags list --limit 20
  labelwatch flags list --pending-for nats
  labelwatch flags show 3f2a...e9        (a flag id, or a position)
  labelwatch flags replay --sink label_studio --since 2h
  labelwatch flags replay --consumer reviewer-ui --from-position 1200
  labelwatch flags requeue-dead --sink webhook
  labelwatch flags stats                 (precision of flags, from verdicts)

The outbox is --outbox, else $LABELWATCH_OUTBOX, else DATA_DIR/outbox.sqlite3
with DATA_DIR from --data-dir, $LABELWATCH_DATA_DIR or ./labelwatch-data (the
same rule as `labelwatch serve`). Sinks are named label_studio, nats and
webhook; watch consumers by the name they gave WatchFlags.
"""

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, *, now: float | None = None) -> float:
    """Unix seconds from ISO-8601 (``2024-05-01T12:00:00Z``) or an age (``90s 30m 2h 7d``).

    >>> parse_time("2h", now=10000.0)
    2800.0
    >>> parse_time("1970-01-01T00:01:00Z")
    60.0
    """
    match = _RELATIVE.match(text.strip())
    if match:
        current = time.time() if now is None else now
        return current - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO-8601 time nor an age like 30m, 2h, 7d"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def outbox_path(args: argparse.Namespace) -> Path:
    """The outbox file from the flags and environment (see the command's description)."""
    if args.outbox is not None:
        return Path(args.outbox)
    if os.environ.get("LABELWATCH_OUTBOX"):
        return Path(os.environ["LABELWATCH_OUTBOX"])
    data_dir = args.data_dir or os.environ.get("LABELWATCH_DATA_DIR") or "labelwatch-data"
    return Path(data_dir) / "outbox.sqlite3"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``flags`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "flags",
        help="inspect the flag outbox, replay and requeue deliveries",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--outbox", default=None, metavar="PATH", help="the outbox file.")
    common.add_argument(
        "--data-dir", default=None, metavar="DIR", help="directory holding outbox.sqlite3."
    )
    actions = parser.add_subparsers(dest="flags_command", metavar="ACTION", required=True)

    status = actions.add_parser(
        "status", parents=[common], help="size, consumers, backlogs, dead letters"
    )
    status.add_argument("--check", action="store_true", help="also run SQLite's integrity check.")
    status.set_defaults(func=functools.partial(_run, _do_status))

    listing = actions.add_parser(
        "list",
        parents=[common],
        help="list flags, most likely errors first",
        description="List stored flags. --order review (the default) shows the flags most "
        "likely to be real errors first: by the highest error_probability of their issues, "
        "then by label quality (lowest first), then oldest first; --order position lists "
        "them oldest first.",
    )
    listing.add_argument("--after", type=int, default=0, metavar="POS", help="positions > POS.")
    listing.add_argument(
        "--since", type=parse_time, default=None, metavar="TIME", help="ISO time or age (2h)."
    )
    listing.add_argument(
        "--pending-for", default=None, metavar="SINK", help="only flags SINK has not delivered."
    )
    listing.add_argument("--limit", type=int, default=50, help="most flags shown (default 50).")
    listing.add_argument(
        "--order",
        choices=("review", "position"),
        default="review",
        help="review: most likely errors first (default); position: oldest first.",
    )
    listing.add_argument(
        "--scan",
        type=int,
        default=REVIEW_SCAN,
        metavar="N",
        help=f"--order review ranks the first N matching flags (default {REVIEW_SCAN}).",
    )
    listing.add_argument("--json", action="store_true", help="one flag JSON object a line.")
    listing.set_defaults(func=functools.partial(_run, _do_list))

    show = actions.add_parser("show", parents=[common], help="one flag and its delivery state")
    show.add_argument("key", metavar="FLAG", help="flag id, or outbox position")
    show.set_defaults(func=functools.partial(_run, _do_show))

    replay = actions.add_parser(
        "replay",
        parents=[common],
        help="deliver again from a position or time",
        description="Move a sink's or watch consumer's cursor so that it receives every flag "
        "from a position or time on again (a consumer that does not exist yet is created "
        "there). Sinks deduplicate on the flag id, so replaying never duplicates tasks or "
        "messages downstream within their dedupe limits.",
    )
    who = replay.add_mutually_exclusive_group(required=True)
    who.add_argument("--sink", default=None, help="label_studio, nats or webhook.")
    who.add_argument("--consumer", default=None, help="a WatchFlags consumer name.")
    where = replay.add_mutually_exclusive_group(required=True)
    where.add_argument("--from-position", type=int, default=None, metavar="POS")
    where.add_argument("--since", type=parse_time, default=None, metavar="TIME")
    replay.set_defaults(func=functools.partial(_run, _do_replay))

    requeue = actions.add_parser(
        "requeue-dead",
        parents=[common],
        help="hand a sink's dead letters back to it",
        description="Mark dead letters of a sink (all, or the given flag ids) for delivery "
        "again; a running server picks them up within seconds, before newer flags.",
    )
    requeue.add_argument("--sink", required=True, help="label_studio, nats or webhook.")
    requeue.add_argument("flag_ids", nargs="*", metavar="FLAG_ID")
    requeue.set_defaults(func=functools.partial(_run, _do_requeue))

    stats = actions.add_parser(
        "stats",
        parents=[common],
        help="precision of flags, overall and per class, from reviewers' verdicts",
        description="Precision = confirmed / (confirmed + rejected) verdicts (ReportVerdicts "
        "and Label Studio's implicit ones), overall and per class, with a Wilson score "
        "interval. Every verdict counts once (one per reviewer of a flagged class).",
    )
    stats.add_argument(
        "--confidence", type=float, default=0.95, help="interval coverage (default 0.95)."
    )
    stats.add_argument("--json", action="store_true", help="one JSON object.")
    stats.set_defaults(func=functools.partial(_run, _do_stats))


def _open(args: argparse.Namespace) -> Outbox:
    path = outbox_path(args)
    outbox = Outbox(path, create=False, busy_timeout_seconds=30.0)
    if not outbox.writable and outbox.last_error:
        raise OutboxError(outbox.last_error)
    return outbox


def _run(action: Callable[[Outbox, argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        outbox = _open(args)
        try:
            return action(outbox, args)
        finally:
            outbox.close()
    except OutboxError as exc:
        print(f"labelwatch flags: error: {exc}", file=sys.stderr)
        return 1


def _do_status(outbox: Outbox, args: argparse.Namespace) -> int:
    counters = outbox.counters()
    print(f"outbox       {outbox.path}")
    print(f"flags        {outbox.count()} stored, last position {outbox.last_position()}")
    print(f"size         {outbox.size_bytes() / 1024 / 1024:.1f} MiB in use")
    print(
        f"pruned       {counters.get('pruned_total', 0)} "
        f"({counters.get('pruned_unsent_total', 0)} before every consumer had them)"
    )
    if args.check:
        print(f"integrity    {outbox.integrity_check()}")
    print()
    print(f"{'KIND':6} {'NAME':24} {'CURSOR':>8} {'PENDING':>8} {'OLDEST PENDING':20} DEAD")
    dead: dict[str, int] = {}
    for letter in outbox.dead_letters(requeued=False):
        dead[letter.sink] = dead.get(letter.sink, 0) + 1
    for consumer in outbox.consumers():
        backlog = outbox.backlog(consumer.kind, consumer.name)
        dead_count = str(dead.get(consumer.name, 0)) if consumer.kind == "sink" else "-"
        print(
            f"{consumer.kind:6} {consumer.name:24} {consumer.cursor:>8} {backlog.pending:>8} "
            f"{_iso(backlog.oldest_created_at):20} {dead_count}"
        )
    return 0


REVIEW_SCAN = 100_000
"""Flags ranked by ``flags list --order review`` unless ``--scan`` says otherwise."""


def error_probability(flag: Flag) -> float | None:
    """The highest error probability of ``flag``'s issues (``None``: none has one)."""
    chances = [i.error_probability for i in flag.issues if i.error_probability is not None]
    return max(chances) if chances else None


def review_order(flags: list[Flag]) -> list[Flag]:
    """Most likely errors first: error probability (high first; none last), label quality
    (low first), position (old first)."""

    def key(flag: Flag) -> tuple[float, float, int]:
        chance = error_probability(flag)
        return (-(chance if chance is not None else -1.0), flag.label_quality, flag.position)

    return sorted(flags, key=key)


def _precision_dict(row: ClassPrecision) -> dict[str, object]:
    return {
        "label": row.label,
        "confirmed": row.confirmed,
        "rejected": row.rejected,
        "precision": row.precision.estimate,
        "lower": row.precision.lower,
        "upper": row.precision.upper,
    }


def _do_stats(outbox: Outbox, args: argparse.Namespace) -> int:
    if not 0.0 < args.confidence < 1.0:
        print("labelwatch flags stats: error: --confidence must be in (0, 1)", file=sys.stderr)
        return 2
    try:
        stats = VerdictBook(outbox).stats(args.confidence)
    except PublicError as exc:
        print(f"labelwatch flags stats: error: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        doc = {
            "confidence": stats.confidence,
            "overall": _precision_dict(stats.overall),
            "classes": [_precision_dict(c) for c in stats.classes],
        }
        print(json.dumps(doc, sort_keys=True))
        return 0
    pct = f"{stats.confidence * 100:g}%"
    print(f"{'CLASS':32} {'CONFIRMED':>9} {'REJECTED':>8} {'PRECISION':>9}  {pct} INTERVAL")
    for row in (*stats.classes, stats.overall):
        name = row.label or "(all classes)"
        if row.confirmed + row.rejected == 0:
            print(f"{name:32} {0:>9} {0:>8} {'-':>9}  -")
            continue
        p = row.precision
        print(
            f"{name:32} {row.confirmed:>9} {row.rejected:>8} {p.estimate:>9.3f}  "
            f"[{p.lower:.3f}, {p.upper:.3f}]"
        )
    return 0


def _summary(flag: Flag) -> str:
    issues = ",".join(f"{i.kind.value[0]}:{i.label}" for i in flag.issues)
    chance = error_probability(flag)
    shown = f"{chance:6.3f}" if chance is not None else f"{'-':>6}"
    return (
        f"{flag.position:>8} {_iso(flag.flagged_at):20} {shown} {flag.label_quality:7.3f} "
        f"{flag.example_id[:24]:24} {issues}"
    )


def _do_list(outbox: Outbox, args: argparse.Namespace) -> int:
    after = args.after
    if args.pending_for is not None:
        consumer = outbox.consumer("sink", args.pending_for)
        if consumer is None:
            print(f"labelwatch flags: error: no sink named {args.pending_for!r}", file=sys.stderr)
            return 1
        after = max(after, consumer.cursor)
    if args.order == "review":
        flags = review_order(outbox.flags(after=after, limit=args.scan, since=args.since))
        flags = flags[: args.limit]
    else:
        flags = outbox.flags(after=after, limit=args.limit, since=args.since)
    if args.json:
        for flag in flags:
            print(flag.to_json())
        return 0
    print(f"{'POSITION':>8} {'FLAGGED AT':20} {'ERR P':>6} {'QUALITY':>7} {'EXAMPLE':24} ISSUES")
    for flag in flags:
        print(_summary(flag))
    return 0


def _do_show(outbox: Outbox, args: argparse.Namespace) -> int:
    flag = outbox.get(args.key)
    letters = [
        d for d in outbox.dead_letters() if args.key in (d.flag.flag_id, str(d.flag.position))
    ]
    if flag is None and not letters:
        print(f"labelwatch flags: error: no flag {args.key!r} in {outbox.path}", file=sys.stderr)
        return 1
    shown = flag if flag is not None else letters[0].flag
    print(json.dumps(shown.to_dict(), indent=2, ensure_ascii=False))
    print()
    for consumer in outbox.consumers():
        pending = outbox.still_pending(consumer.kind, consumer.name, [shown.position])
        state = "pending" if pending else "done"
        print(f"{consumer.kind:6} {consumer.name:24} {state}")
    for letter in letters:
        requeued = f", requeued {_iso(letter.requeued_at)}" if letter.requeued_at else ""
        print(
            f"dead letter for {letter.sink}: {letter.attempts} attempts, {_iso(letter.dead_at)}"
            f"{requeued}: {letter.error}"
        )
    return 0


def _do_replay(outbox: Outbox, args: argparse.Namespace) -> int:
    kind: ConsumerKind = "sink" if args.sink is not None else "watch"
    name: str = args.sink if args.sink is not None else args.consumer
    if args.from_position is not None:
        cursor = max(0, args.from_position - 1)
    else:
        cursor = outbox.position_before(args.since)
    if outbox.consumer(kind, name) is None:
        outbox.ensure_consumer(kind, name, cursor=cursor)
        print(f"created {kind} consumer {name!r} at cursor {cursor}")
    else:
        outbox.set_cursor(kind, name, cursor)
        print(f"{kind} {name!r}: cursor set to {cursor}")
    backlog = outbox.backlog(kind, name)
    print(f"{backlog.pending} flags will be delivered again")
    return 0


def _do_requeue(outbox: Outbox, args: argparse.Namespace) -> int:
    count = outbox.requeue_dead(args.sink, args.flag_ids)
    print(f"requeued {count} dead letters for {args.sink}")
    if args.flag_ids and count < len(args.flag_ids):
        print("some flag ids were not dead letters of this sink", file=sys.stderr)
        return 1
    return 0
