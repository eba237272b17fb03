"""Section "scaling": throughput with 1, 2 and 4 worker processes (concurrency 1 each) on a CPU-bound task.

ocycle_dist: ``workers.tasks.classify`` (Silero VAD, or its hand-set fallback, on 2 s of 16 kHz float32 audio,
32000 samples a chunk,
written as 1024-sample frames through ``NumpyEmit``), first write to last ``on_done``. Reference: stock Celery
(``bench.refapp.classify``, the same function on the float32 bytes; ``apply_async`` of each chunk, then
``.get()`` of each). Goals (this bench's reading of "scales out"): 2 workers >= 1.5x one worker, and not slower
than stock Celery. With 2 cores, 4 workers cannot beat 2.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import numpy as np

import ocycle_dist
from bench._report import Verdicts, fmt, table
from ocycle_dist.app.sources import synthetic
from ocycle_dist.remote.settings import Settings

from .common import OCYCLE_DB, RATE, BenchError, Collector, Config, perf
from .rig import Rig, group_cpu


def run(rig: Rig, cfg: Config, verdicts: Verdicts) -> None:
    ref, w, rw = rig.ref, rig.w, rig.rw
    n, size = cfg.scale_chunks, 2 * RATE
    frames = list(synthetic(n * size / RATE, RATE))  # tone, noise, silence in turn; 1024-sample frames
    signal = np.concatenate(frames)
    ref_chunks = [signal[i * size : (i + 1) * size].tobytes() for i in range(n)]
    col = Collector(n)

    def run_ocycle(q: str) -> tuple[float, list[str]]:
        col.reset(n)
        emitter = ocycle_dist.NumpyEmit(
            "workers.tasks.classify", size, clip=True, rate=RATE, mode="celery", on_done=col.on_done,
            on_error=col.on_error, stream=f"bench-cls-{uuid.uuid4().hex[:8]}",
            settings=Settings(broker_url=rig.url(OCYCLE_DB), queue=q),
        )  # fmt: skip
        emitter.open()
        emitter.executor.hub.publisher.client.ping()
        try:
            t0 = time.time()
            t = perf()
            for i, frame in enumerate(frames):
                emitter.write(frame, t0=t0 + i * 1024 / RATE)
            if not col.event.wait(300):
                raise BenchError(f"ocycle_dist classify on {q}: {len(col.done)} of {n} in 300 s")
            if col.errors:
                raise BenchError(f"ocycle_dist classify on {q}: {col.errors[0]}")
            elapsed = max(col.done.values()) - t
        finally:
            emitter.close(wait=False)
        return elapsed, [col.results[i]["label"] for i in range(n)]

    def run_ref(q: str) -> tuple[float, list[str]]:
        t0 = time.time()
        t = perf()
        results = [ref.classify.apply_async(args=[c, t0 + 2 * i], queue=q) for i, c in enumerate(ref_chunks)]
        labels = [res.get(timeout=300)["label"] for res in results]
        elapsed = perf() - t
        del results
        return elapsed, labels

    seconds: dict[tuple[str, int], float] = {}
    cpu: dict[tuple[str, int], tuple[float, float, float]] = {}  # producer, workers, redis-server: CPU seconds
    redis_pgid = [rig.redis.proc.pid] if rig.redis.proc and rig.redis.proc.pid else []
    for k, workers in enumerate((1, 2, 4)):
        q = f"q{workers}"
        order = [("ocycle_dist", run_ocycle, w), ("stock Celery", run_ref, rw)]
        for who, fn, procs in order if k % 2 == 0 else order[::-1]:
            pgids = [p.pid for p in procs if p.pid is not None]  # each worker leads its own process group
            before = (time.process_time(), group_cpu(pgids), group_cpu(redis_pgid))
            elapsed, labels = fn(q)
            after = (time.process_time(), group_cpu(pgids), group_cpu(redis_pgid))
            seconds[who, workers] = elapsed
            cpu[who, workers] = tuple(b - a for a, b in zip(before, after, strict=True))  # type: ignore[assignment]
            if who == "ocycle_dist":
                dist_labels = labels
            else:
                ref_labels = labels
        if dist_labels != ref_labels:
            raise BenchError("classify: ocycle_dist and stock Celery labelled the chunks differently")
        print(f"  scaling: {workers} worker(s) done", file=sys.stderr, flush=True)

    def cpu_cell(who: str, workers: int) -> str:
        producer, work, red = cpu[who, workers]
        return f"{producer * 1e3 / n:.1f} / {work * 1e3 / n:.1f} / {red * 1e3 / n:.1f}"

    rows = []
    for workers in (1, 2, 4):
        a, b = n / seconds["stock Celery", workers], n / seconds["ocycle_dist", workers]
        rows.append([f"{workers} worker process{'es' if workers > 1 else ''}", fmt(a), fmt(b), f"{b / a:.2f}x",
                     f"{a / (n / seconds['stock Celery', 1]):.2f}x",
                     f"{b / (n / seconds['ocycle_dist', 1]):.2f}x", cpu_cell("stock Celery", workers),
                     cpu_cell("ocycle_dist", workers)])  # fmt: skip
        verdicts.at_least("scaling", f"classify chunks/s with {workers} worker(s) vs stock Celery >= 1x",
                          f"{fmt(a)} chunks/s", f"{fmt(b)} chunks/s", b / a, 1.0)  # fmt: skip
    speedup = seconds["ocycle_dist", 1] / seconds["ocycle_dist", 2]
    what = "classify chunks/s, 2 workers vs 1 worker >= 1.5x"
    verdicts.at_least("scaling", what, "1 worker", "2 workers", speedup, 1.5)
    table(f"Throughput on a CPU-bound task: classify, 2 s chunks of 16 kHz float32 (32000 samples), {n} chunks, "
          "first write/send to last result; workers prefork -c 1",
          ["workers", "stock Celery chunks/s", "ocycle_dist chunks/s", "ocycle / stock",
           "stock speed-up vs 1", "ocycle speed-up vs 1", "stock CPU ms/chunk: producer / workers / redis",
           "ocycle CPU ms/chunk: producer / workers / redis"], rows)  # fmt: skip
    cpus = os.cpu_count() or 1
    print(
        f"- this machine has {cpus} CPU{'s' if cpus > 1 else ''}: {cpus} workers at most can run at once (the "
        "producer, redis-server and the workers' main processes share them too), so 4 workers cannot beat 2 here"
    )
    took, model = classify_ms()
    print(f"- classify itself takes ~{took:.1f} ms per chunk in this process ({model}, 32000 samples)")


def classify_ms() -> tuple[float, str]:
    from workers import vad

    x = np.random.default_rng(0).uniform(-0.3, 0.3, 2 * RATE).astype(np.float32)
    model = vad.classify(x, rate=RATE)["model"]
    t = perf()
    for _ in range(20):
        vad.classify(x, rate=RATE)
    return (perf() - t) / 20 * 1e3, model
