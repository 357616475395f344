"""``labelwatch annotators``: per-annotator quality from the outbox, with the server up or down."""

from __future__ import annotations

import argparse
import json
import sys

from labelwatch.annotators import SORT_KEYS, AnnotatorQuality, QualityReport, interval_of, page
from labelwatch.commands.flags_admin import outbox_path
from labelwatch.errors import PublicError
from labelwatch.outbox import Outbox, OutboxError
from labelwatch.verdicts import VerdictBook

_DESCRIPTION = """\
Per annotator_id: examples scored and flagged, flags reviewers confirmed and
rejected, and an error-rate estimate with an interval, shrunk towards the global
rate for annotators with few examples (beta-binomial empirical Bayes; the method
is in docs/label-studio.md#per-annotator-quality). Worst first by default.

  labelwatch annotators
  labelwatch annotators --order-by scored --limit 100 --json

Reads the outbox (--outbox, else $LABELWATCH_OUTBOX, else DATA_DIR/outbox.sqlite3),
like `labelwatch flags`.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``annotators`` subcommand."""
    parser = subparsers.add_parser(
        "annotators",
        help="per-annotator quality: scored, flagged, confirmed, error rate",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--outbox", default=None, metavar="PATH", help="the outbox file.")
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR", help="directory holding outbox.sqlite3."
    )
    parser.add_argument(
        "--order-by", choices=sorted(SORT_KEYS), default="error_rate", help="default error_rate."
    )
    parser.add_argument("--ascending", action="store_true", help="smallest first.")
    parser.add_argument("--offset", type=int, default=0, help="rows to skip (default 0).")
    parser.add_argument("--limit", type=int, default=50, help="rows shown (default 50).")
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="interval coverage (default 0.95)."
    )
    parser.add_argument("--json", action="store_true", help="one JSON object.")
    parser.set_defaults(func=run)


def _row(q: AnnotatorQuality, report: QualityReport) -> dict[str, object]:
    interval = interval_of(q, report)
    return {
        "annotator_id": q.annotator_id,
        "scored": q.scored,
        "flagged": q.flagged,
        "confirmed": q.confirmed,
        "rejected": q.rejected,
        "estimated_errors": q.estimated_errors,
        "raw_error_rate": q.raw_rate,
        "error_rate": interval.estimate,
        "error_rate_lower": interval.lower,
        "error_rate_upper": interval.upper,
    }


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON); 1 when the outbox cannot be read, 2 for bad arguments."""
    if not 0.0 < args.confidence < 1.0 or args.limit < 1 or args.offset < 0:
        print(
            "labelwatch annotators: error: need 0 < --confidence < 1, --limit >= 1, --offset >= 0",
            file=sys.stderr,
        )
        return 2
    try:
        outbox = Outbox(outbox_path(args), create=False, busy_timeout_seconds=30.0)
        try:
            if not outbox.writable and outbox.last_error:
                raise OutboxError(outbox.last_error)
            report = VerdictBook(outbox).annotators(args.confidence)
        finally:
            outbox.close()
    except (OutboxError, PublicError) as exc:
        print(f"labelwatch annotators: error: {exc}", file=sys.stderr)
        return 1
    rows, _ = page(
        report,
        order_by=args.order_by,
        descending=not args.ascending,
        offset=args.offset,
        limit=args.limit,
    )
    if args.json:
        doc = {
            "total": len(report.annotators),
            "precision": report.precision,
            "global_error_rate": report.global_rate,
            "confidence": report.confidence,
            "annotators": [_row(q, report) for q in rows],
        }
        print(json.dumps(doc, sort_keys=True))
        return 0
    pct = f"{report.confidence * 100:g}%"
    print(
        f"{len(report.annotators)} annotators; global error rate {report.global_rate:.4f}; "
        f"precision of flags {report.precision:.3f}"
    )
    print(
        f"{'ANNOTATOR':28} {'SCORED':>8} {'FLAGGED':>8} {'CONFIRMED':>9} {'REJECTED':>8} "
        f"{'RAW':>7} {'ERROR RATE':>10}  {pct} INTERVAL"
    )
    for q in rows:
        r = interval_of(q, report)
        print(
            f"{q.annotator_id[:28]:28} {q.scored:>8} {q.flagged:>8} {q.confirmed:>9} "
            f"{q.rejected:>8} {q.raw_rate:>7.4f} {r.estimate:>10.4f}  "
            f"[{r.lower:.4f}, {r.upper:.4f}]"
        )
    return 0
