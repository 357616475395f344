"""The serving model and its reloads: one holder, swapped atomically between batches.

:class:`ModelHolder` owns the pipeline (model + artifact + version) that scores. The
batcher reads :attr:`ModelHolder.current` once per merged batch, so a swap takes
effect between two batches: a batch already taken finishes on the pipeline it
started with, and every result carries the ``model_version`` that produced it.

:class:`ModelLifecycle` loads a candidate from the model repository
(:mod:`labelwatch.repository`) and checks it *beside* the serving one (which keeps
serving): the model must load, match its artifact (class count, names, sha256),
take the same input and classes as the serving version (clients' requests are
decoded against them), and answer a warm-up call. Only then is it swapped in. A
candidate that fails is refused with one log line giving the reason; nothing
changes. Reloads run one at a time, triggered by SIGHUP (:meth:`request_reload`),
``Admin.ReloadModel`` (:meth:`reload`) or a poll of the repository
(``--watch-repository``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from labelwatch.domain import InputKind, LabeledExample, ModelSpec
from labelwatch.errors import ModelFailure, StartupError
from labelwatch.metrics.models import ModelMetrics
from labelwatch.pipeline import Pipeline
from labelwatch.repository import ModelRepository, ModelVersion, RepositoryError

log = logging.getLogger(__name__)

LoadVersion = Callable[[ModelVersion], Pipeline]
"""Builds the pipeline of one repository version (raises StartupError/ValueError)."""


class ModelHolder:
    """The serving pipeline and when it started serving (Unix seconds)."""

    def __init__(self, pipeline: Pipeline, *, loaded_at: float | None = None) -> None:
        self._lock = threading.Lock()
        self._pipeline = pipeline
        self._loaded_at = time.time() if loaded_at is None else loaded_at

    @property
    def current(self) -> Pipeline:
        """The pipeline to score the next batch with (read once per batch)."""
        return self._pipeline  # one reference read: atomic, no lock on the scoring path

    @property
    def loaded_at(self) -> float:
        """Unix seconds the current pipeline started serving."""
        return self._loaded_at

    def swap(self, pipeline: Pipeline) -> Pipeline:
        """Serve ``pipeline`` from the next batch on; return the one it replaces."""
        with self._lock:
            old = self._pipeline
            self._pipeline = pipeline
            self._loaded_at = time.time()
        return old


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload did: ``outcome`` is swapped, unchanged or refused.

    ``version``: the version serving afterwards; ``previous``: the one before;
    ``candidate``: the version the repository named ("" if it named none);
    ``reason``: why it was refused or left unchanged ("" when swapped).
    """

    outcome: str
    version: str
    previous: str
    candidate: str = ""
    reason: str = ""


def describe_spec(spec: ModelSpec) -> str:
    """``text input, 124 classes`` / ``features (D=4) input, 5 classes`` (for messages)."""
    kind = spec.input_kind.value
    if spec.feature_dim is not None:
        kind = f"{kind} (D={spec.feature_dim})"
    return f"{kind} input, {spec.n_classes} classes"


def check_compatible(candidate: Pipeline, serving: Pipeline) -> None:
    """Refuse a candidate whose input or classes differ from the serving pipeline's.

    Requests are decoded against the serving spec before they reach a batch, so a
    swap must not change it. Raises :class:`StartupError`.
    """
    a, b = candidate.spec, serving.spec
    if a == b:
        return
    if a.class_names != b.class_names and a.n_classes == b.n_classes:
        first = next(
            i for i, (x, y) in enumerate(zip(a.class_names, b.class_names, strict=True)) if x != y
        )
        detail = f"class {first} is {a.class_names[first]!r}, serving {b.class_names[first]!r}"
    else:
        detail = f"it takes {describe_spec(a)}, the serving version {describe_spec(b)}"
    raise StartupError(
        f"version {candidate.model_version} does not fit the serving version "
        f"{serving.model_version}: {detail}; a change of input or classes needs a restart"
    )


def warm_up(pipeline: Pipeline) -> None:
    """One model call and scoring on a dummy example; raises ModelFailure if it fails."""
    spec = pipeline.spec
    labels = np.zeros(spec.n_classes, dtype=np.bool_)
    if spec.input_kind is InputKind.TEXT:
        example = LabeledExample(id="warm-up", labels=labels, text="")
    elif spec.input_kind is InputKind.FEATURES:
        features = np.zeros(spec.feature_dim or 0, dtype=np.float32)
        example = LabeledExample(id="warm-up", labels=labels, features=features)
    else:
        probabilities = np.full(spec.n_classes, 0.5, dtype=np.float64)
        example = LabeledExample(id="warm-up", labels=labels, probabilities=probabilities)
    pipeline.compute([example])


