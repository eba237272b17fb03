"""Section "fleet": what one worker process gets through (drain, fleet), and the producer's CPU.

Drain: 2,000 SPL chunks (0.5 s of 16 kHz int16, 16 KB) wait in a queue no worker consumes yet; then one
worker process (``-c 1``; ``w0`` / ``r0``) is told to consume it (``add_consumer``), timed from the first result
to the last (the other 1,999 chunks): a worker starts reading a queue added to it only when its pending BRPOP
on its other queues times out (kombu's ``brpop_timeout``, 1 s), 0 to 1 s after ``add_consumer``, a delay that
is no part of draining. ocycle_dist: ``NumpyEmit('workers.tasks.spl', ...)`` (the backlog goes in batch
messages, the pool process drains the rest); stock Celery: ``bench.refapp.spl.apply_async`` of the int16
bytes, then ``.get()`` of each. The bare loop: ``workers.audio.spl`` on the same chunks in this process.
Goal: >= 10x stock Celery.

Fleet: 50 producers (threads of this process, one stream each) each writing an SPL chunk every 10 ms at
most, with one chunk in flight at a time (ocycle_dist: ``max_inflight=1, policy='block'``; stock Celery:
``apply_async(...).get()`` in a loop), against 1 and 2 worker processes (queues ``q1``, ``q2``); completed chunks
per second over the measuring window. Goal: >= 5x stock Celery with the same workers.

Producer CPU: the producer's CPU for the canonical three consumers (spl 0.5 s, classify 2 s, archive 10 s of 16 kHz
float32) streamed at 10x real time through queue ``q2``: CPU seconds of this process per second of audio, as a
share of one core per real-time stream. Limit: 0.25 %.
"""

from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np
from celery import Celery

import ocycle_dist
from bench._report import Verdicts, fmt, table
from ocycle_dist.app.consumers import CONSUMERS
from ocycle_dist.app.sources import synthetic
from ocycle_dist.remote import wire
from ocycle_dist.remote.settings import Settings

from .common import OCYCLE_DB, RATE, REF_DB, BenchError, Collector, Config, perf
from .rig import Rig

SPL = RATE // 2  # samples per SPL chunk


