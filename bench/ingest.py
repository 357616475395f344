"""Benchmark: ``labelwatch consume`` off NATS JetStream against gRPC ScoreStream.

One command, all numbers from one run on this machine::

    python bench/ingest.py            # the full run (~3 min on 2 cores)
    python bench/ingest.py --quick    # a smoke run (< 1 min): fewer examples, short phases

What it measures (``docs/ingestion.md``, section "Performance", explains how to read it):

1. **throughput**: a real ``nats-server -js`` on 127.0.0.1 and 1, 2 and 4
   ``labelwatch consume`` processes on one durable, all idle and ready; then a
   producer publishes ``--examples`` JSON examples as fast as it can, and the clock
   runs from the first publish to the last result stored in the results stream
   (end to end: publish, fetch, validate, score, flags to the outbox, result
   published, input acked). Every cell has a fresh server, streams and outbox.
2. **the gRPC reference**: ``labelwatch serve`` (a subprocess, bench/servebench's
   capacity flags) scoring the same rows over ScoreStream, batch 64, 8 clients in
   2 client processes; each consumer row is reported as a ratio to it.
3. **one consumer against ScoreStream, side by side**: ``--pairs`` times in turn, a
   fresh 1-consumer cell and then a fresh ScoreStream cell; each pair gives a ratio
   and the median is the headline (on a shared machine one pair alone is noise).
4. **lag**: one consumer while a producer publishes at a fixed rate above the
   1-consumer capacity measured in 1., then below it; the durable's pending and
   ack-pending counts are sampled twice a second.
5. **the consumer's own cost, in process**: ``--examples`` messages stored first,
   then one :class:`~labelwatch.ingest.StreamConsumer` in this process drains them;
   CPU seconds per example of the whole process and of its event-loop thread alone
   (decode, publish, ack: the consumer's serial part). CPU time moves far less than
   wall time on a shared machine.

Every consumer cell also reports the consumers' peak RSS (``VmHWM`` from
``/proc/PID/status``, the largest over its processes), and each ScoreStream cell
the server's.

The workload is the default text model (debtags test rows, as in bench/serve.py).
Prints the tables (progress goes to stderr) and writes the raw numbers to
``bench/results/ingest.json`` (``ingest-quick.json`` for ``--quick``, so a smoke run
never overwrites a full one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from serve import machine  # noqa: E402
from servebench.clients import CellSpec, ClientPool  # noqa: E402
from servebench.report import markdown  # noqa: E402
from servebench.servers import (  # noqa: E402
    LabelwatchConfig,
    LabelwatchServer,
    _Proc,
    _spawn,
    free_port,
    tree_memory,
)
from servebench.workloads import Rows, ServedModel, make_rows, text_model  # noqa: E402

RESULTS = BENCH / "results"
STREAM = "EXAMPLES"
SUBJECT = "examples.>"
RESULTS_STREAM = "LABELWATCH_RESULTS"
RESULTS_SUBJECT = "labelwatch.results"
DEAD_SUBJECT = "labelwatch.dead"
DURABLE = "bench"
READY_LINE = "labelwatch consuming"


@dataclass(frozen=True)
class Plan:
    """Sizes of one run. Times in seconds; rates relative to the 1-consumer capacity."""

    examples: int = 20_000
    consumers: tuple[int, ...] = (1, 2, 4)
    grpc_seconds: float = 10.0
    grpc_clients: int = 8
    grpc_batch: int = 64
    lag_above: float = 1.5
    lag_below: float = 0.5
    lag_above_seconds: float = 20.0
    lag_below_seconds: float = 30.0
    sample_interval: float = 0.5
    pairs: int = 3
    in_process_examples: int = 20_000


QUICK = Plan(
    examples=5_000,
    consumers=(1, 2),
    grpc_seconds=3.0,
    pairs=2,
    in_process_examples=8_000,
    lag_above_seconds=4.0,
    lag_below_seconds=6.0,
)


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- NATS and consumers


@contextlib.contextmanager
def nats_server(work: Path) -> Iterator[str]:
    """``nats-server -js`` on a free loopback port, storing under ``work``; yields its URL."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        raise SystemExit("nats-server is not installed (apt-get install -y nats-server)")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(work / "store")]
    proc = _spawn(cmd, work / "nats-server.log")
    url = f"nats://127.0.0.1:{port}"
    try:
        asyncio.run(_wait_nats(url, proc))
        yield url
    finally:
        proc.stop()


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: the caller handles the failure (the default prints it)."""


async def _wait_nats(url: str, proc: _Proc, timeout: float = 20.0) -> None:
    import nats

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.process.poll() is None:
        with contextlib.suppress(Exception):
            nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False, error_cb=_quiet)
            await nc.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nats-server did not start at {url}: {''.join(proc.lines[-10:])}")


async def create_streams(url: str) -> None:
    """The input work-queue stream and the results stream, as ``consume`` would make them."""
    import nats
    from nats.js.api import RetentionPolicy, StreamConfig

    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(
            StreamConfig(
                name=STREAM,
                subjects=[SUBJECT],
                retention=RetentionPolicy.WORK_QUEUE,
                duplicate_window=600,
            )
        )
        await js.add_stream(
            StreamConfig(
                name=RESULTS_STREAM,
                subjects=[RESULTS_SUBJECT, DEAD_SUBJECT],
                duplicate_window=600,
            )
        )
    finally:
        await nc.close()


def consumer_flags(k: int, cores: int) -> list[str]:
    """Flags of each of ``k`` consumers: onnxruntime threads split over the cores."""
    return ["--intra-op-threads", str(max(1, cores // k))]


@contextlib.contextmanager
def consumers(
    url: str, served: ServedModel, k: int, work: Path, *, timeout: float = 120.0
) -> Iterator[list[_Proc]]:
    """``k`` ``labelwatch consume`` processes on one durable, each ready when yielded."""
    cmd = [sys.executable, "-m", "labelwatch.cli", "consume", "--nats", url]
    cmd += ["--stream", STREAM, "--subject", SUBJECT, "--durable", DURABLE]
    if served.model is not None:
        cmd += ["--model", str(served.model)]
    cmd += ["--thresholds", str(served.thresholds), "--data-dir", str(work / "data")]
    cmd += ["--metrics-port", "off", "--log-level", "warning"]
    cmd += consumer_flags(k, os.cpu_count() or 1)
    procs = [_spawn(cmd, work / f"consumer-{i}.log") for i in range(k)]
    try:
        deadline = time.monotonic() + timeout
        for proc in procs:
            while not any(READY_LINE in line for line in list(proc.lines)):
                if proc.process.poll() is not None or time.monotonic() > deadline:
                    tail = "".join(proc.lines[-20:])
                    raise RuntimeError(f"labelwatch consume did not start:\n{tail}")
                time.sleep(0.05)
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def messages(rows: Rows, class_names: Sequence[str], n: int, prefix: str) -> list[bytes]:
    """``n`` JSON examples cycling over ``rows``, each with a unique id.

    Tags go by name when ``class_names`` is given, else as ``label_indices``.
    """
    one: list[dict[str, Any]] = []
    for i in range(rows.n):
        tagged = [int(j) for j in rows.labels[i].nonzero()[0]]
        body: dict[str, Any] = (
            {"labels": [class_names[j] for j in tagged]}
            if class_names
            else {"label_indices": tagged}
        )
        if rows.texts is not None:
            body["text"] = rows.texts[i]
        elif rows.probs is not None:
            body["probabilities"] = [round(float(p), 6) for p in rows.probs[i]]
        else:
            raise ValueError("the ingest benchmark sends text or probabilities")
        one.append(body)
    return [
        json.dumps({"id": f"{prefix}{i}", **one[i % rows.n]}, separators=(",", ":")).encode()
        for i in range(n)
    ]


async def _stored(js: Any, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


async def _store(url: str, msgs: Sequence[bytes]) -> None:
    """Publish ``msgs`` to the input stream and wait until JetStream stored them all."""
    import nats

    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=30)
        for start in range(0, len(msgs), 1000):
            acks = [await js.publish_async("examples.bench", m) for m in msgs[start : start + 1000]]
            await asyncio.gather(*acks)
    finally:
        await nc.close()


async def _drive(
    url: str,
    msgs: Sequence[bytes],
    schedule: Sequence[tuple[str, float, float]],
    interval: float,
    timeout: float,
) -> dict[str, Any]:
    """Publish ``msgs`` on ``schedule``, sample the durable until every result is stored.

    ``schedule``: (phase, rate examples/s or 0 for as fast as possible, seconds); the
    messages run out where they run out. Returns the wall time from the first publish
    to the last result and the samples (seconds since the first publish).
    """
    import nats
    import nats.js.errors

    nc = await nats.connect(url, connect_timeout=5)
    js = nc.jetstream(timeout=30)
    samples: list[dict[str, Any]] = []
    published = 0
    phase = schedule[0][0]
    start = time.monotonic()

    async def produce() -> None:
        nonlocal published, phase
        acks: list[asyncio.Future[Any]] = []
        for name, rate, seconds in schedule:
            phase = name
            t0, base = time.monotonic(), published
            while published < len(msgs) and time.monotonic() - t0 < seconds:
                due = len(msgs) if rate <= 0 else base + int(rate * (time.monotonic() - t0)) + 1
                while published < min(due, len(msgs)):
                    acks.append(await js.publish_async("examples.bench", msgs[published]))
                    published += 1
                    if len(acks) >= 1000:
                        await asyncio.gather(*acks)
                        acks.clear()
                await asyncio.sleep(0.005)
        phase = "rest"  # the few a paced phase's rounding left over
        while published < len(msgs):
            acks.append(await js.publish_async("examples.bench", msgs[published]))
            published += 1
        await asyncio.gather(*acks)

    producer = asyncio.create_task(produce())
    try:
        done_at = None
        deadline = start + timeout
        while time.monotonic() < deadline:
            info = await js.consumer_info(STREAM, DURABLE)
            results = await _stored(js, RESULTS_STREAM)
            now = time.monotonic()
            samples.append(
                {
                    "t": round(now - start, 3),
                    "phase": phase,
                    "published": published,
                    "pending": int(info.num_pending or 0),
                    "ack_pending": int(info.num_ack_pending or 0),
                    "results": results,
                }
            )
            if results >= len(msgs):
                done_at = now
                break
            await asyncio.sleep(interval)
        await producer
        if done_at is None:
            raise TimeoutError(f"{samples[-1]['results']} of {len(msgs)} results in {timeout}s")
        return {"seconds": done_at - start, "samples": samples}
    finally:
        producer.cancel()
        with contextlib.suppress(BaseException):
            await producer
        await nc.close()


def run_cell(
    served: ServedModel,
    msgs: Sequence[bytes],
    k: int,
    work: Path,
    schedule: Sequence[tuple[str, float, float]],
    interval: float,
    timeout: float,
) -> dict[str, Any]:
    """A fresh nats-server and ``k`` consumers; publish ``msgs`` on ``schedule``; time it."""
    with nats_server(work / "nats") as url:
        asyncio.run(create_streams(url))
        with consumers(url, served, k, work) as procs:
            out = asyncio.run(_drive(url, msgs, schedule, interval, timeout))
            peaks = [tree_memory(p.process.pid).peak for p in procs]
    out["peak_rss_mib"] = max(peaks) / 2**20
    out["examples"] = len(msgs)
    out["examples_per_s"] = len(msgs) / out["seconds"]
    return out


# ---------------------------------------------------------------- sections


def section_throughput(
    plan: Plan, served: ServedModel, msgs: Sequence[bytes], work: Path
) -> list[dict[str, Any]]:
    """Examples/s end to end with each number of consumers."""
    rows = []
    for k in plan.consumers:
        log(f"throughput: {k} consumer(s), {len(msgs)} examples")
        cell = run_cell(served, msgs, k, work / f"k{k}", [("burst", 0.0, 1e9)], 0.1, 600.0)
        rows.append(
            {
                "consumers": k,
                "flags": consumer_flags(k, os.cpu_count() or 1),
                "examples": cell["examples"],
                "seconds": round(cell["seconds"], 3),
                "examples_per_s": cell["examples_per_s"],
                "peak_rss_mib": cell["peak_rss_mib"],
            }
        )
        log(f"  {cell['examples_per_s']:,.0f} examples/s, peak RSS {cell['peak_rss_mib']:.0f} MiB")
    return rows


def section_grpc(plan: Plan, served: ServedModel, work: Path) -> dict[str, Any]:
    """ScoreStream examples/s of ``labelwatch serve`` on the same rows."""
    log(f"gRPC ScoreStream: batch {plan.grpc_batch}, {plan.grpc_clients} clients")
    with (
        LabelwatchServer(served, LabelwatchConfig(), work / "grpc") as server,
        ClientPool(processes=2) as pool,
    ):
        result = pool.run(
            CellSpec(
                "labelwatch",
                server.target,
                "stream",
                plan.grpc_batch,
                plan.grpc_clients,
                served.workload,
                plan.grpc_seconds,
            )
        )
        peak = server.memory().peak / 2**20
    if result.errors:
        raise RuntimeError(f"gRPC cell failed: {result.first_error}")
    log(f"  {result.examples_per_s:,.0f} examples/s, peak RSS {peak:.0f} MiB")
    return {
        "mode": "stream",
        "batch": plan.grpc_batch,
        "clients": plan.grpc_clients,
        "seconds": round(result.elapsed_s, 3),
        "examples": result.examples,
        "examples_per_s": result.examples_per_s,
        "peak_rss_mib": peak,
    }


def section_pairs(
    plan: Plan, served: ServedModel, msgs: Sequence[bytes], work: Path
) -> list[dict[str, Any]]:
    """``plan.pairs`` times: one consumer, then ScoreStream, each fresh; their ratio."""
    pairs = []
    for i in range(plan.pairs):
        log(f"pair {i + 1}/{plan.pairs}: 1 consumer, then ScoreStream")
        cell = run_cell(served, msgs, 1, work / f"pair{i}", [("burst", 0.0, 1e9)], 0.1, 600.0)
        grpc = section_grpc(plan, served, work / f"pair{i}")
        pairs.append(
            {
                "consume_examples_per_s": cell["examples_per_s"],
                "consume_peak_rss_mib": cell["peak_rss_mib"],
                "grpc_examples_per_s": grpc["examples_per_s"],
                "ratio": cell["examples_per_s"] / grpc["examples_per_s"],
            }
        )
        log(f"  ratio {pairs[-1]['ratio']:.2f}")
    return pairs


def section_in_process(plan: Plan, served: ServedModel, rows: Rows, work: Path) -> dict[str, Any]:
    """A consumer in this process drains stored messages: CPU per example, whole and loop."""
    from labelwatch.config import Settings
    from labelwatch.engine import Engine
    from labelwatch.ingest import ConsumeOptions
    from labelwatch.ingest_app import consumer_for

    n = plan.in_process_examples
    msgs = messages(rows, served.workload.class_names, n, "inproc-")
    log(f"in process: 1 consumer drains {n:,} stored examples")
    with nats_server(work / "inproc" / "nats") as url:
        asyncio.run(create_streams(url))
        asyncio.run(_store(url, msgs))
        settings = Settings(
            model=served.model,
            thresholds=served.thresholds,
            data_dir=work / "inproc" / "data",
            intra_op_threads=os.cpu_count() or 1,
        )
        with Engine(settings) as engine:
            engine.start()
            options = ConsumeOptions(url=url, stream=STREAM, subject=SUBJECT, durable=DURABLE)
            consumer = consumer_for(engine, options)

            async def drain() -> float:
                stop = asyncio.Event()
                ready = asyncio.Event()
                task = asyncio.create_task(consumer.run(stop, on_ready=ready.set))
                await ready.wait()
                start = time.monotonic()
                while consumer.stats.processed < n and not task.done():
                    await asyncio.sleep(0.01)
                seconds = time.monotonic() - start
                stop.set()
                await task
                return seconds

            cpu0, loop0 = time.process_time(), time.thread_time()
            seconds = asyncio.run(drain())
            cpu, loop = time.process_time() - cpu0, time.thread_time() - loop0
    out = {
        "examples": n,
        "seconds": round(seconds, 3),
        "examples_per_s": n / seconds,
        "process_cpu_us_per_example": cpu / n * 1e6,
        "loop_cpu_us_per_example": loop / n * 1e6,
    }
    log(
        f"  {out['examples_per_s']:,.0f} examples/s; CPU per example "
        f"{out['process_cpu_us_per_example']:.0f} us, "
        f"event loop {out['loop_cpu_us_per_example']:.0f} us"
    )
    return out


def section_lag(
    plan: Plan, served: ServedModel, rows: Rows, capacity: float, work: Path
) -> dict[str, Any]:
    """One consumer; a producer at ``lag_above`` x capacity, then ``lag_below`` x."""
    above, below = capacity * plan.lag_above, capacity * plan.lag_below
    n = int(above * plan.lag_above_seconds) + int(below * plan.lag_below_seconds)
    msgs = messages(rows, served.workload.class_names, n, "lag-")
    schedule = [
        ("above", above, plan.lag_above_seconds),
        ("below", below, plan.lag_below_seconds),
    ]
    log(f"lag: 1 consumer, {above:,.0f}/s for {plan.lag_above_seconds:g}s, then {below:,.0f}/s")
    timeout = plan.lag_above_seconds + plan.lag_below_seconds + 300.0
    cell = run_cell(served, msgs, 1, work / "lag", schedule, plan.sample_interval, timeout)
    return {
        "capacity_examples_per_s": capacity,
        "rate_above": above,
        "rate_below": below,
        "seconds_above": plan.lag_above_seconds,
        "seconds_below": plan.lag_below_seconds,
        "examples": n,
        "drained_after_s": round(cell["seconds"], 3),
        "samples": cell["samples"],
    }


# ---------------------------------------------------------------- output


def throughput_table(rows: Sequence[dict[str, Any]], grpc: dict[str, Any]) -> str:
    """Consumers' examples/s and their ratio to ScoreStream."""
    reference = grpc["examples_per_s"]
    body = [
        [
            f"consume x{r['consumers']}",
            " ".join(r["flags"]),
            f"{r['examples']:,}",
            f"{r['examples_per_s']:,.0f}",
            f"{r['examples_per_s'] / reference:.2f}x",
            f"{r['peak_rss_mib']:.0f}",
        ]
        for r in rows
    ]
    body.append(
        [
            "gRPC ScoreStream",
            f"batch {grpc['batch']}, {grpc['clients']} clients",
            f"{grpc['examples']:,}",
            f"{reference:,.0f}",
            "1.00x",
            f"{grpc['peak_rss_mib']:.0f}",
        ]
    )
    header = ["path", "flags", "examples", "examples/s", "vs ScoreStream", "peak RSS MiB"]
    return markdown(header, body)


