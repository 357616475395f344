"""Client processes and one measurement cell.

A cell is ``clients`` concurrent clients calling one server the same way (unary or
stream, ``batch`` examples a message) for ``duration`` seconds. Clients are threads
spread over up to ``processes`` spawned processes of a :class:`ClientPool`, so the
clients' own Python (building and parsing messages, cleanlab for the peer) is not
capped by one GIL. Every client has its own channel and TCP connection (a local
subchannel pool), so with ``--workers N`` the kernel spreads them over the workers.

Timing: every process builds its requests and warms its channels up, then all start
at one instant; each client stops issuing calls at ``start + duration`` and finishes
the call in flight. Throughput is all examples answered over the time from the
start to the last answer; latencies are per call (unary only).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray

from servebench.limit import percentile_ms
from servebench.workloads import Rows, Workload, batch_indices, make_rows

SYSTEMS = ("labelwatch", "peer", "peer-model")
"""labelwatch; MLServer + cleanlab scoring on the client; MLServer alone (model only)."""
_CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


@dataclass(frozen=True)
class CellSpec:
    """One measurement: ``clients`` clients of ``system`` at ``target``.

    ``mode``: ``unary`` (one call at a time per client), ``stream`` (one long
    stream per client with up to ``depth`` messages in flight) or ``columnar``
    (labelwatch only: unary ScoreBatch calls, probabilities or features as one
    tensor). ``peer_raw``: the peer's tensors travel as ``raw_input_contents``
    bytes, as tritonclient sends them.
    """

    system: str
    target: str
    mode: str
    batch: int
    clients: int
    workload: Workload
    duration: float
    depth: int = 2
    peer_model: str = "model"
    peer_raw: bool = True
    call_timeout: float = 120.0


@dataclass
class ThreadStats:
    """What one client thread measured (monotonic seconds)."""

    examples: int = 0
    calls: int = 0
    latencies: list[float] = field(default_factory=list)
    finished: float = 0.0
    errors: list[str] = field(default_factory=list)
    filter_skipped: int = 0
    filter_ran: int = 0


@dataclass(frozen=True)
class CellResult:
    """Aggregated outcome of a cell."""

    examples_per_s: float
    p50_ms: float
    p99_ms: float
    calls: int
    examples: int
    elapsed_s: float
    errors: int
    first_error: str = ""
    filter_skipped: int = 0
    filter_ran: int = 0


# ---------------------------------------------------------------- in the client process


def _labelwatch_requests(rows: Rows, batch: int, offset: int) -> list[Any]:
    from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

    out = []
    for idx in batch_indices(rows.n, batch):
        idx = (idx + offset) % rows.n
        request = pb.ScoreRequest()
        for j, i in enumerate(idx):
            ex = request.examples.add(
                id=f"{j}-{i}", label_indices=np.flatnonzero(rows.labels[i]).tolist()
            )
            if rows.texts is not None:
                ex.text = rows.texts[i]
            elif rows.features is not None:
                ex.features.values.extend(rows.features[i].tolist())
            else:
                assert rows.probs is not None
                ex.probabilities.values.extend(rows.probs[i].tolist())
        out.append(request)
    return out


def _labelwatch_batch_requests(rows: Rows, batch: int, offset: int) -> list[Any]:
    """ScoreBatch requests: the same rows as :func:`_labelwatch_requests`, as arrays."""
    from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

    if rows.texts is not None:
        raise ValueError("ScoreBatch takes probabilities or features, not text")
    out = []
    for idx in batch_indices(rows.n, batch):
        idx = (idx + offset) % rows.n
        if rows.features is not None:
            kind, values = pb.TENSOR_KIND_FEATURES, rows.features[idx].astype("<f4")
        else:
            assert rows.probs is not None
            kind, values = pb.TENSOR_KIND_PROBABILITIES, rows.probs[idx].astype("<f4")
        tags = rows.labels[idx]
        out.append(
            pb.ScoreBatchRequest(
                ids=[f"{j}-{i}" for j, i in enumerate(idx)],
                kind=kind,
                rows=len(idx),
                cols=values.shape[1],
                values=values.tobytes(),
                tag_indptr=np.concatenate([[0], np.cumsum(tags.sum(axis=1))]).tolist(),
                tag_indices=np.nonzero(tags)[1].tolist(),
            )
        )
    return out


class _Client:
    """One client: a channel, prebuilt requests, and the call loop of its system and mode."""

    def __init__(self, spec: CellSpec, rows: Rows, number: int) -> None:
        self.spec = spec
        self.channel = grpc.insecure_channel(spec.target, options=_CHANNEL_OPTIONS)
        self.scorer: Any = None
        if spec.system == "peer":
            from servebench.peer import CleanlabScorer

            self.scorer = CleanlabScorer()
        offset = number * 7 * spec.batch
        self.sizes = [spec.batch] * 8
        self.label_lists: list[list[list[int]]] = []
        if spec.system == "labelwatch":
            from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc

            stub = pb_grpc.LabelQualityStub(self.channel)
            self.unary: Callable[..., Any] = stub.Score
            if spec.mode == "columnar":
                self.requests = _labelwatch_batch_requests(rows, spec.batch, offset)
                self.unary = stub.ScoreBatch
            else:
                self.requests = _labelwatch_requests(rows, spec.batch, offset)
            self.stream: Callable[..., Iterator[Any]] = stub.ScoreStream
        else:
            from servebench.peer import infer_request, stubs

            _, v2_grpc = stubs()
            stub = v2_grpc.GRPCInferenceServiceStub(self.channel)
            self.requests = []
            for idx in batch_indices(rows.n, spec.batch):
                idx = (idx + offset) % rows.n
                self.requests.append(infer_request(rows, idx, spec.peer_model, raw=spec.peer_raw))
                self.label_lists.append([np.flatnonzero(rows.labels[i]).tolist() for i in idx])
            self.unary = stub.ModelInfer
            self.stream = stub.ModelStreamInfer

    def _after(self, i: int, response: Any) -> None:
        """The client's work on a response: count it; the peers parse (and score) it."""
        if self.spec.system == "labelwatch":
            answered = len(
                response.label_quality if self.spec.mode == "columnar" else response.results
            )
            if answered != self.sizes[i]:
                raise RuntimeError(f"{answered} results for {self.sizes[i]}")
            return
        from servebench.peer import response_probs

        probs = response_probs(response)
        if probs.shape[0] != self.sizes[i]:
            raise RuntimeError(f"{probs.shape[0]} rows for {self.sizes[i]}")
        if self.spec.system == "peer":
            self.scorer.score(self.label_lists[i], probs)

    def warm_up(self) -> None:
        for i in range(2):
            self._after(i, self.unary(self.requests[i], timeout=self.spec.call_timeout))
        if self.scorer is not None:
            self.scorer.filter_skipped = self.scorer.filter_ran = 0

    def run(self, start: float, end: float, stats: ThreadStats) -> None:
        while time.monotonic() < start:
            time.sleep(min(0.001, max(0.0, start - time.monotonic())))
        try:
            if self.spec.mode in ("unary", "columnar"):
                self._run_unary(end, stats)
            else:
                self._run_stream(end, stats)
        except grpc.RpcError as exc:
            stats.errors.append(f"{exc.code().name}: {exc.details()}")
        except Exception as exc:  # reported in the cell's result, never silently dropped
            stats.errors.append(f"{type(exc).__name__}: {exc}")
        stats.finished = time.monotonic()
        if self.scorer is not None:
            stats.filter_skipped = self.scorer.filter_skipped
            stats.filter_ran = self.scorer.filter_ran

    def _run_unary(self, end: float, stats: ThreadStats) -> None:
        i = 0
        n = len(self.requests)
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                return
            response = self.unary(self.requests[i % n], timeout=self.spec.call_timeout)
            self._after(i % n, response)
            stats.latencies.append(time.monotonic() - t0)
            stats.examples += self.sizes[i % n]
            stats.calls += 1
            i += 1

    def _run_stream(self, end: float, stats: ThreadStats) -> None:
        window = threading.Semaphore(self.spec.depth)
        n = len(self.requests)

        def produce() -> Iterator[Any]:
            i = 0
            while True:
                window.acquire()  # at most `depth` messages in flight: we pace the producer
                if time.monotonic() >= end:
                    return
                yield self.requests[i % n]
                i += 1

        for i, response in enumerate(self.stream(produce(), timeout=self.spec.call_timeout)):
            self._after(i % n, response)
            stats.examples += self.sizes[i % n]
            stats.calls += 1
            window.release()