def spl_chunks(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [(rng.standard_normal(SPL) * 3000).astype("<i2") for _ in range(n)]


def control_app(url: str, serializer: str) -> Celery:
    app = Celery("bench-control", broker=url, set_as_current=False)
    if serializer == wire.SERIALIZER:
        wire.register()
    app.conf.update(task_serializer=serializer, accept_content=[serializer, "json"], result_serializer=serializer)
    return app


def consume(url: str, serializer: str, node: str, queue: str, on: bool) -> None:
    """Tell worker ``node`` to start (or stop) consuming ``queue``; returns once it answered."""
    app = control_app(url, serializer)
    try:
        dest = [f"{node}@{socket.gethostname()}"]
        if on:
            got = app.control.add_consumer(queue, destination=dest, reply=True, timeout=10)
        else:
            got = app.control.cancel_consumer(queue, destination=dest, reply=True, timeout=10)
        if not got:
            raise BenchError(f"worker {node} did not answer {'add' if on else 'cancel'}_consumer({queue!r})")
    finally:
        app.close()


def drain_ocycle(rig: Rig, chunks: list[np.ndarray]) -> float:
    n, queue = len(chunks), f"drain-o-{uuid.uuid4().hex[:6]}"
    col = Collector(n)
    emitter = ocycle_dist.NumpyEmit(
        "workers.tasks.spl", SPL, clip=True, rate=RATE, mode="celery", on_done=col.on_done, on_error=col.on_error,
        stream=f"bench-drain-{uuid.uuid4().hex[:6]}",
        settings=Settings.from_env(broker_url=rig.url(OCYCLE_DB), queue=queue),
    )  # fmt: skip
    try:
        t0 = time.time()
        for i, c in enumerate(chunks):
            emitter.write(c, t0=t0 + i * 0.5)
        executor = emitter.executor
        assert executor is not None
        deadline = time.monotonic() + 60
        while executor.counts["published"] < n:
            if time.monotonic() > deadline:
                raise BenchError("drain: ocycle_dist did not publish its backlog in 60 s")
            time.sleep(0.005)
        consume(rig.url(OCYCLE_DB), wire.SERIALIZER, "w0", queue, True)
        if not col.event.wait(300):
            raise BenchError(f"drain: ocycle_dist drained {len(col.done)} of {n} in 300 s")
        if col.errors:
            raise BenchError(f"drain: ocycle_dist: {col.errors[0]}")
        elapsed = max(col.done.values()) - min(col.done.values())
    finally:
        emitter.close(wait=False)
        consume(rig.url(OCYCLE_DB), wire.SERIALIZER, "w0", queue, False)
    return (n - 1) / elapsed


def drain_ref(rig: Rig, chunks: list[np.ndarray]) -> float:
    n, queue = len(chunks), f"drain-r-{uuid.uuid4().hex[:6]}"
    t0 = time.time()
    results = [rig.ref.spl.apply_async(args=[c.tobytes(), t0 + i * 0.5], queue=queue) for i, c in enumerate(chunks)]
    consume(rig.url(REF_DB), "json", "r0", queue, True)
    try:
        results[0].get(timeout=300)
        t = perf()
        for res in results[1:]:
            res.get(timeout=300)
        elapsed = perf() - t
    finally:
        consume(rig.url(REF_DB), "json", "r0", queue, False)
        del results
    return (n - 1) / elapsed


def bare_loop(chunks: list[np.ndarray]) -> float:
    from workers import audio

    t = perf()
    for c in chunks:
        audio.spl(c)
    return len(chunks) / (perf() - t)


def fleet_ocycle(rig: Rig, queue: str, producers: int, pace: float, seconds: float, warm: float) -> float:
    done: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def on_done(result: Any) -> None:
        t = perf()
        with lock:
            done.append(t)

    def on_error(exc: BaseException) -> None:
        errors.append(repr(exc))

    settings = Settings.from_env(broker_url=rig.url(OCYCLE_DB), queue=queue)
    emitters = [ocycle_dist.NumpyEmit("workers.tasks.spl", SPL, clip=True, rate=RATE, mode="celery", max_inflight=1,
                                      policy="block", on_done=on_done, on_error=on_error, settings=settings,
                                      stream=f"bench-fleet{i}-{uuid.uuid4().hex[:6]}")
                for i in range(producers)]  # fmt: skip
    chunks = spl_chunks(8)
    stop = threading.Event()

    def produce(k: int, emitter: ocycle_dist.NumpyEmit) -> None:
        start, i = perf() + k / (producers * pace), 0
        while not stop.is_set():
            wait = start + i / pace - perf()
            if wait > 0:
                time.sleep(wait)
            emitter.write(chunks[i % 8])
            i += 1

    return _run_fleet(emitters, produce, stop, done, lock, errors, seconds, warm, "ocycle_dist")


def fleet_ref(rig: Rig, queue: str, producers: int, pace: float, seconds: float, warm: float) -> float:
    done: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    chunks = [c.tobytes() for c in spl_chunks(8)]
    stop = threading.Event()

    def produce(k: int, _: Any) -> None:
        start, i = perf() + k / (producers * pace), 0
        while not stop.is_set():
            wait = start + i / pace - perf()
            if wait > 0:
                time.sleep(wait)
            try:
                rig.ref.spl.apply_async(args=[chunks[i % 8], time.time()], queue=queue).get(timeout=60)
            except Exception as exc:
                errors.append(repr(exc))
                return
            with lock:
                done.append(perf())
            i += 1

    return _run_fleet([None] * producers, produce, stop, done, lock, errors, seconds, warm, "stock Celery")


def _run_fleet(emitters: list[Any], produce: Any, stop: threading.Event, done: list[float], lock: threading.Lock,
               errors: list[str], seconds: float, warm: float, who: str) -> float:  # fmt: skip
    threads = [threading.Thread(target=produce, args=(k, e), daemon=True) for k, e in enumerate(emitters)]
    t = perf()
    for th in threads:
        th.start()
    time.sleep(warm + seconds)
    stop.set()
    with lock:
        window = [x for x in done if t + warm <= x <= t + warm + seconds]
    for th in threads:
        th.join(60)
    for e in emitters:
        if e is not None:
            e.close(timeout=60)
    if errors:
        raise BenchError(f"fleet {who}: {errors[0]}")
    return len(window) / seconds


def producer_cpu(rig: Rig, seconds: float, speed: float, *, local: bool = False) -> float:
    """CPU seconds of this process per second of audio, three consumers at ``speed`` x real time; with
    ``local``, the same loop with serial emitters whose callback does nothing (what the loop itself costs:
    pacing, the Tap, cutting the chunks)."""
    settings = Settings.from_env(broker_url=rig.url(OCYCLE_DB), queue="q2")
    cols = [Collector(int(seconds / chunk)) for _, _, chunk, _ in CONSUMERS]
    if local:
        emitters = [ocycle_dist.NumpyEmit(lambda chunk, t0: None, int(chunk * RATE), clip=True, rate=RATE)
                    for _, _, chunk, _ in CONSUMERS]  # fmt: skip
    else:
        emitters = [ocycle_dist.NumpyEmit(task, int(chunk * RATE), clip=True, rate=RATE, mode="celery",
                                          settings=settings, on_done=col.on_done, on_error=col.on_error,
                                          stream=f"bench-cpu-{name}-{uuid.uuid4().hex[:6]}")
                    for (name, task, chunk, _), col in zip(CONSUMERS, cols, strict=True)]  # fmt: skip
    frames = list(synthetic(seconds, RATE))
    tap = ocycle_dist.Tap(*emitters)
    step = 1024 / RATE / speed
    c0, t = time.process_time(), perf()
    for i, frame in enumerate(frames):
        wait = t + i * step - perf()
        if wait > 0:
            time.sleep(wait)
        tap.write(frame)
    for col in [] if local else cols:
        if not col.event.wait(120):
            raise BenchError("producer CPU: results missing")
    cpu = time.process_time() - c0
    tap.close(timeout=30)
    return cpu / seconds


def run(rig: Rig, cfg: Config, verdicts: Verdicts) -> None:
    quick = cfg.rounds <= 2 and cfg.samples <= 30
    n = 400 if quick else 2000
    chunks = spl_chunks(n)
    rounds = 1 if quick else 3
    rates: dict[str, list[float]] = {"stock Celery": [], "ocycle_dist": [], "bare loop": []}
    for rnd in range(rounds):
        order = [("ocycle_dist", drain_ocycle), ("stock Celery", drain_ref)]
        for who, fn in order if rnd % 2 == 0 else order[::-1]:
            rates[who].append(fn(rig, chunks))
        rates["bare loop"].append(bare_loop(chunks))
        print(f"  drain round {rnd + 1}/{rounds} done", file=sys.stderr, flush=True)
    ratios = [o / r for o, r in zip(rates["ocycle_dist"], rates["stock Celery"], strict=True)]
    med = {k: statistics.median(v) for k, v in rates.items()}
    table(f"Drain: one worker process (-c 1) draining {n} SPL chunks (0.5 s of 16 kHz int16, 16 KB) already queued; "
          f"{rounds} interleaved rounds, medians",
          ["contender", "chunks/s", "vs stock Celery", "vs the bare loop"],
          [[k, fmt(med[k]), f"{med[k] / med['stock Celery']:.2f}x", f"{med[k] / med['bare loop']:.3f}x"]
           for k in ("stock Celery", "ocycle_dist", "bare loop")])  # fmt: skip
    verdicts.at_least("drain", f"one worker (-c 1) draining {n} SPL chunks, chunks/s vs stock Celery >= 10x "
                      f"(bare loop {fmt(med['bare loop'])}/s)", f"{fmt(med['stock Celery'])} chunks/s",
                      f"{fmt(med['ocycle_dist'])} chunks/s", statistics.median(ratios), 10.0)  # fmt: skip

    producers, pace = 50, 100.0
    seconds, warm = (3.0, 1.0) if quick else (6.0, 2.0)
    rows = []
    for k, (queue, workers) in enumerate((("q1", 1), ("q2", 2))):
        got: dict[str, list[float]] = {"stock Celery": [], "ocycle_dist": []}
        for rnd in range(1 if quick else 2):
            order = [("ocycle_dist", fleet_ocycle), ("stock Celery", fleet_ref)]
            for who, fn in order if (rnd + k) % 2 == 0 else order[::-1]:
                got[who].append(fn(rig, queue, producers, pace, seconds, warm))
        a, b = statistics.median(got["stock Celery"]), statistics.median(got["ocycle_dist"])
        rows.append([f"{workers} worker process{'es' if workers > 1 else ''}", fmt(a), fmt(b), f"{b / a:.2f}x",
                     f"{fmt(producers * pace)}"])  # fmt: skip
        verdicts.at_least("fleet", f"fleet of {producers} producers (one chunk in flight each), {workers} worker(s): "
                          "completed chunks/s vs apply_async >= 5x", f"{fmt(a)} chunks/s", f"{fmt(b)} chunks/s",
                          b / a, 5.0)  # fmt: skip
        print(f"  fleet with {workers} worker(s) done", file=sys.stderr, flush=True)
    table(f"Fleet: {producers} producers, one SPL chunk in flight each, paced at {pace:g} chunks/s each; "
          f"completed chunks/s over {seconds:g} s (after {warm:g} s)",
          ["workers", "stock Celery (apply_async().get() loops)", "ocycle_dist", "ratio", "offered chunks/s"],
          rows)  # fmt: skip

    audio, speed = (20.0, 10.0) if quick else (60.0, 10.0)
    runs = [(producer_cpu(rig, audio, speed), producer_cpu(rig, audio, speed, local=True)) for _ in range(rounds)]
    per_second = statistics.median(c for c, _ in runs)
    loop = statistics.median(lo for _, lo in runs)
    share = per_second * 100  # % of one core per real-time stream
    print(f"\n- producer CPU: the canonical three consumers, {audio:g} s of audio at {speed:g}x, {rounds} round(s), "
          f"medians: {per_second * 1e3:.2f} ms of producer CPU per second of audio = {share:.3f} % of one core per "
          f"real-time stream; of which the loop itself (pacing, Tap, cutting: the same with serial no-op emitters) "
          f"{loop * 1e3:.2f} ms, the celery mode {max(0.0, per_second - loop) * 1e3:.2f} ms")  # fmt: skip
    verdicts.at_most("producer CPU", "producer CPU per real-time stream of the canonical three consumers "
                     "<= 0.25 % of a core", "0.25 %", f"{share:.3f} %", share / 0.25, 1.0)  # fmt: skip