def pairs_table(pairs: Sequence[dict[str, Any]]) -> str:
    """Each pair's consumer and ScoreStream rates and their ratio, then the median."""
    body = [
        [
            str(i + 1),
            f"{p['consume_examples_per_s']:,.0f}",
            f"{p['grpc_examples_per_s']:,.0f}",
            f"{p['ratio']:.2f}x",
            f"{p['consume_peak_rss_mib']:.0f}",
        ]
        for i, p in enumerate(pairs)
    ]
    body.append(["median", "", "", f"{median_ratio(pairs):.2f}x", ""])
    header = ["pair", "consume x1 ex/s", "ScoreStream ex/s", "ratio", "consumer peak RSS MiB"]
    return markdown(header, body)


def median_ratio(pairs: Sequence[dict[str, Any]]) -> float:
    """The median of the pairs' consume/ScoreStream ratios."""
    return float(statistics.median(p["ratio"] for p in pairs))


def lag_table(lag: dict[str, Any], every: float = 2.0) -> str:
    """Lag samples about every ``every`` seconds, and the last one."""
    picked: list[dict[str, Any]] = []
    for s in lag["samples"]:
        if not picked or s["t"] - picked[-1]["t"] >= every - 1e-9:
            picked.append(s)
    if picked[-1] is not lag["samples"][-1]:
        picked.append(lag["samples"][-1])
    body = [
        [
            f"{s['t']:.1f}",
            s["phase"],
            f"{s['published']:,}",
            f"{s['results']:,}",
            f"{s['pending']:,}",
            f"{s['ack_pending']:,}",
        ]
        for s in picked
    ]
    return markdown(["t s", "producer", "published", "results", "pending", "ack pending"], body)


