"""What a worker process gets through with the real model, and how many devices' live streams it serves.

Run from the repository root (needs ``redis-server`` on PATH and ``pip install -e '.[test]'``: the model)::

    python bench/bench_workers.py                       # both sections (~6 min)
    python bench/bench_workers.py --sections classify   # the classify backlog only (~2 min)
    python bench/bench_workers.py --quick               # smoke run: small counts, one round

Self-contained: starts its own redis-server and four ``celery -A workers worker --pool prefork -c 1``
processes (``w0``-``w3``, each idle on a queue of its own until told to consume a backlog's queue with
``add_consumer``; each has loaded the model before anything is timed), stopped at the end. Machines are
shared and noisy: read ratios and medians.

**classify** (goals): 1,000 chunks of 2 s of 16 kHz float32 (the demo's synthetic signal: tone, noise, silence)
wait in a queue as a producer's backlog (``NumpyEmit(..., mode='celery')`` with no worker: batch messages of 64
chunks); then one worker process (``w0``) consumes it; chunks/s from the moment it is told to (see :func:`drain`)
to the last result. Contenders, in interleaved rounds, each round in another order:

- ``worker, batched``: ``workers.tasks.classify`` (``@ocycle_dist.batched``): a batch message's chunks run
  through Silero VAD as one ONNX batch.
- ``worker, one at a time``: ``bench.onechunk.classify`` (``bench/onechunk_tasks.py``): the same model run
  chunk after chunk, the path of a task that is not batched.
- ``bare loop, one at a time``: :func:`workers.vad.detect` on each chunk in this process (no Celery).
- ``bare batched ONNX loop``: the ONNX session run in this process on the same chunks 64 at a time, the windows
  cut with numpy and nothing else (no conversion, no result): what one process's model can do at that size.

Goals: worker batched >= 2.5x worker one at a time; worker batched >= 0.8x the bare batched loop. The two
workers' labels and probabilities must agree (within 1e-5), else the bench fails.

**capacity**: the canonical three consumers with the real model (``ocycle_dist.app.consumers.CONSUMERS``: ``spl`` 0.5 s,
``classify`` 2 s, ``archive`` 10 s of 16 kHz float32) drained by 1, 2 and 4 worker processes. Each backlog is
what a fleet of devices sends: every chunk its own task message (``batch_max_chunks=0``), so the workers' pool
processes drain them; timed as the classify backlog is. A device streams one chunk per chunk length
per consumer, so the devices served in real time are chunks/s x seconds per chunk; "all three" is one device's
audio (a Tap feeding the three consumers, one queue) and its devices are seconds of audio done per second. The
workers' CPU per chunk (main and pool processes, from /proc) gives what one worker process serves with a core to
itself; the rates measured here also pay for this process (the producer and listener of every chunk) and Redis
on the same 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's ocycle_dist, workers and bench.*

import numpy as np  # noqa: E402

import ocycle_dist  # noqa: E402
from bench._report import Verdicts, fmt, table  # noqa: E402
from bench.celery_bench.common import BenchError, Collector  # noqa: E402
from bench.celery_bench.fleet import consume  # noqa: E402
from bench.celery_bench.rig import group_cpu  # noqa: E402
from ocycle_dist.app.consumers import CONSUMERS  # noqa: E402
from ocycle_dist.app.sources import synthetic  # noqa: E402
from ocycle_dist.remote import wire  # noqa: E402
from ocycle_dist.remote.settings import Settings  # noqa: E402
from ocycle_dist.testing import RedisServer, Worker, wait_all_ready  # noqa: E402

RATE = 16000
CHUNK = 2 * RATE  # samples of a classify chunk
BATCH = 64  # chunks of a batch message (BATCH_MAX_CHUNKS), and of one ONNX run (workers.vad.MAX_BATCH)
BUDGET = 1 << 30  # each emitter's spool holds its whole backlog (a throughput bench, not one of the budget)
perf = time.perf_counter


@dataclass
class Config:
    rounds: int
    backlog: int  # classify chunks of the goal's backlog
    counts: dict[str, int]  # capacity: chunks of each consumer's backlog
    together: float  # capacity: seconds of audio through the three consumers
    workers: tuple[int, ...]


def config(quick: bool, rounds: int) -> Config:
    if quick:
        return Config(1, 200, {"spl": 400, "classify": 100, "archive": 12}, 60.0, (1, 2))
    return Config(max(1, rounds), 1000, {"spl": 4000, "classify": 800, "archive": 160}, 1200.0, (1, 2, 4))


class Rig:
    """redis-server and four workers (``w0``-``w3``), each idle on its own queue until told to consume one."""

    def __init__(self, tmp: Path) -> None:
        self.redis = RedisServer(log=tmp / "redis-server.log")
        self.tmp = tmp
        self.workers: list[Worker] = []

    def start(self) -> float:
        self.redis.start()
        env = {"OCYCLE_ARCHIVE_DIR": str(self.tmp / "archive"), "OCYCLE_SAMPLE_RATE": str(RATE)}
        self.workers = [Worker(self.redis.url, name=f"w{i}", queues=f"idle-w{i}", env=env, loglevel="WARNING",
                               include=("bench.onechunk_tasks", "bench.tasks"), log=self.tmp / f"w{i}.log", cwd=ROOT)
                        for i in range(4)]  # fmt: skip
        for w in self.workers:
            w.start(wait=False)
        return wait_all_ready(self.workers, 120)

    def warm(self) -> None:
        """Load the model (and soundfile, numpy's code paths...) in every worker's pool process, out of the timings:
        each runs a few chunks of every task measured."""
        signal = np.concatenate(list(synthetic(20.0, RATE)))
        work = [("workers.tasks.classify", 2.0, 4), ("bench.onechunk.classify", 2.0, 4), ("workers.tasks.spl", 0.5, 4),
                ("workers.tasks.archive_flac", 10.0, 2)]  # fmt: skip
        for worker in self.workers:
            for task, seconds, count in work:
                size = int(seconds * RATE)
                queue, col = f"warm-{worker.name}-{uuid.uuid4().hex[:6]}", Collector(count)
                e = emitter(self, task, size, queue, col)
                try:
                    for i in range(count):
                        e.write(signal[(i * size) % (signal.size - size) :][:size], t0=1e9 + i * seconds)
                    wait_published([e], count)
                    drain(self, queue, 1, [col], count, names=[worker.name])
                finally:
                    e.close(wait=False)

    def check(self) -> None:
        if not self.redis.alive():
            raise BenchError("redis-server exited")
        for w in self.workers:
            if not w.alive():
                raise BenchError(f"{w.name} exited:\n{w.tail()}")

    def stop(self) -> None:
        for w in self.workers:
            w.stop(timeout=10.0)
        self.redis.__exit__()


def emitter(rig: Rig, task: str, size: int, queue: str, col: Collector, **settings: Any) -> ocycle_dist.NumpyEmit:
    return ocycle_dist.NumpyEmit(
        task, size, clip=True, rate=RATE, mode="celery", on_done=col.on_done, on_error=col.on_error,
        stream=f"bench-{task.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:6]}",
        settings=Settings(broker_url=rig.redis.url, queue=queue, spool_max_bytes=BUDGET, **settings),
    )  # fmt: skip


def wait_published(emitters: list[ocycle_dist.NumpyEmit], n: int) -> None:
    deadline = time.monotonic() + 300
    while sum(e.executor.counts["published"] for e in emitters if e.executor) < n:
        if time.monotonic() > deadline:
            raise BenchError(f"the backlog of {n} chunks was not published in 300 s")
        time.sleep(0.01)


def drain(rig: Rig, queue: str, nodes: int, cols: list[Collector], n: int, timeout: float = 600,
          names: list[str] | None = None) -> tuple[float, float]:  # fmt: skip
    """Tell ``nodes`` workers to consume ``queue``, then wake them; seconds from the wake-up to the last of the
    ``n`` results, and the CPU seconds the workers (main and pool processes) used meanwhile.

    A worker told to consume another queue starts reading it only once its pending BRPOP on its own queue
    returns (kombu's ``brpop_timeout``, up to 1 s): a message on its own queue (a one-byte ``echo``) makes it
    return at once, so that the time measured is the backlog's alone, whatever the model's batching does to
    when the first result comes."""
    names = names or [w.name for w in rig.workers[:nodes]]
    pgids = [w.proc.pid for w in rig.workers if w.name in names and w.proc is not None and w.proc.pid is not None]
    wakers = [ocycle_dist.BufferEmit("bench.echo", 1, mode="celery", stream=f"wake-{uuid.uuid4().hex}",
                                     settings=Settings(broker_url=rig.redis.url, queue=f"idle-{name}"))
              for name in names]  # fmt: skip
    for name, waker in zip(names, wakers, strict=True):
        consume(rig.redis.url, wire.SERIALIZER, name, queue, True)
        waker.open()
        waker.executor._client.ping()  # connected before the clock starts
    try:
        cpu = group_cpu(pgids)
        start = perf()
        for waker in wakers:
            waker.write(b"w")
        deadline = time.monotonic() + timeout
        for col in cols:
            if not col.event.wait(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"{queue}: {sum(len(c.done) for c in cols)} of {n} results in {timeout:.0f} s")
            if col.errors:
                raise BenchError(f"{queue}: {col.errors[0]}")
        cpu = group_cpu(pgids) - cpu
    finally:
        for name in names:
            consume(rig.redis.url, wire.SERIALIZER, name, queue, False)
        for waker in wakers:
            waker.close(timeout=10)
    return max(t for col in cols for t in col.done.values()) - start, cpu


# ---- classify: the goals ---------------------------------------------------------------------------------


def classify_chunks(n: int) -> list[np.ndarray]:
    signal = np.concatenate(list(synthetic(n * CHUNK / RATE, RATE)))
    return [signal[i * CHUNK : (i + 1) * CHUNK] for i in range(n)]


def worker_backlog(rig: Rig, task: str, chunks: list[np.ndarray]) -> tuple[float, list[dict[str, Any]]]:
    """chunks/s of ``w0`` on a backlog of ``chunks`` for ``task``, and the results in order."""
    n, queue = len(chunks), f"cls-{uuid.uuid4().hex[:6]}"
    col = Collector(n)
    e = emitter(rig, task, CHUNK, queue, col)
    try:
        t0 = 1e9
        for i, c in enumerate(chunks):
            e.write(c, t0=t0 + 2.0 * i)
        wait_published([e], n)
        elapsed, _ = drain(rig, queue, 1, [col], n)
    finally:
        e.close(wait=False)
    return n / elapsed, [col.results[i] for i in range(n)]


def bare_one_at_a_time(chunks: list[np.ndarray]) -> float:
    from workers import vad

    t = perf()
    for c in chunks:
        vad.detect(c, rate=RATE)
    return len(chunks) / (perf() - t)


def bare_batched(chunks: list[np.ndarray], size: int = BATCH) -> float:
    """The ONNX session alone, ``size`` chunks a run: windows cut with numpy, nothing else."""
    from workers import vad

    session = vad.load().session
    window, context = vad.WINDOW[RATE], vad.CONTEXT[RATE]
    sr = np.array(RATE, dtype=np.int64)
    t = perf()
    for start in range(0, len(chunks), size):
        group = chunks[start : start + size]
        n = -(-CHUNK // window)
        padded = np.zeros((len(group), context + n * window), dtype=np.float32)
        for row, c in zip(padded, group, strict=True):
            row[context : context + c.size] = c
        frames = np.lib.stride_tricks.sliding_window_view(padded, context + window, axis=1)[:, ::window]
        frames = np.ascontiguousarray(frames.transpose(1, 0, 2))
        state = np.zeros((2, len(group), 128), dtype=np.float32)
        for i in range(n):
            _, state = session.run(None, {"input": frames[i], "state": state, "sr": sr})
    return len(chunks) / (perf() - t)


def same_results(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x["label"] != y["label"] or abs(x["speech_prob"] - y["speech_prob"]) > 1e-5 or x["t0"] != y["t0"]:
            raise BenchError(f"chunk {i}: batched {x} and one at a time {y} differ")


def run_classify(rig: Rig, cfg: Config, verdicts: Verdicts) -> None:
    chunks = classify_chunks(cfg.backlog)
    names = ("worker, batched", "worker, one at a time", "bare loop, one at a time", f"bare batched ONNX loop, {BATCH}")
    rates: dict[str, list[float]] = {k: [] for k in names}
    model = ""
    results: dict[str, list[dict[str, Any]]] = {}

    def worker(key: str, task: str) -> float:
        rate, results[key] = worker_backlog(rig, task, chunks)
        return rate

    contenders = [(names[0], lambda: worker("batched", "workers.tasks.classify")),
                  (names[1], lambda: worker("one", "bench.onechunk.classify")),
                  (names[2], lambda: bare_one_at_a_time(chunks)), (names[3], lambda: bare_batched(chunks))]  # fmt: skip
    for rnd in range(cfg.rounds):
        k = rnd % len(contenders)
        for name, fn in contenders[k:] + contenders[:k]:
            rates[name].append(fn())
            rig.check()
        same_results(results["batched"], results["one"])
        model = results["batched"][0]["model"]
        print(f"  classify round {rnd + 1}/{cfg.rounds}: " + ", ".join(f"{k} {fmt(v[-1])}/s" for k, v in rates.items()),
              file=sys.stderr, flush=True)  # fmt: skip
    med = {k: statistics.median(v) for k, v in rates.items()}
    vs_one = [b / o for b, o in zip(rates[names[0]], rates[names[1]], strict=True)]
    vs_bare = [b / o for b, o in zip(rates[names[0]], rates[names[3]], strict=True)]
    ref = med[names[1]]
    table(f"classify: one worker process (-c 1) draining a backlog of {cfg.backlog} chunks of 2 s (16 kHz float32, "
          f"batch messages of {BATCH}); {cfg.rounds} interleaved round(s), medians; model: {model}",
          ["contender", "chunks/s", "vs worker one at a time", "seconds of audio per second"],
          [[k, fmt(med[k]), f"{med[k] / ref:.2f}x", fmt(med[k] * 2)] for k in names])  # fmt: skip
    print(f"- per-round ratios, worker batched / worker one at a time: {', '.join(f'{r:.2f}x' for r in vs_one)}; "
          f"/ bare batched ONNX loop: {', '.join(f'{r:.2f}x' for r in vs_bare)}")  # fmt: skip
    verdicts.at_least(
        "classify",
        "worker batched vs worker one at a time, chunks/s >= 2.5x",
        f"{fmt(ref)} chunks/s",
        f"{fmt(med[names[0]])} chunks/s",
        statistics.median(vs_one),
        2.5,
    )
    verdicts.at_least("classify", f"worker batched vs the bare batched ONNX loop ({BATCH} a run), chunks/s >= 0.8x",
                      f"{fmt(med[names[3]])} chunks/s", f"{fmt(med[names[0]])} chunks/s", statistics.median(vs_bare),
                      0.8)  # fmt: skip


# ---- capacity: the canonical three consumers ------------------------------------------------------------


@dataclass
class Drained:
    """A backlog drained: its work (chunks, or seconds of audio), wall seconds and the workers' CPU seconds."""

    work: float
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.work / self.seconds

    @property
    def per_cpu(self) -> float:
        """Work per CPU second of the workers: what one worker process does with a core to itself."""
        return self.work / self.cpu if self.cpu > 0 else float("nan")


def consumer_backlog(rig: Rig, task: str, seconds: float, count: int, workers: int) -> Drained:
    """``count`` chunks of ``seconds``, a message each, drained by ``workers`` worker processes."""
    size, queue = int(seconds * RATE), f"cap-{uuid.uuid4().hex[:6]}"
    col = Collector(count)
    e = emitter(rig, task, size, queue, col, batch_max_chunks=0)
    try:
        frames = np.concatenate(list(synthetic(count * seconds, RATE)))
        for i in range(count):
            e.write(frames[i * size : (i + 1) * size], t0=1e9 + i * seconds)
        wait_published([e], count)
        return Drained(count, *drain(rig, queue, workers, [col], count))
    finally:
        e.close(wait=False)


def together_backlog(rig: Rig, seconds: float, workers: int) -> Drained:
    """``seconds`` of one device's audio through the three consumers (one queue), drained."""
    queue = f"cap-all-{uuid.uuid4().hex[:6]}"
    counts = [int(seconds / chunk) for _, _, chunk, _ in CONSUMERS]
    cols = [Collector(n) for n in counts]
    emitters = [emitter(rig, task, int(chunk * RATE), queue, col, batch_max_chunks=0)
                for (_, task, chunk, _), col in zip(CONSUMERS, cols, strict=True)]  # fmt: skip
    try:
        tap = ocycle_dist.Tap(*emitters)
        for i, frame in enumerate(synthetic(seconds, RATE)):
            tap.write(frame, t0=1e9 + i * 1024 / RATE)
        wait_published(emitters, sum(counts))
        return Drained(seconds, *drain(rig, queue, workers, cols, sum(counts)))
    finally:
        for e in emitters:
            e.close(wait=False)


def run_capacity(rig: Rig, cfg: Config, verdicts: Verdicts) -> None:
    runs: dict[str, dict[int, list[Drained]]] = {}  # consumer -> workers -> its runs
    for workers in cfg.workers:
        for name, task, seconds, _ in CONSUMERS:
            runs.setdefault(name, {})[workers] = [consumer_backlog(rig, task, seconds, cfg.counts[name], workers)
                                                 for _ in range(cfg.rounds)]  # fmt: skip
            rig.check()
        runs.setdefault("all three", {})[workers] = [together_backlog(rig, cfg.together, workers)
                                                     for _ in range(cfg.rounds)]  # fmt: skip
        print(f"  capacity: {workers} worker(s) done", file=sys.stderr, flush=True)
    rows = []
    one = cfg.workers[0]
    for name, task, seconds, _ in [*CONSUMERS, ("all three", "", 1.0, "")]:
        unit = "s of audio" if name == "all three" else "chunks"
        per_cpu = statistics.median(d.per_cpu for d in runs[name][one])
        cells = [f"{fmt(1e3 / per_cpu)} ms" if name != "all three" else f"{fmt(1e3 / per_cpu)} ms per s of audio",
                 f"**{fmt(per_cpu * seconds)}**"]  # fmt: skip
        for workers in cfg.workers:
            rate = statistics.median(d.rate for d in runs[name][workers])
            speedup = rate / statistics.median(d.rate for d in runs[name][one])
            cells.append(f"{fmt(rate)} {unit}/s: {fmt(rate * seconds)} ({speedup:.2f}x)")
        what = "one device's audio through all three (one queue)" if name == "all three" else (
            f"{name}: {task}, {seconds:g} s chunks")  # fmt: skip
        rows.append([what, *cells])
    table(f"capacity: devices' real-time streams served, canonical consumers (16 kHz float32, real model), every "
          f"chunk its own message; median of {cfg.rounds} run(s). Worker CPU: the worker processes' (main and pool) "
          f"CPU per chunk, with {one} worker; devices per worker process: what one worker process serves with a "
          f"core to itself (seconds of audio per CPU second); then measured here, devices (speed-up over one worker)",
          ["consumer", "worker CPU per chunk", "devices per worker process",
           *[f"{w} worker process{'es' if w > 1 else ''} (-c 1)" for w in cfg.workers]], rows)  # fmt: skip
    cpus = os.cpu_count() or 1
    print(
        f"- this machine has {cpus} CPUs, shared by the workers, redis-server and this process (the producer of "
        f"every chunk and the listener of every reply): more worker processes than CPUs cannot add throughput, "
        f"and where the workers use less than the CPUs, this process or Redis is the limit of the measured rate"
    )


SECTIONS = {"classify": run_classify, "capacity": run_capacity}


def summary(verdicts: Verdicts) -> None:
    rows = [[v.what, v.reference, v.measured, v.ratio, "PASS" if v.ok else "MISS", v.margin] for v in verdicts.items]
    table("Summary: the goals", ["what, target", "reference", "ocycle_dist", "ratio", "verdict", "margin"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each measurement (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, one round")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {tuple(SECTIONS)}")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := [s for s in chosen if s not in SECTIONS]:
        parser.error(f"unknown sections {unknown}: choose from {tuple(SECTIONS)}")
    cfg = config(args.quick, args.rounds)
    from workers import vad

    if not vad.available():
        print("the model is not installed: pip install -e '.[model]'", file=sys.stderr)
        return 2
    start, status, verdicts = perf(), 0, Verdicts()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"python {platform.python_version()} | celery {version('celery')} | onnxruntime {version('onnxruntime')} "
        f"| numpy {np.__version__} | {os.cpu_count()} cpus | load average {load} | {platform.platform()}"
    )
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]), f"({cfg})")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        rig = Rig(Path(tmp))
        try:
            print(f"4 workers ready after {rig.start():.1f} s")
            rig.warm()
            for name in chosen:
                t = perf()
                SECTIONS[name](rig, cfg, verdicts)
                print(f"  section {name}: {perf() - t:.0f} s", file=sys.stderr, flush=True)
            if verdicts.items:
                summary(verdicts)
        except BenchError as exc:
            print(f"\nFAILED: {exc}", file=sys.stderr)
            status = 1
        except KeyboardInterrupt:
            status = 130
        except Exception:
            traceback.print_exc()
            status = 1
        finally:
            rig.stop()
    print(f"\ntotal runtime {perf() - start:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