class ModelLifecycle:
    """Reloads ``holder`` from ``repository`` on request or when the repository changes.

    ``load`` builds a version's pipeline; ``on_swap(old, new)`` runs after a swap
    (metrics, logs). ``watch_seconds``: poll the repository this often (None: only
    on request). :meth:`start` runs the background thread, :meth:`close` stops it.
    """

    def __init__(
        self,
        holder: ModelHolder,
        repository: ModelRepository,
        load: LoadVersion,
        metrics: ModelMetrics,
        *,
        on_swap: Callable[[Pipeline, Pipeline], None] | None = None,
        watch_seconds: float | None = None,
    ) -> None:
        self.holder = holder
        self.repository = repository
        self._load = load
        self._metrics = metrics
        self._on_swap = on_swap
        self._watch_seconds = watch_seconds
        self._reload_lock = threading.Lock()
        self._wake = threading.Condition()
        self._requested = 0  # SIGHUPs not yet handled
        self._closed = False
        self._seen: tuple[object, ...] | None = None  # fingerprint of the last candidate tried
        self._last_error = ""  # the repository error logged last (the watcher logs changes)
        self._thread = threading.Thread(target=self._run, name="model-reload", daemon=True)
        metrics.loaded_at.set(holder.loaded_at)

    def start(self) -> None:
        """Start the background thread (signals and the repository watch)."""
        try:
            self._seen = self.repository.resolve().fingerprint()
        except RepositoryError:
            self._seen = None
        self._thread.start()

    def close(self) -> None:
        """Stop the background thread (a reload in progress finishes first)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    def request_reload(self) -> None:
        """Ask for a reload in the background (safe from a signal handler: no logging)."""
        with self._wake:
            self._requested += 1
            self._wake.notify()

    def reload(self, trigger: str) -> ReloadOutcome:
        """Load and check the version the repository names; swap it in if it passes.

        ``trigger``: signal, rpc or watch (a metric label). Blocks until done; one
        reload at a time.
        """
        with self._reload_lock:
            outcome = self._reload()
        self._metrics.reloads.labels(outcome.outcome, trigger).inc()
        level = logging.WARNING if outcome.outcome == "refused" else logging.INFO
        log.log(
            level,
            "event=model_reload outcome=%s trigger=%s version=%s previous=%s candidate=%s "
            "reason=%s",
            outcome.outcome,
            trigger,
            outcome.version,
            outcome.previous,
            outcome.candidate or "-",
            outcome.reason or "-",
        )
        return outcome

    def _reload(self) -> ReloadOutcome:
        serving = self.holder.current
        current = serving.model_version
        try:
            version = self.repository.resolve()
        except RepositoryError as exc:
            self._last_error = str(exc)
            return ReloadOutcome("refused", current, current, reason=str(exc))
        self._last_error = ""
        self._seen = version.fingerprint()
        if version.name == current:
            return ReloadOutcome(
                "unchanged",
                current,
                current,
                candidate=version.name,
                reason=f"version {current} is already serving",
            )
        started = time.perf_counter()
        try:
            candidate = self._load(version)
            check_compatible(candidate, serving)
            warm_up(candidate)
        except (StartupError, ValueError, ModelFailure, OSError) as exc:
            return ReloadOutcome(
                "refused", current, current, candidate=version.name, reason=str(exc)
            )
        self._metrics.reload_seconds.observe(time.perf_counter() - started)
        old = self.holder.swap(candidate)
        self._metrics.loaded_at.set(self.holder.loaded_at)
        if self._on_swap is not None:
            self._on_swap(old, candidate)
        return ReloadOutcome("swapped", candidate.model_version, current, candidate=version.name)

    def _changed(self) -> bool:
        """True when the repository names another candidate than the last one tried."""
        try:
            fingerprint = self.repository.resolve().fingerprint()
        except RepositoryError as exc:
            if str(exc) != self._last_error:  # one log line per distinct problem
                self._last_error = str(exc)
                log.warning("event=model_repository_unusable reason=%s", exc)
            return False
        self._last_error = ""
        return fingerprint != self._seen

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._requested and not self._closed:
                    self._wake.wait(self._watch_seconds)
                if self._closed:
                    return
                requested = self._requested
                self._requested = 0
            if requested:
                self.reload("signal")
            elif self._watch_seconds is not None and self._changed():
                self.reload("watch")
