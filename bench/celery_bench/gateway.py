"""Section "gateway": one process producing for 100 devices, and its writes through a Redis stall.

Gateway: 100 ``Tap``s, each with the canonical three consumers (chunks of 0.5 s, 2 s, 10 s of 16 kHz float32,
every one running ``workers.tasks.spl``: cheap, so that the producer is what is measured), written from one
thread at 4x real time (a frame of 1024 samples per device every 16 ms), through queue ``q2`` (two worker
processes). Against stock Celery doing the same job the usual way: the same frames cut into the same chunks
(``np.concatenate``) and each chunk handed to ``apply_async`` (results in its Redis backend, ``.then`` not
usable: each result read by a thread of its own, as ``AsyncResult.get`` blocks). Goals: the process's threads
<= 24, ``Tap.write`` p99 < 1 ms and max < 20 ms, ``close()`` of all < 2 s, every chunk done.

Stall: a live source writes 2 KiB chunks at 150/s while its Redis is stopped (SIGSTOP) for 20 s: a backlog of
3,000 chunks waits in the producer. Goal: ``write()`` max < 20 ms through it (the garbage collector's pauses,
which grow with what is kept, included); every chunk done after SIGCONT. Stock Celery's ``apply_async`` blocks
for its socket timeout in a stall: its worst call is printed for reference.
"""

from __future__ import annotations

import gc
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

import ocycle_dist
from bench._report import Verdicts, pct, table, us
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import RedisServer, Worker

from .common import OCYCLE_DB, RATE, BenchError, perf
from .rig import ROOT, Rig

FRAME, DEVICES, SPEED = 1024, 100, 4.0
LENGTHS = (0.5, 2.0, 10.0)


def os_threads() -> int:
    text = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("Threads:")))


class Peak:
    """The most threads this process had while it runs (sampled every 50 ms; the sampler itself not counted)."""

    def __init__(self) -> None:
        self.value, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.value = max(self.value, os_threads() - 1)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def frames_of(seconds: float) -> tuple[np.ndarray, int]:
    frame = (np.sin(np.arange(FRAME) / 8.0) * 0.1).astype(np.float32)
    return frame, int(seconds * RATE / FRAME)


def paced(frames: int, write: Any) -> tuple[list[float], float]:
    """Write ``frames`` rounds (one frame per device each) at 4x real time; each write's seconds, and how far behind
    its pace the loop ended."""
    step, took = FRAME / RATE / SPEED, []
    start, t0 = perf(), time.time()
    for i in range(frames):
        wait = start + i * step - perf()
        if wait > 0:
            time.sleep(wait)
        for d in range(DEVICES):
            t = perf()
            write(d, t0 + i * FRAME / RATE)
            took.append(perf() - t)
    return took, perf() - (start + frames * step)