def render(result: dict[str, Any]) -> str:
    """Every table of a run as markdown, with the machine and the command."""
    m = result["machine"]
    lag = result["lag"]
    inproc = result["in_process"]
    return "\n".join(
        [
            f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['mem_total_gib']} GiB, "
            f"Python {m['python']}, nats-server {result['nats_server']}, commit {m['commit']}.",
            f"Command: `{result['command']}` ({result['elapsed_s']:.0f} s).",
            "",
            "Throughput, end to end (first publish to last result stored), default text model:",
            "",
            throughput_table(result["throughput"], result["grpc"]),
            "",
            f"One consumer against ScoreStream, {len(result['pairs'])} fresh pairs in turn "
            f"(median ratio {median_ratio(result['pairs']):.2f}x):",
            "",
            pairs_table(result["pairs"]),
            "",
            f"In process, 1 consumer draining {inproc['examples']:,} stored examples: "
            f"{inproc['examples_per_s']:,.0f} examples/s; CPU per example "
            f"{inproc['process_cpu_us_per_example']:.0f} us for the process, "
            f"{inproc['loop_cpu_us_per_example']:.0f} us on its event loop.",
            "",
            f"Lag, 1 consumer (capacity {lag['capacity_examples_per_s']:,.0f} examples/s): "
            f"{lag['rate_above']:,.0f}/s for {lag['seconds_above']:g} s, then "
            f"{lag['rate_below']:,.0f}/s for {lag['seconds_below']:g} s; every result stored "
            f"{lag['drained_after_s']:.1f} s after the first publish.",
            "",
            lag_table(lag),
        ]
    )


