"""Overload: shed at once past the bounds, keep admitted work healthy, drop expired work."""

from __future__ import annotations

import queue
import re
import statistics
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from labelwatch.codec import ExampleDecoder
from labelwatch.codec.proto import examples_from_request
from labelwatch.domain import InputKind, ModelSpec
from labelwatch.errors import Overloaded
from labelwatch.metrics import SecurityMetrics
from labelwatch.security.admission import Admission
from labelwatch.server import RunningServer
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_security import score_request
from support_server import (
    CLASS_NAMES,
    running_server,
    server_process,
    target_of,
    write_artifact,
)

SHED = "RESOURCE_EXHAUSTED"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_artifact(tmp_path_factory.mktemp("art") / "thresholds.json")


def _value(server: RunningServer, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


# --- the admission counter ------------------------------------------------------------------


def test_admission_refuses_at_once_past_max_inflight_and_frees_on_exit() -> None:
    registry = CollectorRegistry()
    admission = Admission(100, SecurityMetrics(registry))

    def one_more() -> None:
        with admission.admit(1):
            pass

    with admission.admit(60), ThreadPoolExecutor(1) as pool:
        with admission.admit(40):
            assert admission.inflight == 100
            # this thread holds both admissions until the attempt is back: an admit() that
            # waited for capacity instead of refusing would never come back
            refused = pool.submit(one_more).exception(timeout=30)
            assert isinstance(refused, Overloaded)
            assert "limit of 100 in flight (--max-inflight)" in str(refused)
        assert admission.inflight == 60
    assert admission.inflight == 0
    assert registry.get_sample_value("labelwatch_requests_shed_total", {"reason": "inflight"}) == 1
    assert registry.get_sample_value("labelwatch_inflight_examples") == 0


def test_admission_is_released_when_scoring_fails() -> None:
    admission = Admission(10, SecurityMetrics(CollectorRegistry()))
    with pytest.raises(RuntimeError), admission.admit(10):
        raise RuntimeError("model failed")
    assert admission.inflight == 0


# --- streams and queued calls ---------------------------------------------------------------


class _HeldStream:
    """A ScoreStream kept open: one request answered, then waiting for the next."""

    def __init__(self, stub: pb_grpc.LabelQualityStub) -> None:
        self._requests: queue.Queue[pb.ScoreRequest | None] = queue.Queue()
        self._requests.put(score_request(1))
        self.responses = stub.ScoreStream(iter(self._requests.get, None), timeout=30)

    def first(self) -> pb.ScoreResponse:
        return next(self.responses)

    def close(self) -> None:
        self._requests.put(None)
        for _ in self.responses:
            pass


def test_stream_past_max_streams_is_refused_and_a_closed_one_frees_its_slot(
    artifact: Path,
) -> None:
    with running_server(thresholds=artifact, threads=6, max_streams=2) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            held = [_HeldStream(stub), _HeldStream(stub)]
            for stream in held:
                assert stream.first().results[0].id == "ex-0"
            extra = _HeldStream(stub)
            with pytest.raises(grpc.RpcError) as err:
                extra.first()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert "--max-streams" in err.value.details()  # type: ignore[attr-defined]
            assert stub.Score(score_request(), timeout=5).results  # unary calls still served
            held.pop().close()
            again = _HeldStream(stub)
            assert again.first().results
            again.close()
            held.pop().close()
        assert _value(server, "labelwatch_requests_shed_total", reason="streams") == 1
        assert _value(server, "labelwatch_open_streams") == 0


def test_calls_past_threads_plus_max_queued_calls_are_refused_at_once(artifact: Path) -> None:
    # two handler threads, both held by open streams, and no queue: a third call must
    # not wait for a thread but be refused right away
    with running_server(
        thresholds=artifact, threads=2, max_streams=2, max_queued_calls=0
    ) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            held = [_HeldStream(stub), _HeldStream(stub)]
            for stream in held:
                stream.first()
            # the held streams are released only after this call is back: a call that waited
            # for a thread would end DEADLINE_EXCEEDED, not RESOURCE_EXHAUSTED
            with pytest.raises(grpc.RpcError) as err:
                stub.Score(score_request(), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            for stream in held:
                stream.close()
            assert stub.Score(score_request(), timeout=10).results


# --- deadlines -----------------------------------------------------------------------------


def test_a_request_whose_deadline_passes_before_scoring_is_dropped_and_counted(
    artifact: Path,
) -> None:
    n = 40_000
    request = score_request(n)
    big = request.SerializeToString()
    spec = ModelSpec(InputKind.PROBABILITIES_ONLY, None, CLASS_NAMES)
    started = time.perf_counter()
    examples_from_request(request, ExampleDecoder(spec), n)
    validation_seconds = time.perf_counter() - started
    # long enough to arrive and be admitted, far too short to survive validation
    timeout = validation_seconds / 4
    with running_server(thresholds=artifact, max_batch=n, max_inflight=n) as server:
        with grpc.insecure_channel(
            target_of(server), options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            # pre-serialized, so the client spends none of the deadline encoding it
            score_raw = channel.unary_unary("/labelwatch.v1.LabelQuality/Score")
            with pytest.raises(grpc.RpcError) as err:
                score_raw(big, timeout=timeout)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
            # the server drops it on its own clock; wait for that to show
            give_up = time.monotonic() + 10
            while time.monotonic() < give_up:
                if _value(server, "labelwatch_deadline_expired_total", grpc_method="Score"):
                    break
                time.sleep(0.05)
            assert _value(server, "labelwatch_deadline_expired_total", grpc_method="Score") == 1
            version = server.pipeline.model_version
            assert _value(server, "labelwatch_examples_scored_total", model_version=version) == 0
            assert _value(server, "labelwatch_batch_size_examples_count") == 0
            assert _value(server, "labelwatch_inflight_examples") == 0
            # the server is fine: a request with time to spare is scored
            ok = pb_grpc.LabelQualityStub(channel).Score(score_request(3), timeout=10)
            assert len(ok.results) == 3


# --- 10x capacity --------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _inflight(metrics_url: str) -> float:
    """The server's ``labelwatch_inflight_examples`` gauge, scraped from its /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^labelwatch_inflight_examples (\S+)$", text, re.M)
    assert match is not None, "no labelwatch_inflight_examples on /metrics"
    return float(match.group(1))


def _load(
    target: str, clients: int, seconds: float, size: int
) -> tuple[Counter[str], list[float], list[str]]:
    """``clients`` threads send ``size``-example requests for ``seconds``.

    Returns status counts, latencies (s) of successful calls and problems seen.
    """
    codes: Counter[str] = Counter()
    latencies: list[float] = []
    problems: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(c: int) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            seq = 0
            while time.monotonic() < stop_at:
                request = score_request(size, prefix=f"c{c}-{seq}")
                seq += 1
                started = time.perf_counter()
                try:
                    response = stub.Score(request, timeout=30)
                except grpc.RpcError as exc:
                    code = exc.code().name  # type: ignore[attr-defined]
                    with lock:
                        codes[code] += 1
                        if code != SHED:
                            problems.append(f"client {c}: {code}: {exc.details()}")  # type: ignore[attr-defined]
                    continue
                elapsed = time.perf_counter() - started
                ids = [r.id for r in response.results]
                with lock:
                    codes["OK"] += 1
                    latencies.append(elapsed)
                    if ids != [e.id for e in request.examples]:
                        problems.append(f"client {c}: wrong results")

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return codes, latencies, problems


# slow: ten seconds of load
@pytest.mark.slow
def test_ten_times_capacity_sheds_the_excess_and_admitted_requests_all_succeed(
    artifact: Path,
) -> None:
    size, capacity_requests = 100, 2
    args = [
        "--thresholds", str(artifact),
        "--metrics-port", "0",  # any free port, read back from the start-up line
        "--threads", "6",
        "--max-batch", str(size),
        "--max-inflight", str(size * capacity_requests),
        "--max-queued-calls", "8",
        "--max-streams", "2",
    ]  # fmt: skip
    with server_process(args) as proc:
        (metrics_port,) = proc.metrics_ports
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        pid = proc.process.pid
        # warm up, then the baseline: one client, well under capacity
        _load(proc.target, 1, 0.5, size)
        base_codes, base_latencies, base_problems = _load(proc.target, 1, 1.5, size)
        assert base_problems == [] and set(base_codes) == {"OK"}
        rss_before = _rss_bytes(pid)
        peak = [rss_before]
        inflight = [_inflight(metrics_url)]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.05):
                peak.append(_rss_bytes(pid))
                inflight.append(_inflight(metrics_url))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            codes, latencies, problems = _load(proc.target, 10 * capacity_requests, 5.0, size)
        finally:
            sampling.set()
            sampler.join()
        rss_after_load = _rss_bytes(pid)
        # a second round must not grow memory further: nothing accumulates
        codes2, _, problems2 = _load(proc.target, 10 * capacity_requests, 3.0, size)
        rss_after_second = _rss_bytes(pid)
        with grpc.insecure_channel(proc.target) as channel:
            assert len(pb_grpc.LabelQualityStub(channel).Score(score_request(5)).results) == 5
        assert proc.process.poll() is None

    assert problems == [] and problems2 == [], (problems + problems2)[:5]
    assert codes[SHED] > 0 and codes2[SHED] > 0, "nothing was shed at 10x capacity"
    assert codes["OK"] > 0 and codes2["OK"] > 0
    assert set(codes) | set(codes2) <= {"OK", SHED}
    mib = 1024 * 1024
    growth = max(peak) - rss_before
    assert growth < 100 * mib, f"RSS grew {growth / mib:.0f} MiB under load"
    assert rss_after_second - rss_after_load < 20 * mib, (
        f"RSS kept growing: {rss_after_load / mib:.0f} -> {rss_after_second / mib:.0f} MiB"
    )
    base_p50 = statistics.median(base_latencies)
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(
        f"\nbaseline p50 {base_p50 * 1e3:.1f} ms; 10x load: {dict(codes)}, admitted p50 "
        f"{statistics.median(latencies) * 1e3:.1f} ms p95 {p95 * 1e3:.1f} ms; RSS "
        f"{rss_before / mib:.0f} -> peak {max(peak) / mib:.0f} -> {rss_after_second / mib:.0f} "
        f"MiB; in flight at most {max(inflight):.0f} examples"
    )
    # admitted work is not stuck behind a queue: the server never holds more than
    # --max-inflight examples (2 requests) admitted and unanswered, whatever the offered load
    assert 0 < max(inflight) <= size * capacity_requests, max(inflight)


@pytest.fixture
def busy_server(artifact: Path) -> Iterator[RunningServer]:
    with running_server(thresholds=artifact, threads=6, max_batch=100, max_inflight=200) as s:
        yield s


def test_every_shed_request_is_counted_and_capacity_is_returned(
    busy_server: RunningServer,
) -> None:
    codes, _, problems = _load(target_of(busy_server), 12, 2.0, 100)
    assert problems == []
    assert codes[SHED] > 0
    # every RESOURCE_EXHAUSTED here is ours (no stream or queue limit was near)
    assert _value(busy_server, "labelwatch_requests_shed_total", reason="inflight") == codes[SHED]
    assert _value(busy_server, "labelwatch_inflight_examples") == 0
    assert busy_server.security is not None and busy_server.security.admission.inflight == 0