def gateway_ocycle(rig: Rig, seconds: float) -> dict[str, float]:
    done: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()

    def on_done(result: Any, meta: ocycle_dist.Chunk) -> None:
        with lock:
            done[meta.stream] += 1

    run = uuid.uuid4().hex[:6]
    settings = Settings(broker_url=rig.url(OCYCLE_DB), queue="q2")
    frame, frames = frames_of(seconds)
    with Peak() as peak:
        taps = [ocycle_dist.Tap(*(ocycle_dist.NumpyEmit("workers.tasks.spl", int(length * RATE), clip=True, rate=RATE,
                                                        mode="celery", settings=settings, on_done=on_done,
                                                        on_error=lambda exc: errors.append(repr(exc)),
                                                        stream=f"gw{run}-{d}-{length:g}") for length in LENGTHS))
                for d in range(DEVICES)]  # fmt: skip
        gc.freeze()  # a gateway set up (as `ocycle-dist stream` does): full collections skip what lasts
        cpu = time.process_time()
        took, behind = paced(frames, lambda d, t0: taps[d].write(frame, t0=t0))
        closing = perf()
        pending = sum(tap.close(timeout=60) for tap in taps)
        close_s = perf() - closing
        cpu = time.process_time() - cpu
        gc.unfreeze()
    expected = sum(frames * FRAME // int(length * RATE) for length in LENGTHS) * DEVICES
    if errors or pending or sum(done.values()) != expected:
        raise BenchError(f"gateway: {sum(done.values())} of {expected} done, {pending} pending, errors {errors[:2]}")
    return {"threads": peak.value, "p50": pct(took, 50), "p99": pct(took, 99), "max": max(took), "close": close_s,
            "behind": behind, "chunks": expected, "cpu": cpu}  # fmt: skip


def gateway_celery(rig: Rig, seconds: float) -> dict[str, float]:
    """Stock Celery: per device and length, frames joined with np.concatenate until a chunk fills, then apply_async;
    one thread per device reads its results (``.get()``), as nothing else fires on completion."""
    from queue import SimpleQueue

    frame, frames = frames_of(seconds)
    buffers: list[list[list[np.ndarray]]] = [[[] for _ in LENGTHS] for _ in range(DEVICES)]
    filled = [[0] * len(LENGTHS) for _ in range(DEVICES)]
    results: list[SimpleQueue[Any]] = [SimpleQueue() for _ in range(DEVICES)]
    done = [0]
    lock = threading.Lock()

    def reader(q: SimpleQueue[Any]) -> None:
        while (res := q.get()) is not None:
            res.get(timeout=120)
            with lock:
                done[0] += 1

    def write(d: int, t0: float) -> None:
        for k, length in enumerate(LENGTHS):
            buffers[d][k].append(frame)
            filled[d][k] += FRAME
            size = int(length * RATE)
            if filled[d][k] >= size:
                joined = np.concatenate(buffers[d][k])
                chunk, rest = joined[:size], joined[size:]
                buffers[d][k], filled[d][k] = ([rest] if len(rest) else []), len(rest)
                results[d].put(rig.ref.spl.apply_async(args=[(chunk * 32767).astype("<i2").tobytes(), t0],
                                                       queue="q2"))  # fmt: skip

    with Peak() as peak:
        readers = [threading.Thread(target=reader, args=(q,), daemon=True) for q in results]
        for th in readers:
            th.start()
        cpu = time.process_time()
        took, behind = paced(frames, write)
        closing = perf()
        for q in results:
            q.put(None)
        for th in readers:
            th.join(120)
        close_s = perf() - closing
        cpu = time.process_time() - cpu
    expected = sum(frames * FRAME // int(length * RATE) for length in LENGTHS) * DEVICES
    if done[0] != expected:
        raise BenchError(f"gateway, stock Celery: {done[0]} of {expected} done")
    return {"threads": peak.value, "p50": pct(took, 50), "p99": pct(took, 99), "max": max(took), "close": close_s,
            "behind": behind, "chunks": expected, "cpu": cpu}  # fmt: skip


class GcPauses:
    """The garbage collector's pauses in this process while it is entered (the longest, per generation)."""

    def __init__(self) -> None:
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = perf()
        else:
            g = info["generation"]
            self.longest[g] = max(self.longest[g], perf() - self._started)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self._callback)


def stall(tmp: Path, stalled: float = 20.0, rate: float = 150.0) -> dict[str, float]:
    """A live source of 2 KiB chunks through a Redis stopped for ``stalled`` seconds (its own redis-server and
    worker, so that the rig's workers are not stopped with it)."""
    done = [0]
    with RedisServer(log=tmp / "stall-redis.log") as redis:
        worker = Worker(redis.url, name="stall", concurrency=2, loglevel="WARNING", log=tmp / "stall.log",
                        include=("bench.tasks",), cwd=ROOT).start()  # fmt: skip
        try:
            emitter = ocycle_dist.BufferEmit("bench.echo", 2048, clip=True, mode="celery", broker=redis.url,
                                             on_done=lambda r: done.__setitem__(0, done[0] + 1))  # fmt: skip
            frame = bytes(range(256)) * 8
            before, during, after = 3.0, stalled, 3.0
            took: list[float] = []
            backlog = 0
            with GcPauses() as pauses:
                start, i, state = perf(), 0, 0
                while (now := perf() - start) < before + during + after:
                    if state == 0 and now >= before:
                        os.kill(redis.proc.pid, signal.SIGSTOP)
                        state = 1
                    elif state == 1 and now >= before + during:
                        backlog = emitter.stats().in_flight
                        os.kill(redis.proc.pid, signal.SIGCONT)
                        state = 2
                    wait = start + i / rate - perf()
                    if wait > 0:
                        time.sleep(wait)
                    t = perf()
                    emitter.write(frame)
                    if state == 1:
                        took.append(perf() - t)
                    i += 1
                pending = emitter.close(timeout=120)
        finally:
            worker.stop()
    if pending or done[0] != i:
        raise BenchError(f"stall: {done[0]} of {i} done, {pending} pending")
    return {"p99": pct(took, 99), "max": max(took), "backlog": backlog, "gen2": pauses.longest[2], "writes": len(took)}


def run(rig: Rig, cfg: Any, verdicts: Verdicts) -> None:
    quick = cfg.rounds <= 2 and cfg.samples <= 30
    seconds = 8.0 if quick else 20.0
    rounds = 1 if quick else 3
    got: dict[str, list[dict[str, float]]] = {"ocycle_dist": [], "stock Celery": []}
    for rnd in range(rounds):
        order = [("ocycle_dist", gateway_ocycle), ("stock Celery", gateway_celery)]
        for who, fn in order if rnd % 2 == 0 else order[::-1]:
            got[who].append(fn(rig, seconds))
        print(f"  gateway round {rnd + 1}/{rounds} done", file=sys.stderr, flush=True)
    med = {who: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for who, runs in got.items()}
    o, c = med["ocycle_dist"], med["stock Celery"]
    rows = [[label, fmt(c[key]), fmt(o[key]), f"{o[key] / c[key]:.2f}x" if c[key] else "-"]
            for label, key, fmt in (("threads at most", "threads", lambda x: f"{x:.0f}"),
                                    ("write p50 (Tap.write vs chunking + apply_async)", "p50", us),
                                    ("write p99", "p99", us), ("write max", "max", us),
                                    ("close() of all (every result in)", "close", lambda x: f"{x:.2f} s"),
                                    ("the writer behind its pace at the end", "behind", lambda x: f"{x:.2f} s"),
                                    ("producer CPU seconds", "cpu", lambda x: f"{x:.2f} s"))]  # fmt: skip
    table(f"Gateway: {DEVICES} devices x 3 consumers at {SPEED:g}x real time, {seconds:g} s of audio each "
          f"({o['chunks']:.0f} chunks), 2 worker processes; {rounds} interleaved rounds, medians",
          ["what", "stock Celery", "ocycle_dist", "ratio"], rows)  # fmt: skip
    verdicts.at_most("gateway", "threads of the producing process <= 24", "24", f"{o['threads']:.0f}",
                     o["threads"] / 24, 1.0)  # fmt: skip
    verdicts.at_most("gateway", "Tap.write p99 < 1 ms", "1,000 µs", us(o["p99"]), o["p99"] / 1e-3, 1.0)
    verdicts.at_most("gateway", "Tap.write max < 20 ms", "20,000 µs", us(o["max"]), o["max"] / 20e-3, 1.0)
    verdicts.at_most("gateway", "close() of all < 2 s", "2 s", f"{o['close']:.2f} s", o["close"] / 2.0, 1.0)

    stalls = [stall(rig.tmp, 8.0 if quick else 20.0) for _ in range(1 if quick else 2)]
    worst = max(s["max"] for s in stalls)

    def each(key: str, show: Any = us) -> str:
        return ", ".join(show(s[key]) for s in stalls)

    print(f"\n- stall: Redis stopped (SIGSTOP) {8 if quick else 20} s under a live source of 2 KiB chunks at 150/s, "
          f"{len(stalls)} run(s): backlog at SIGCONT {each('backlog', lambda x: f'{x:.0f}')} chunks; write() p99 "
          f"{each('p99')}, max {each('max')}; longest generation-2 collection {each('gen2')}; every chunk done after"
          " SIGCONT")  # fmt: skip
    verdicts.at_most("stall", "write() max through a 20 s Redis stall with a 3,000-chunk backlog < 20 ms",
                     "20,000 µs", us(worst), worst / 20e-3, 1.0)  # fmt: skip