def nats_version() -> str:
    """``nats-server --version``, e.g. ``v2.9.10``."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().rsplit(" ", 1)[-1] or "?"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, run every section, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 1 min)")
    parser.add_argument("--examples", type=int, help="examples per throughput cell")
    parser.add_argument("--pairs", type=int, help="1-consumer / ScoreStream pairs (median ratio)")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/...)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.examples:
        plan = Plan(**{**asdict(plan), "examples": args.examples})
    if args.pairs:
        plan = Plan(**{**asdict(plan), "pairs": args.pairs})
    out = args.out or RESULTS / ("ingest-quick.json" if args.quick else "ingest.json")
    command = " ".join(["python bench/ingest.py", *(argv if argv is not None else sys.argv[1:])])

    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds: servers and consumers stop

    signal.signal(signal.SIGTERM, _stop)
    started = time.monotonic()
    served = text_model()
    rows = make_rows(served.workload)
    result: dict[str, Any] = {
        "command": command.strip(),
        "plan_name": "quick" if args.quick else "full",
        "plan": asdict(plan),
        "machine": machine(),
        "nats_server": nats_version(),
        "workload": served.name,
    }
    with tempfile.TemporaryDirectory(prefix="labelwatch-ingest-bench-") as tmp:
        work = Path(tmp)
        msgs = messages(rows, served.workload.class_names, plan.examples, "ex-")
        result["throughput"] = section_throughput(plan, served, msgs, work)
        result["grpc"] = section_grpc(plan, served, work)
        result["pairs"] = section_pairs(plan, served, msgs, work)
        capacity = result["throughput"][0]["examples_per_s"]
        result["lag"] = section_lag(plan, served, rows, capacity, work)
        result["in_process"] = section_in_process(plan, served, rows, work)
    result["elapsed_s"] = time.monotonic() - started
    text = render(result)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