def _next(inbox: Any) -> Any:
    """The next message; exit when the parent is gone (killed runs leave no orphans)."""
    parent = os.getppid()
    while True:
        try:
            return inbox.get(timeout=2.0)
        except queue.Empty:
            if os.getppid() != parent:
                raise SystemExit(0) from None


def _wait_go(inbox: Any, cell: int) -> float | None:
    """Block for the parent's go time (or None: abort) for ``cell``; skip stale messages."""
    while True:
        message = _next(inbox)
        if message is None:
            raise SystemExit(0)
        if message[1] == cell and message[0] == "go":
            return float(message[2])
        if message[1] == cell and message[0] == "abort":
            return None


def _client_main(index: int, inbox: Any, outbox: Any) -> None:
    """A client process: prepare a task, report ready, run at the go time, report stats.

    Messages in: ``("task", cell, spec, first, count)``, ``("go", cell, start)``,
    ``("abort", cell)``, None (exit). Out: ``(kind, cell, index, payload)``.
    """
    rows_cache: dict[Workload, Rows] = {}
    while True:
        message = _next(inbox)
        if message is None:
            return
        if message[0] != "task":
            continue  # a stale go/abort of a cell that failed before this process joined it
        _, cell, spec, first, count = message
        clients: list[_Client] = []
        try:
            rows = rows_cache.get(spec.workload)
            if rows is None:
                rows = rows_cache[spec.workload] = make_rows(spec.workload)
            clients = [_Client(spec, rows, first + j) for j in range(count)]
            for client in clients:
                client.warm_up()
        except Exception as exc:  # reported to the parent, which aborts the cell
            outbox.put(("error", cell, index, f"{type(exc).__name__}: {exc}"))
        else:
            outbox.put(("ready", cell, index, None))
        start = _wait_go(inbox, cell)
        if start is None:
            for client in clients:
                client.channel.close()
            continue
        stats = [ThreadStats() for _ in clients]
        threads = [
            threading.Thread(target=c.run, args=(start, start + spec.duration, s))
            for c, s in zip(clients, stats, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for client in clients:
            client.channel.close()
        outbox.put(("done", cell, index, stats))


# ---------------------------------------------------------------- in the parent


class ClientPool:
    """Up to ``processes`` client processes (spawned once, reused by every cell)."""

    def __init__(self, processes: int = 16) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._max = processes
        self._procs: list[SpawnProcess] = []
        self._inboxes: list[Any] = []
        self._outbox: Any = self._ctx.Queue()
        self._cell = 0

    def _ensure(self, n: int) -> None:
        for i, proc in enumerate(self._procs):
            if not proc.is_alive():  # crashed (e.g. an import failed): start a fresh one
                self._procs[i] = self._start(i, self._inboxes[i])
        while len(self._procs) < min(n, self._max):
            inbox = self._ctx.Queue()
            self._procs.append(self._start(len(self._procs), inbox))
            self._inboxes.append(inbox)

    def _start(self, index: int, inbox: Any) -> SpawnProcess:
        proc = self._ctx.Process(
            target=_client_main, args=(index, inbox, self._outbox), daemon=True
        )
        proc.start()
        return proc

    def _collect(self, cell: int, expected: int, timeout: float) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"client processes answered {len(out)} of {expected}")
            try:
                kind, from_cell, _, payload = self._outbox.get(timeout=min(remaining, 1.0))
                if from_cell == cell:  # answers of an aborted cell arrive late: dropped
                    out.append((kind, payload))
            except queue.Empty:
                dead = [i for i, p in enumerate(self._procs) if not p.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"client process {dead[0]} died (exit code "
                        f"{self._procs[dead[0]].exitcode}); see its stderr"
                    ) from None
        return out

    def run(self, spec: CellSpec, *, prepare_timeout: float = 300.0) -> CellResult:
        """Run one cell; errors of calls are counted in the result, not raised."""
        self._ensure(spec.clients)
        self._cell += 1
        cell = self._cell
        used = min(spec.clients, len(self._procs))
        per = [spec.clients // used + (1 if i < spec.clients % used else 0) for i in range(used)]
        first = 0
        for i in range(used):
            self._inboxes[i].put(("task", cell, spec, first, per[i]))
            first += per[i]
        try:
            replies = self._collect(cell, used, prepare_timeout)
        except BaseException:
            self._send(used, ("abort", cell))
            raise
        failed = [payload for kind, payload in replies if kind == "error"]
        if failed:
            self._send(used, ("abort", cell))
            raise RuntimeError(f"client setup failed: {failed[0]}")
        start = time.monotonic() + 0.3
        self._send(used, ("go", cell, start))
        done = self._collect(cell, used, spec.duration + spec.call_timeout + 60.0)
        stats: list[ThreadStats] = [s for _, batch in done for s in batch]
        return aggregate(stats, start)

    def _send(self, used: int, message: tuple[Any, ...]) -> None:
        for inbox in self._inboxes[:used]:
            inbox.put(message)

    def close(self) -> None:
        """Stop the client processes."""
        for inbox in self._inboxes:
            inbox.put(None)
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
        self._procs.clear()
        self._inboxes.clear()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def aggregate(stats: list[ThreadStats], start: float) -> CellResult:
    """Pool the threads' numbers: throughput from the common start to the last answer."""
    examples = sum(s.examples for s in stats)
    finished = max((s.finished for s in stats), default=start)
    elapsed = max(finished - start, 1e-9)
    latencies: NDArray[np.float64] = np.asarray(
        [x for s in stats for x in s.latencies], dtype=np.float64
    )
    errors = [e for s in stats for e in s.errors]
    return CellResult(
        examples_per_s=examples / elapsed,
        p50_ms=percentile_ms(latencies, 50),
        p99_ms=percentile_ms(latencies, 99),
        calls=sum(s.calls for s in stats),
        examples=examples,
        elapsed_s=elapsed,
        errors=len(errors),
        first_error=errors[0] if errors else "",
        filter_skipped=sum(s.filter_skipped for s in stats),
        filter_ran=sum(s.filter_ran for s in stats),
    )
