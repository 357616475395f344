"""Cut-offs adapted to reviewers' verdicts (opt-in: ``--adapt-to-verdicts``).

:class:`Adapter` owns the served per-class cut-offs (the rule is
:mod:`labelwatch.scoring.adapt`):

* at start it loads the newest version stored in the outbox for the served model
  version (all 0 when there is none);
* :meth:`Adapter.step` (called every ``--adapt-interval-seconds`` by its thread)
  gathers, per class, the verdicts on flags whose score reaches the class's
  current cut-off, moves each cut-off by at most one bounded step, and, when any
  moved, stores a new version in the outbox and logs each change
  (``event=cutoff_changed``);
* :attr:`Adapter.cutoffs` is what the pipeline gates flags with; a version
  stored by another worker process is picked up at the next step (and a step
  right after another worker's is skipped, so the cut-offs move at most one
  step per interval).

Payload of a version: ``{"target_precision": P, "cutoffs": {class: c},
"changes": [{"class", "from", "to", "reason", "posterior_precision",
"confirmed", "rejected"}]}``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from labelwatch.outbox import CutoffVersion, Outbox, OutboxError, VerdictRow
from labelwatch.scoring.adapt import AdaptPolicy, ClassEvidence, next_cutoff

log = logging.getLogger(__name__)


def verdict_score(row: VerdictRow) -> float:
    """The flag score of a judged flag (the same as the gate's, from what the verdict kept)."""
    if row.error_probability is not None:
        return row.error_probability
    return row.probability if row.kind == "missing" else 1.0 - row.probability


def evidence(rows: Sequence[VerdictRow], cutoffs: dict[str, float]) -> dict[str, ClassEvidence]:
    """Per class, the verdicts on flags whose score reaches its cut-off."""
    counts: dict[str, list[float]] = {}
    for row in rows:
        if verdict_score(row) < cutoffs.get(row.label, 0.0):
            continue
        c = counts.setdefault(row.label, [0, 0, 0.0, 0])
        if row.verdict == "CONFIRMED":
            c[0] += 1
        else:
            c[1] += 1
        if row.error_probability is not None:
            c[2] += row.error_probability
            c[3] += 1
    return {
        label: ClassEvidence(int(c[0]), int(c[1]), c[2] / c[3] if c[3] else None)
        for label, c in counts.items()
    }


class Adapter:
    """The served cut-offs of ``class_names`` for ``model_version`` (see the module doc)."""

    def __init__(
        self,
        outbox: Outbox,
        class_names: Sequence[str],
        model_version: str,
        policy: AdaptPolicy,
        *,
        interval_seconds: float = 60.0,
    ) -> None:
        self._outbox = outbox
        self._names = tuple(class_names)
        self._index = {name: k for k, name in enumerate(self._names)}
        self._model_version = model_version
        self.policy = policy
        self._interval = interval_seconds
        self._lock = threading.Lock()
        self._cutoffs = np.zeros(len(self._names), dtype=np.float64)
        self.version: CutoffVersion | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="adapt-cutoffs", daemon=True)
        self._load()

    @property
    def cutoffs(self) -> NDArray[np.float64]:
        """``(K,)`` the cut-offs in force (a copy)."""
        with self._lock:
            return np.array(self._cutoffs, dtype=np.float64)

    def as_dict(self) -> dict[str, float]:
        """The cut-offs above 0, by class."""
        values = self.cutoffs
        return {name: float(values[k]) for k, name in enumerate(self._names) if values[k] > 0}

    def _apply(self, version: CutoffVersion) -> None:
        payload = json.loads(version.payload)
        values = np.zeros(len(self._names), dtype=np.float64)
        for name, cut in dict(payload.get("cutoffs", {})).items():
            if name in self._index:
                values[self._index[name]] = float(cut)
        with self._lock:
            self._cutoffs = values
            self.version = version

    def _load(self) -> None:
        try:
            latest = self._outbox.latest_cutoffs(self._model_version)
        except OutboxError as exc:
            log.error("event=cutoffs_not_loaded error=%r", str(exc))
            return
        if latest is not None:
            self._apply(latest)
            log.info(
                "event=cutoffs_loaded version=%d classes_above_zero=%d",
                latest.version,
                len(self.as_dict()),
            )

    def step(self) -> CutoffVersion | None:
        """One adaptation pass; the new version when a cut-off moved, else None.

        Skipped while the newest version is younger than half the interval: with
        ``--workers N`` every worker steps, and the cut-offs must still move at most
        one step per interval.
        """
        self._load()  # another worker may have moved them
        if (
            self.version is not None
            and self._outbox.clock() - self.version.created_at < self._interval / 2
        ):
            return None
        current = self.as_dict()
        found = evidence(self._outbox.all_verdicts(), current)
        changes = []
        cutoffs = dict(current)
        for label in sorted(found):
            if label not in self._index:
                continue
            before = current.get(label, 0.0)
            decision = next_cutoff(before, found[label], self.policy)
            if decision.cutoff != before:
                cutoffs[label] = decision.cutoff
                changes.append(
                    {
                        "class": label,
                        "from": before,
                        "to": decision.cutoff,
                        "reason": decision.reason,
                        "posterior_precision": decision.posterior_precision,
                        "confirmed": found[label].confirmed,
                        "rejected": found[label].rejected,
                    }
                )
        if not changes:
            return None
        payload = {
            "target_precision": self.policy.target,
            "cutoffs": {k: v for k, v in sorted(cutoffs.items()) if v > 0},
            "changes": changes,
        }
        version = self._outbox.add_cutoffs(self._model_version, json.dumps(payload))
        self._apply(version)
        for change in changes:
            log.info(
                "event=cutoff_changed version=%d class=%r from=%.3f to=%.3f reason=%s "
                "posterior_precision=%.3f confirmed=%d rejected=%d target=%.3f",
                version.version,
                change["class"],
                change["from"],
                change["to"],
                change["reason"],
                change["posterior_precision"],
                change["confirmed"],
                change["rejected"],
                self.policy.target,
            )
        return version

    def start(self) -> None:
        """Adapt every ``interval_seconds`` until :meth:`stop`."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a pass in progress finishes)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _loop(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.step()
            except OutboxError as exc:
                log.error("event=cutoffs_not_adapted error=%r", str(exc))
            except Exception:  # a bug must not stop adaptation silently
                log.exception("event=cutoffs_adapter_error")


def labels_from_verdicts(
    outbox: Outbox,
    ids: Sequence[str],
    class_names: Sequence[str],
    labels: NDArray[np.bool_],
) -> tuple[NDArray[np.bool_], int]:
    """``labels`` ``(N, K)`` with reviewers' confirmed corrections applied; and how many tags
    changed (``labelwatch calibrate --verdicts``).

    Per (flag, class) the majority of verdicts decides (a tie keeps the given tag); a
    CONFIRMED flag's tag is set the suggested way (added for MISSING, removed for
    SPURIOUS) on the row whose id is the flag's example id. Flags no longer in the
    outbox, and examples or classes not in the data, are skipped.
    """
    votes: dict[tuple[str, str], list[int]] = {}
    kinds: dict[tuple[str, str], str] = {}
    for row in outbox.all_verdicts():
        key = (row.flag_id, row.label)
        tally = votes.setdefault(key, [0, 0])
        tally[0 if row.verdict == "CONFIRMED" else 1] += 1
        kinds[key] = row.kind
    rows = {example_id: i for i, example_id in enumerate(ids)}
    columns = {name: k for k, name in enumerate(class_names)}
    out = np.array(labels, dtype=np.bool_, copy=True)
    changed = 0
    examples: dict[str, str | None] = {}
    for (flag_id, label), (confirmed, rejected) in sorted(votes.items()):
        if confirmed <= rejected or label not in columns:
            continue
        if flag_id not in examples:
            flag = outbox.get(flag_id)
            examples[flag_id] = None if flag is None else flag.example_id
        example_id = examples[flag_id]
        if example_id is None or example_id not in rows:
            continue
        i, k = rows[example_id], columns[label]
        want = kinds[(flag_id, label)] == "missing"
        if bool(out[i, k]) != want:
            out[i, k] = want
            changed += 1
    return out, changed
