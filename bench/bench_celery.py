"""ocycle_dist's Celery path against stock Celery and raw redis-py, goal by goal, with a PASS/MISS verdict each.

Run from the repository root (needs ``redis-server`` on PATH, e.g. Debian's ``apt-get install redis-server``)::

    python bench/bench_celery.py              # everything, 5 interleaved publish rounds (~2.5 min)
    python bench/bench_celery.py --rounds 9
    python bench/bench_celery.py --quick      # smoke run: small counts, 2 rounds (~45 s)
    python bench/bench_celery.py --sections 1,4   # some sections only (1 3a 4 5 3b 6; 1 covers goals 1 and 2)
    python bench/bench_celery.py --logs DIR   # keep redis-server's and the workers' logs in DIR

Self-contained: starts its own ``redis-server`` on a free loopback port (no persistence) and 8 workers, each
``celery worker --pool prefork -c 1``: ``w0``-``w3`` of ocycle_dist (``-A workers``, db 0) and ``r0``-``r3``
of stock Celery (``-A bench.refapp``: JSON, Redis result backend, db 1). Queues: ``w0``/``r0`` serve
``celery``, ``q1``, ``q2``, ``q4``; ``w1``/``r1`` ``q2`` and ``q4``; the others ``q4`` only: sending to ``qN``
uses N worker processes. It waits for every worker to answer a ping and stops everything at the end, on
error and on Ctrl-C (process groups: SIGTERM, then SIGKILL). Sections 3b and 6 kill redis-server and start
a new, empty one on the same port; a worker that exits on the lost connection (Celery 5.7/kombu 5.7 sometimes
do: "Unrecoverable error: AttributeError") is started again, as the compose file's restart policy would, and
reported. The end of the output counts what the workers' logs say about the outages.

Sections (run in this order; the summary at the end lists the goals in order):

1. Goals 1 and 2, publish throughput of random-bytes chunks (2 KiB and 1 MiB) to a queue no worker consumes:
   a raw redis-py ``LPUSH`` loop (one command per chunk, one connection); stock
   ``task.apply_async(args=[payload, t0])`` (JSON, bytes go base64; each call also SUBSCRIBEs to its result
   channel); ocycle_dist ``BufferEmit(..., mode='celery')``: from the first ``write()`` until the executor has
   published every chunk (``executor.counts['published'] == N``). Interleaved rounds (who goes first
   rotates), medians; ratios are medians of the per-round ratios (min-max in brackets). Goals: 2 KiB
   chunks/s >= 1x raw LPUSH and >= 5x apply_async; 1 MiB MB/s >= 0.7x raw LPUSH and >= 5x apply_async.
3a. Goal 3, ``write()`` latency while publishing at full rate: every ``emitter.write(frame)`` timed with
   ``perf_counter``, 2 KiB frames into 2 KiB chunks and 64 KiB frames into 1 MiB chunks, written as fast as
   possible to the unconsumed queue while the publisher thread sends them. Goal: p99 < 1000 µs.
4. Goal 4, emit-to-``on_done`` latency with idle workers (``echo``, 2 KiB): one chunk at a time against
   ``apply_async(...).get()`` (samples alternate; goal: ratio <= 1.1 at p50 and p99), and N chunks written at
   once against N ``apply_async`` then ``.get()`` of each in order (goal "far better under load", read here
   as ratio <= 0.5 at p50 and p99). One worker process each (queue ``celery``), prefetch 4 on both sides.
5. Goal 5, throughput with 1, 2 and 4 worker processes (concurrency 1 each) on ``workers.tasks.classify``
   (Silero VAD, or its hand-set fallback, on 2 s of 16 kHz float32 audio, 32000 samples a chunk, written as
   1024-sample frames through ``NumpyEmit``), first write to last ``on_done``; the same with stock Celery
   (``bench.refapp.classify``, the same function on the float32 bytes; ``apply_async`` of each chunk, then
   ``.get()`` of each). Goals (this bench's reading of "scales out"): 2 workers >= 1.5x one worker, and not
   slower than stock Celery. With 2 cores, 4 workers cannot beat 2.
3b. Goal 3 while the broker is down: paced writes (2 KiB frames into 2 KiB chunks, and 64 KiB frames into
   1 MiB chunks), redis-server killed after a moment and restarted empty a few seconds later; every write
   timed; ``echo`` tasks on 4 workers, ``Settings(resend_after=5)`` so chunks lost with the old Redis are
   sent again. Also checks that every chunk's result arrives once, with its payload.
6. Goal 6, producer memory: a subprocess (``bench/_memchild.py``, so its RSS is its own) streams 600 s of
   16 kHz float32 audio (frames of 1024) through the three demo consumers (``ocycle_dist.demo.CONSUMERS``:
   spl 0.5 s, classify 2 s, archive_flac 10 s; max_inflight 64 each, as the demo) at 40x real time to 2
   workers, with redis-server killed for 5 s in the middle (restarted empty; ``resend_after=5``). Peak
   ``VmRSS`` per phase, ``VmHWM`` and peak ``spooled_bytes``, against the bound baseline + 3 x
   sum(max_inflight x chunk bytes) (the spool's copy, the encoded messages of a publish batch, and slack).

Machines are shared and noisy (2 slow cores here): read ratios, not absolute numbers. Exit code 0 unless a
contender failed (lost reply, error, time-out); a missed goal is reported, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import logging
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's ocycle_dist, workers and bench.*

import numpy as np  # noqa: E402
import redis  # noqa: E402

import ocycle_dist  # noqa: E402
from bench._report import Verdicts, fmt, mb, ms, pct, ratio_cell, table, us  # noqa: E402
from bench._topo import (  # noqa: E402
    BenchError,
    Proc,
    Topology,
    group_cpu,
    interrupts_as_exceptions,
    scan_logs,
    wait_ready,
)
from ocycle_dist.demo import synthetic  # noqa: E402
from ocycle_dist.remote.protocol import CHUNK_PREFIX  # noqa: E402
from ocycle_dist.remote.settings import Settings  # noqa: E402

KIB, MIB = 1024, 1024 * 1024
RATE = 16000
OCYCLE_DB, REF_DB, PUB_DB = 0, 1, 2  # ocycle workers; reference workers + their result backend; unconsumed queues
PUB_QUEUE = "bench-unconsumed"
TASK = "workers.tasks.echo"
WORKER_QUEUES = ["celery,q1,q2,q4", "q2,q4", "q4", "q4"]  # worker i serves these: queue qN has N workers
SECTIONS = ("1", "3a", "4", "5", "3b", "6")
perf = time.perf_counter
verdicts = Verdicts()


@dataclass
class Config:
    rounds: int
    counts: dict[int, int]  # publish: chunk size -> chunks
    samples: int  # latency one at a time
    load: int  # latency under load
    writes: dict[tuple[int, int], int]  # 3a: (frame, chunk) -> writes
    outage: tuple[float, float, float, float]  # 3b: writes/s of 2 KiB, s before, s down, s after
    scale_chunks: int  # 5
    mem: tuple[float, float, float]  # 6: audio seconds, speed, seconds down


def config(quick: bool, rounds: int) -> Config:
    if quick:
        return Config(2, {2 * KIB: 200, MIB: 10}, 30, 50, {(2 * KIB, 2 * KIB): 2000, (64 * KIB, MIB): 320},
                      (1000.0, 0.5, 2.0, 0.5), 40, (120.0, 40.0, 1.5))  # fmt: skip
    return Config(max(1, rounds), {2 * KIB: 2000, MIB: 60}, 200, 500,
                  {(2 * KIB, 2 * KIB): 20000, (64 * KIB, MIB): 4000}, (1000.0, 1.0, 3.0, 1.0), 400,
                  (600.0, 40.0, 5.0))  # fmt: skip


def size_label(size: int) -> str:
    return f"{size // KIB} KiB" if size < MIB else f"{size // MIB} MiB"


def close_unconsumed(emitter: ocycle_dist.BufferEmit) -> None:
    """Close an emitter whose queue no worker consumes: drop what it keeps (no reply will ever come)."""
    executor = emitter.executor
    emitter.close(wait=False)
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)
        with executor._cond:  # cancelling does not wake the dispatcher: it would linger until resend_after
            executor._cond.notify_all()
        executor._dispatcher.join(10)
        if executor._dispatcher.is_alive():
            print("  note: an executor's dispatcher did not stop 10 s after shutdown(cancel_futures=True)",
                  file=sys.stderr)  # fmt: skip


class Collector:
    """on_done/on_error target: times each chunk's reply by its sequence number; counts calls per chunk."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.done: dict[int, float] = {}
        self.results: dict[int, Any] = {}
        self.errors: list[str] = []
        self.calls = 0
        self.event = threading.Event()
        self.lock = threading.Lock()

    def reset(self, expect: int) -> None:
        with self.lock:
            self.expect, self.done, self.results, self.errors, self.calls = expect, {}, {}, [], 0
            self.event.clear()

    def on_done(self, result: Any, meta: ocycle_dist.Chunk) -> None:
        t = perf()
        with self.lock:
            self.calls += 1
            self.done[meta.seq] = t
            self.results[meta.seq] = result
            if len(self.done) + len(self.errors) >= self.expect:
                self.event.set()

    def on_error(self, exc: BaseException, meta: ocycle_dist.Chunk) -> None:
        with self.lock:
            self.calls += 1
            self.errors.append(f"chunk {meta.seq}: {exc!r}")
            if len(self.done) + len(self.errors) >= self.expect:
                self.event.set()


def check_echo(result: Any, payload: bytes, who: str) -> None:
    if not (isinstance(result, (list, tuple)) and bytes(result[0]) == payload):
        raise BenchError(f"{who}: echo returned something else than the payload: {str(result)[:200]}")


# ---- section 1: publish throughput (goals 1 and 2) ---------------------------------------------------------------


@dataclass
class Publish:
    label: str
    size: int
    payloads: list[bytes]
    seconds: dict[str, list[float]] = field(default_factory=dict)
    wire: dict[str, int] = field(default_factory=dict)  # bytes stored in Redis per chunk
    write_seconds: list[float] = field(default_factory=list)  # ocycle: until the last write() returned


def pub_raw(r: redis.Redis, case: Publish) -> float:
    lpush, payloads = r.lpush, case.payloads
    t = perf()
    for p in payloads:
        lpush(PUB_QUEUE, p)
    elapsed = perf() - t
    if "raw LPUSH" not in case.wire:
        case.wire["raw LPUSH"] = len(r.lindex(PUB_QUEUE, 0) or b"")
    return elapsed


def pub_celery(task: Any, r_ref: redis.Redis, case: Publish) -> float:
    t0, results = time.time(), []
    apply, append = task.apply_async, results.append
    t = perf()
    for p in case.payloads:
        append(apply(args=[p, t0], queue=PUB_QUEUE))
    elapsed = perf() - t
    if "apply_async" not in case.wire:
        case.wire["apply_async"] = len(r_ref.lindex(PUB_QUEUE, 0) or b"")
    del results  # AsyncResult.__del__ unsubscribes: outside the timing
    return elapsed


def unconsumed_emitter(url: str, size: int, n: int) -> ocycle_dist.BufferEmit:
    """An emitter of ``size``-byte chunks to the queue no worker consumes, room for ``n`` chunks, connected."""
    emitter = ocycle_dist.BufferEmit(
        TASK, size, clip=True, mode="celery", max_inflight=n + 1, stream=f"bench-pub-{uuid.uuid4().hex[:8]}",
        settings=Settings(broker_url=url, queue=PUB_QUEUE, resend_after=3600.0),
    )  # fmt: skip
    emitter.open()
    emitter.executor._client.ping()  # connect outside the timing, as the others are
    return emitter


def wait_published(emitter: ocycle_dist.BufferEmit, n: int, timeout: float = 120.0) -> None:
    executor = emitter.executor
    deadline = time.monotonic() + timeout
    while executor.counts["published"] < n:
        if time.monotonic() > deadline:
            raise BenchError(f"ocycle_dist published {executor.counts['published']} of {n} chunks in {timeout} s")
        time.sleep(0.0002)


def pub_ocycle(url: str, r: redis.Redis, case: Publish) -> float:
    n = len(case.payloads)
    emitter = unconsumed_emitter(url, case.size, n)
    write = emitter.write
    try:
        t = perf()
        for p in case.payloads:
            write(p)
        written = perf() - t
        wait_published(emitter, n)
        elapsed = perf() - t
    finally:
        close_unconsumed(emitter)
    case.write_seconds.append(written)
    if "ocycle_dist" not in case.wire:
        message = r.lindex(PUB_QUEUE, 0) or b""
        claims = [r.strlen(k) for k in r.scan_iter(CHUNK_PREFIX + "*", count=1000)]
        case.wire["ocycle_dist"] = len(message) + (claims[0] if claims else 0)
        if claims:
            case.wire["ocycle_dist claimed"] = claims[0]
            case.wire["ocycle_dist message"] = len(message)
    return elapsed


def section_publish(topo: Topology, ref: Any, cfg: Config) -> None:
    r = redis.Redis.from_url(topo.url(PUB_DB))
    r_ref = redis.Redis.from_url(topo.url(REF_DB))
    cases = [Publish(size_label(size), size, [os.urandom(size) for _ in range(n)]) for size, n in cfg.counts.items()]
    ref.echo.apply_async(args=[b"warm-up", 0.0], queue=PUB_QUEUE).forget()  # connect + subscribe once

    def clean() -> None:
        r.flushdb()
        r_ref.delete(PUB_QUEUE)
        gc.collect()

    clean()
    contenders: dict[str, Callable[[Publish], float]] = {
        "raw LPUSH": lambda c: pub_raw(r, c),
        "apply_async": lambda c: pub_celery(ref.echo, r_ref, c),
        "ocycle_dist": lambda c: pub_ocycle(topo.url(PUB_DB), r, c),
    }
    keys = list(contenders)
    for case in cases:
        case.seconds = {k: [] for k in keys}
    for rnd in range(cfg.rounds):
        order = keys[rnd % len(keys) :] + keys[: rnd % len(keys)]
        for case in cases:
            for k in order:
                case.seconds[k].append(contenders[k](case))
                clean()
        print(f"  publish round {rnd + 1}/{cfg.rounds} done", file=sys.stderr, flush=True)

    goals = {(2 * KIB, "raw LPUSH"): ("1", 1.0), (2 * KIB, "apply_async"): ("1", 5.0),
             (MIB, "raw LPUSH"): ("2", 0.7), (MIB, "apply_async"): ("2", 5.0)}  # fmt: skip
    rows = []
    for case in cases:
        n, mbytes = len(case.payloads), len(case.payloads) * case.size / 1e6
        dist = case.seconds["ocycle_dist"]
        unit, amount = ("chunks/s", n) if case.size < MIB else ("MB/s", mbytes)
        for ref_name in ("raw LPUSH", "apply_async"):
            ratios = [rs / ds for rs, ds in zip(case.seconds[ref_name], dist, strict=True)]  # rate = 1 / time
            goal, target = goals.get((case.size, ref_name), ("", 0.0))
            ref_rate, dist_rate = amount / statistics.median(case.seconds[ref_name]), amount / statistics.median(dist)
            rows.append([f"{case.label} x {n}", ref_name, f"{fmt(n / statistics.median(case.seconds[ref_name]))}",
                         fmt(mbytes / statistics.median(case.seconds[ref_name])),
                         fmt(n / statistics.median(dist)), fmt(mbytes / statistics.median(dist)), ratio_cell(ratios),
                         f">= {target:g}x ({unit})" if goal else ""])  # fmt: skip
            if goal:
                verdicts.at_least(goal, f"{case.label} {unit} vs {ref_name} >= {target:g}x",
                                  f"{fmt(ref_rate)} {unit}", f"{fmt(dist_rate)} {unit}",
                                  statistics.median(ratios), target)  # fmt: skip
    table("1-2. Publish throughput (random bytes, queue not consumed; MB = 10^6 B of payload; ratio > 1 is faster)",
          ["chunks", "reference", "ref chunks/s", "ref MB/s", "ocycle chunks/s", "ocycle MB/s",
           "ocycle / ref (min-max)", "goal"], rows)  # fmt: skip
    for case in cases:
        n = len(case.payloads)
        print(f"- {case.label}: ocycle_dist write() loop alone: {fmt(n / statistics.median(case.write_seconds))} "
              f"chunks/s (all {n} write() calls returned; publishing continues in the dispatcher thread)")  # fmt: skip

    rows = []
    for case in cases:
        for k in keys:
            got = case.wire.get(k, 0)
            rows.append([case.label, k, f"{got:,}", f"{got / case.size:.2f}x"])
        for part, what in (("claimed", "claimed value (SET)"), ("message", "task message (LPUSH)")):
            got = case.wire.get(f"ocycle_dist {part}")
            if got is not None:
                rows.append([case.label, f"ocycle_dist, of which {what}", f"{got:,}", f"{got / case.size:.2f}x"])
    table("1b. Bytes stored in Redis per chunk (list entry; for ocycle_dist claimed chunks + the SET value)",
          ["payload", "path", "bytes", "x payload"], rows)  # fmt: skip


# ---- section 3a: write() latency while publishing at full rate -----------------------------------------------


def latency_row(label: str, lat: list[float], extra: str = "") -> list[str]:
    over = sum(1 for x in lat if x >= 1e-3) / len(lat) if lat else 0.0
    return [label, f"{len(lat):,}", us(pct(lat, 50)), us(pct(lat, 99)), us(pct(lat, 99.9)), us(max(lat)),
            f"{over:.2%}", "1,000 µs", f"{pct(lat, 99) / 1e-3:.2f}x", extra]  # fmt: skip


LAT_HEADER = ["case", "writes", "p50", "p99", "p99.9", "max", ">= 1 ms", "goal p99", "p99 / goal", "note"]


def section_write_latency(topo: Topology, cfg: Config) -> None:
    rows = []
    for (frame, chunk), n in cfg.writes.items():
        frames = [os.urandom(frame) for _ in range(64)]
        chunks, warm = n * frame // chunk, chunk // frame * 20
        emitter = unconsumed_emitter(topo.url(PUB_DB), chunk, chunks + 21)
        write, lat = emitter.write, [0.0] * n
        try:
            for i in range(warm):  # warm-up (not timed): 20 chunks, connections, the first allocations
                write(frames[i % 64])
            wait_published(emitter, 20)
            t_all = perf()
            for i in range(n):
                data = frames[i % 64]
                t = perf()
                write(data)
                lat[i] = perf() - t
            writes_seconds = perf() - t_all
            wait_published(emitter, emitter.stats().emitted)
            total_seconds = perf() - t_all
        finally:
            close_unconsumed(emitter)
            redis.Redis.from_url(topo.url(PUB_DB)).flushdb()
            gc.collect()
        per = chunk // frame
        label = f"{size_label(frame)} frames -> {size_label(chunk)} chunks"
        note = (f"{fmt(n / writes_seconds)} writes/s; all published at {fmt(chunks * chunk / 1e6 / total_seconds)}"
                f" MB/s")  # fmt: skip
        rows.append(latency_row(label, lat, note))
        if per > 1:  # which writes are slow: those that complete a chunk, or all?
            completing = [x for i, x in enumerate(lat) if i % per == per - 1]
            others = [x for i, x in enumerate(lat) if i % per != per - 1]
            rows.append(latency_row("  of which the writes completing a chunk", completing))
            rows.append(latency_row("  of which the other writes", others))
        verdicts.at_most("3a", f"write() p99 < 1 ms, {label}, publishing at full rate", "1,000 µs",
                         us(pct(lat, 99)), pct(lat, 99) / 1e-3, 1.0)  # fmt: skip
    table("3a. write() latency while the publisher thread sends at full rate (each call timed; queue not consumed)",
          LAT_HEADER, rows)  # fmt: skip
    print(f"- sys.getswitchinterval() = {sys.getswitchinterval() * 1e3:g} ms: a thread waiting for the GIL "
          "waits up to that long while another runs Python code")  # fmt: skip


# ---- section 4: emit-to-on_done latency ------------------------------------------------------------------------


def section_latency(topo: Topology, ref: Any, cfg: Config, procs: list[Proc]) -> None:
    samples, load = cfg.samples, cfg.load
    payloads = [os.urandom(2 * KIB) for _ in range(max(samples, load))]
    col = Collector(1)
    emitter = ocycle_dist.BufferEmit(
        TASK, 2 * KIB, clip=True, mode="celery", broker=topo.url(OCYCLE_DB), on_done=col.on_done,
        on_error=col.on_error, max_inflight=load + 1, stream=f"bench-lat-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    seq = 0

    def one_ocycle(payload: bytes) -> float:
        nonlocal seq
        col.reset(1)
        t = perf()
        emitter.write(payload)
        if not col.event.wait(60):
            for p in procs:
                p.check()
            raise BenchError(f"ocycle_dist: no reply for chunk {seq} in 60 s (stats {emitter.stats()})")
        if col.errors:
            raise BenchError(f"ocycle_dist: {col.errors[0]}")
        if seq == 0:
            check_echo(col.results[seq], payload, "ocycle_dist")
        seq += 1
        return col.done[seq - 1] - t

    def one_ref(payload: bytes) -> float:
        t = perf()
        result = ref.echo.apply_async(args=[payload, time.time()]).get(timeout=60)
        elapsed = perf() - t
        check_echo(result, payload, "apply_async")
        return elapsed

    ref_name = "apply_async().get()"
    stats_one = stats_load = None
    try:
        for p in payloads[:5]:  # warm-up: connections, subscriptions, the pool child's imports
            one_ocycle(p)
            one_ref(p)
        lat: dict[str, list[float]] = {ref_name: [], "ocycle_dist": []}
        for i in range(samples):
            first, second = ("ocycle_dist", ref_name) if i % 2 else (ref_name, "ocycle_dist")
            for k in (first, second):
                lat[k].append((one_ocycle if k == "ocycle_dist" else one_ref)(payloads[i]))
        stats_one = emitter.stats()
        print("  latency, one at a time: done", file=sys.stderr, flush=True)

        under: dict[str, list[float]] = {}
        span: dict[str, float] = {}
        if load:
            # ocycle_dist: write all, as fast as possible; on_done times each reply.
            col.reset(load)
            base = seq
            sent = []
            t_first = perf()
            for p in payloads[:load]:
                sent.append(perf())
                emitter.write(p)
            if not col.event.wait(300):
                raise BenchError(f"ocycle_dist under load: {len(col.done)} of {load} replies in 300 s "
                                 f"(stats {emitter.stats()}, pending {emitter.executor.pending})")  # fmt: skip
            if col.errors:
                raise BenchError(f"ocycle_dist under load: {len(col.errors)} errors, first {col.errors[0]}")
            under["ocycle_dist"] = [col.done[base + i] - sent[i] for i in range(load)]
            span["ocycle_dist"] = max(col.done.values()) - t_first
            seq += load
            stats_load = emitter.stats()
            # stock Celery: send all, then .get() each in order.
            t_first = perf()
            sent, results = [], []
            for p in payloads[:load]:
                sent.append(perf())
                results.append(ref.echo.apply_async(args=[p, time.time()]))
            got = []
            for res in results:
                res.get(timeout=300)
                got.append(perf())
            under[ref_name] = [g - s for g, s in zip(got, sent, strict=True)]
            span[ref_name] = got[-1] - t_first
            print("  latency, under load: done", file=sys.stderr, flush=True)
    finally:
        emitter.close(wait=False)
    note = ""
    if emitter.stats().failed or emitter.stats().dropped:
        note = f" (emitter stats: {emitter.stats()})"

    rows = []
    for q in (50, 99):
        a, b = pct(lat[ref_name], q), pct(lat["ocycle_dist"], q)
        rows.append([f"one at a time, p{q} ({samples} samples)", ref_name, ms(a), ms(b), f"{b / a:.2f}x", "<= 1.1x"])
        verdicts.at_most("4", f"one at a time, emit-to-on_done p{q} vs {ref_name} <= 1.1x", ms(a), ms(b), b / a, 1.1)
    if load:
        for q in (50, 99):
            a, b = pct(under[ref_name], q), pct(under["ocycle_dist"], q)
            rows.append([f"under load ({load} at once), p{q}", f"{ref_name} each", ms(a), ms(b), f"{b / a:.2f}x",
                         "<= 0.5x"])  # fmt: skip
            verdicts.at_most("4", f"under load ({load} at once), p{q} vs {ref_name} each <= 0.5x ('far better')",
                             ms(a), ms(b), b / a, 0.5)  # fmt: skip
        a, b = load / span[ref_name], load / span["ocycle_dist"]
        rows.append(["under load: first send to last reply, chunks/s", ref_name, fmt(a), fmt(b), f"{b / a:.2f}x",
                     "(higher is better)"])  # fmt: skip
    title = "4. Emit-to-on_done latency, 2 KiB random chunks, echo, one idle worker each (prefork -c 1)"
    header = ["case", "reference", "reference", "ocycle_dist", "ocycle / ref (< 1 is faster)", "goal"]
    table(title + note, header, rows)
    for label, s in (("one at a time", stats_one), ("after the load", stats_load)):
        if s is not None:
            print(f"- emitter.stats() {label}: latency_p50 {ms(s.latency_p50)}, latency_p99 {ms(s.latency_p99)} "
                  "(emit to settle, the last 1000 chunks)")  # fmt: skip
    print(
        f"- prefetch: ocycle_dist workers Settings.worker_prefetch = {Settings().worker_prefetch} (celery's "
        f"worker_prefetch_multiplier); stock Celery workers: {ref.app.conf.worker_prefetch_multiplier} (default)"
    )


# ---- section 5: throughput with 1, 2, 4 workers, CPU-bound ------------------------------------------------------


def section_scaling(topo: Topology, ref: Any, cfg: Config, w: list[Proc], rw: list[Proc]) -> None:
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
            settings=Settings(broker_url=topo.url(OCYCLE_DB), queue=q),
        )  # fmt: skip
        emitter.open()
        emitter.executor._client.ping()
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
    redis_pgid = [topo.redis_proc.popen.pid] if topo.redis_proc else []
    for k, workers in enumerate((1, 2, 4)):
        q = f"q{workers}"
        order = [("ocycle_dist", run_ocycle, w), ("stock Celery", run_ref, rw)]
        for who, fn, procs in order if k % 2 == 0 else order[::-1]:
            pgids = [p.popen.pid for p in procs]
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
        verdicts.at_least("5", f"classify chunks/s with {workers} worker(s) vs stock Celery >= 1x",
                          f"{fmt(a)} chunks/s", f"{fmt(b)} chunks/s", b / a, 1.0)  # fmt: skip
    speedup = seconds["ocycle_dist", 1] / seconds["ocycle_dist", 2]
    verdicts.at_least("5", "classify chunks/s, 2 workers vs 1 worker >= 1.5x", "1 worker", "2 workers", speedup, 1.5)
    table(f"5. Throughput on a CPU-bound task: classify, 2 s chunks of 16 kHz float32 (32000 samples), {n} chunks, "
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


# ---- section 3b: write() latency while the broker is down -------------------------------------------------------


def section_outage_latency(topo: Topology, cfg: Config, workers: list[Proc], control: Any) -> None:
    rate, before, down, after = cfg.outage
    big_every = 6  # one 64 KiB frame every 6 ticks: ~10.7 MB/s at 1000 ticks/s, a 1 MiB chunk every 1.5 s
    n = int(rate * (before + down + after))
    settings = Settings(broker_url=topo.url(OCYCLE_DB), queue="q4", resend_after=5.0)
    small_frames = [os.urandom(2 * KIB) for _ in range(n)]
    big_frames = [os.urandom(64 * KIB) for _ in range(n // big_every + 1)]
    n_big_chunks = len(big_frames) * 64 * KIB // MIB
    cols = {"small": Collector(n), "big": Collector(n_big_chunks)}
    emitters = {
        "small": ocycle_dist.BufferEmit(TASK, 2 * KIB, clip=True, mode="celery", settings=settings,
                                        max_inflight=n + 1, on_done=cols["small"].on_done,
                                        on_error=cols["small"].on_error, stream=f"bench-out-s-{uuid.uuid4().hex[:6]}"),
        "big": ocycle_dist.BufferEmit(TASK, MIB, clip=True, mode="celery", settings=settings,
                                      max_inflight=n_big_chunks + 1, on_done=cols["big"].on_done,
                                      on_error=cols["big"].on_error, stream=f"bench-out-b-{uuid.uuid4().hex[:6]}"),
    }  # fmt: skip
    for e in emitters.values():
        e.open()
        e.executor._client.ping()
    lat_small: list[tuple[float, float]] = []  # (start, seconds)
    lat_big: list[tuple[float, float]] = []
    marks: dict[str, float] = {}

    def outage() -> None:
        time.sleep(before)
        marks["kill"] = perf()
        topo.stop_redis()
        marks["down"] = perf()
        time.sleep(down)
        marks["restart"] = perf()
        topo.restart_redis()
        marks["up"] = perf()

    killer = threading.Thread(target=outage, daemon=True)
    ws, wb = emitters["small"].write, emitters["big"].write
    try:
        start = perf()
        killer.start()
        for i in range(n):
            due = start + i / rate
            now = perf()
            if due > now:
                time.sleep(due - now)
            t = perf()
            ws(small_frames[i])
            lat_small.append((t, perf() - t))
            if i % big_every == 0:
                t = perf()
                wb(big_frames[i // big_every])
                lat_big.append((t, perf() - t))
        killer.join(60)
        if "up" not in marks:
            raise BenchError("redis-server did not restart")
        revived = topo.revive(workers, control)  # as the compose file's restart policy would
        t_written = perf()
        for key, col in cols.items():
            if not col.event.wait(120):
                e = emitters[key]
                raise BenchError(f"3b: after the outage, {len(col.done)} of {col.expect} results in 120 s "
                                 f"(stats {e.stats()}, executor {e.executor.counts})")  # fmt: skip
        t_all = max(max(c.done.values()) for c in cols.values())
    finally:
        counts = {k: dict(e.executor.counts) for k, e in emitters.items() if e.executor is not None}
        for e in emitters.values():
            e.close(wait=False)
    for key, frames, per in (("small", small_frames, 1), ("big", big_frames, 16)):
        col = cols[key]
        if col.errors:
            raise BenchError(f"3b {key}: {len(col.errors)} chunks failed, first {col.errors[0]}")
        if col.calls != col.expect:
            raise BenchError(f"3b {key}: on_done/on_error ran {col.calls} times for {col.expect} chunks")
        for seq, result in col.results.items():
            check_echo(result, b"".join(frames[seq * per : (seq + 1) * per]), f"3b {key} chunk {seq}")

    def phase(t: float) -> str:
        if t < marks["kill"]:
            return "before"
        if marks["down"] <= t < marks["restart"]:
            return "down"
        if t >= marks["up"]:
            return "after"
        return "killing/restarting"

    rows = []
    for label, lat in (("2 KiB frames -> 2 KiB chunks", lat_small), ("64 KiB frames -> 1 MiB chunks", lat_big)):
        by: dict[str, list[float]] = {}
        for t, x in lat:
            by.setdefault(phase(t), []).append(x)
        for ph in ("before", "down", "after"):
            if by.get(ph):
                rows.append(latency_row(f"{label}, broker {'down' if ph == 'down' else ph + ' the outage'}", by[ph]))
        if by.get("down"):
            verdicts.at_most("3b", f"write() p99 < 1 ms, {label}, broker down", "1,000 µs", us(pct(by["down"], 99)),
                             pct(by["down"], 99) / 1e-3, 1.0)  # fmt: skip
    table(f"3b. write() latency, paced ({fmt(rate)} writes/s of 2 KiB + {fmt(rate / big_every)}/s of 64 KiB), "
          f"redis-server killed for {marks['restart'] - marks['down']:.1f} s", LAT_HEADER, rows)  # fmt: skip
    print(
        f"- all {cols['small'].expect} + {cols['big'].expect} results arrived once, payloads intact; the last "
        f"{t_all - marks['up']:.1f} s after redis-server was back ({t_all - t_written:.1f} s after the last write)"
    )
    print(f"- executor counts: {counts}")
    if revived:
        print(f"- workers that exited when redis-server died, started again by the bench: {', '.join(revived)}")
    ok = not cols["small"].errors and not cols["big"].errors
    verdicts.add("3b", "every chunk's result arrives after the outage (once, payload intact)", "all",
                 f"{cols['small'].expect + cols['big'].expect} of {cols['small'].expect + cols['big'].expect}",
                 "1.00x", ok, f"last result {t_all - marks['up']:.1f} s after restart")  # fmt: skip


# ---- section 6: producer memory across an outage ----------------------------------------------------------------


def section_memory(topo: Topology, cfg: Config, log_dir: Path, workers: list[Proc], control: Any) -> None:
    seconds, speed, down = cfg.mem
    max_inflight = 64
    argv = [sys.executable, str(ROOT / "bench" / "_memchild.py"), "--url", topo.url(OCYCLE_DB), "--queue", "q2",
            "--seconds", str(seconds), "--speed", str(speed), "--max-inflight", str(max_inflight),
            "--resend-after", "5", "--timeout", "120"]  # fmt: skip
    err = open(log_dir / "memchild.log", "wb")  # noqa: SIM115  (closed in finally)
    child = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                             text=True, start_new_session=True)  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put("")

    def expect(kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"6: no '{kind}' from the producer in {timeout:.0f} s") from None
            word, _, rest = line.partition(" ")
            if word == kind:
                return dict(json.loads(rest))
            if word in ("error", ""):
                tail = (log_dir / "memchild.log").read_text(errors="replace")[-2000:]
                raise BenchError(f"6: the producer failed: {rest.strip()}\n{tail}")

    def tell(msg: str) -> None:
        assert child.stdin is not None
        child.stdin.write(msg + "\n")
        child.stdin.flush()

    threading.Thread(target=pump, daemon=True).start()
    try:
        ready = expect("ready", 60)
        tell("go")
        stream_seconds = seconds / speed
        time.sleep(stream_seconds * 0.4)
        topo.stop_redis()
        tell("phase outage")
        t_down = perf()
        time.sleep(down)
        topo.restart_redis()
        tell("phase restored")
        outage = perf() - t_down
        revived = topo.revive(workers, control)  # as the compose file's restart policy would
        expect("written", stream_seconds + 120)
        result = expect("result", 180)
        child.wait(30)
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, 9)
            child.wait(5)
        err.close()

    chunk_bytes = ready["chunk_bytes"]
    inflight_bytes = max_inflight * sum(chunk_bytes)
    baseline = ready["rss"]
    bound = baseline + 3 * inflight_bytes
    peaks = result["peaks"]
    rows = []
    for ph, label in (("start", "start (set up, connected, before the first write)"),
                      ("before", "streaming, before the outage"), ("outage", f"redis-server down ({outage:.1f} s)"),
                      ("restored", "streaming, after the restart"), ("drain", "last write to last result"),
                      ("end", "after close()")):  # fmt: skip
        p = peaks.get(ph)
        if p:
            rows.append([label, mb(p["rss"]), mb(p["rss"] - baseline), mb(p["spooled"]), f"{int(p['in_flight'])}",
                         mb(bound)])  # fmt: skip
    rows.append(["VmHWM at the end (the process's peak RSS)", mb(result["hwm_end"]), mb(result["hwm_end"] - baseline),
                 "", "", mb(bound)])  # fmt: skip
    table(f"6. Producer memory: {seconds:g} s of 16 kHz float32 audio through spl/classify/archive_flac at "
          f"{speed:g}x real time, 2 workers, redis-server killed for {outage:.1f} s mid-stream and restarted empty",
          ["phase", "peak VmRSS", "over baseline", "peak spooled_bytes", "peak chunks in flight", "expected bound"],
          rows)  # fmt: skip
    stats = result["stats"]
    emitted = {k: int(v["emitted"]) for k, v in stats.items()}
    done = {k: int(v["done"]) for k, v in stats.items()}
    print(
        f"- expected bound: baseline {mb(baseline)} + 3 x max_inflight {max_inflight} x (chunk bytes "
        f"{' + '.join(f'{b:,}' for b in chunk_bytes)}) = {mb(baseline)} + 3 x {mb(inflight_bytes)}; the audio "
        f"streamed is {mb(seconds * RATE * 4)} (x 3 consumers if every chunk were kept); the peak is "
        f"{(result['hwm_end'] - baseline) / inflight_bytes:.2f} x the in-flight data over the baseline"
    )
    print(
        f"- RSS a quarter through the stream {mb(result['rss_quarter'])}, after the last write "
        f"{mb(result['rss_written'])}, after close() {mb(result['rss_end'])}"
    )
    print(
        f"- wrote {result['audio_seconds']:.0f} s of audio in {result['write_seconds']:.1f} s; the longest write() "
        f"blocked {result['longest_write']:.2f} s (policy 'block' at max_inflight), {result['blocked_seconds']:.1f} s "
        f"in all; last result {result['drain_seconds']:.1f} s after the last write"
    )
    print(
        f"- chunks emitted {emitted}, done {done}, errors {result['n_errors']} {result['errors']}; executor counts "
        f"{result['counts']}"
    )
    if revived:
        print(f"- workers that exited when redis-server died, started again by the bench: {', '.join(revived)}")
    complete = result["complete"] and emitted == done and not result["n_errors"]
    verdicts.at_most("6", "producer peak RSS (VmHWM) <= baseline + 3 x max_inflight x chunk bytes", mb(bound),
                     mb(result["hwm_end"]), result["hwm_end"] / bound, 1.0)  # fmt: skip
    verdicts.add("6", "every chunk's result arrives across the outage", f"{sum(emitted.values())} chunks",
                 f"{sum(done.values())} done", f"{sum(done.values()) / max(1, sum(emitted.values())):.2f}x", complete,
                 f"{result['n_errors']} errors")  # fmt: skip


# ---- main -----------------------------------------------------------------------------------------------------

LOG_EVENTS = {  # what the workers' logs say, by kind: sections 3b and 6 kill redis-server on purpose
    "exited: Unrecoverable error (kombu/celery, on the lost connection)": "Unrecoverable error",
    "connection to broker lost": "Connection to broker lost",
    "running task terminated (late ack impossible after the loss)": "cannot be acknowledged after a connection loss",
    "could not ack (connection lost)": "Couldn't ack",
    "claimed chunk no longer in Redis (a duplicate run after the first reply)": "is no longer in Redis",
}


def worker_log_summary(procs: list[Proc]) -> None:
    """Counts of the notable lines of the workers' logs; anything else that looks like an error is quoted."""
    counts: dict[str, int] = {}
    other: list[str] = []
    for p in procs:
        text = p.log.read_text(errors="replace") if p.log.exists() else ""
        for line in text.splitlines():
            kind = next((k for k, needle in LOG_EVENTS.items() if needle in line), None)
            if kind is not None:
                counts[kind] = counts.get(kind, 0) + 1
            elif (" ERROR/" in line or "CRITICAL/" in line) and "consumer: Cannot connect" not in line:
                other.append(f"{p.name}: {line[:200]}")
    if counts:
        print("- workers' logs: " + "; ".join(f"{k}: {v}" for k, v in counts.items()))
    for line in other[:5]:
        print(f"- WARNING, in a worker's log: {line}")
    if len(other) > 5:
        print(f"- ... and {len(other) - 5} more error lines")


def environment(r: redis.Redis) -> str:
    server = r.info("server").get("redis_version", "?")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"python {platform.python_version()} | celery {version('celery')} | kombu {version('kombu')} | "
            f"redis-py {version('redis')} | redis-server {server} | msgpack {version('msgpack')} | numpy "
            f"{np.__version__} | ocycle_dist {ocycle_dist.__version__} (C hot path: "
            f"{type(ocycle_dist.BufferEmit(len, 1).windows.hot).__module__}) | {os.cpu_count()} cpus "
            f"| load average {load} "
            f"| {platform.platform()}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved publish rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, small counts")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--logs", help="keep the processes' logs in this directory (default: a temporary one)")
    args = parser.parse_args()
    cfg = config(args.quick, args.rounds)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}: choose from {SECTIONS}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = perf()
    status = 0
    timings: list[str] = []
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
    workdir = contextlib.nullcontext(args.logs) if args.logs else tempfile.TemporaryDirectory(prefix="bench-celery-")
    with workdir as tmp, interrupts_as_exceptions():
        topo = Topology(Path(tmp))
        procs: list[Proc] = []
        try:
            r = topo.start_redis()
            print(environment(r))
            print("command:", " ".join([Path(sys.executable).name, *sys.argv]), f"({cfg})")
            os.environ["BENCH_REF_URL"] = topo.url(REF_DB)
            ref = importlib.import_module("bench.refapp")
            from ocycle_dist.remote.worker import make_app

            ocycle_control = make_app(Settings(broker_url=topo.url(OCYCLE_DB)), name="bench-control")
            archive = Path(tmp) / "archive"
            ocycle_env = {"OCYCLE_BROKER_URL": topo.url(OCYCLE_DB), "OCYCLE_ARCHIVE_DIR": str(archive)}
            w = [topo.start_worker(f"w{i}", "workers", ocycle_env, queues=q) for i, q in enumerate(WORKER_QUEUES)]
            rw = [topo.start_worker(f"r{i}", "bench.refapp", {"BENCH_REF_URL": topo.url(REF_DB)}, queues=q)
                  for i, q in enumerate(WORKER_QUEUES)]  # fmt: skip
            procs = w + rw
            ready = wait_ready(w, ocycle_control) + wait_ready(rw, ref.app)
            time.sleep(2.0)  # let the pool children finish starting before anything is timed
            print(f"8 workers ready after {ready:.1f} s (setup {perf() - start:.1f} s)")
            for section in SECTIONS:
                if section not in chosen:
                    continue
                t = perf()
                print(f"  section {section} ...", file=sys.stderr, flush=True)
                if section == "1":
                    section_publish(topo, ref, cfg)
                elif section == "3a":
                    section_write_latency(topo, cfg)
                elif section == "4":
                    section_latency(topo, ref, cfg, w[:1] + rw[:1])
                elif section == "5":
                    section_scaling(topo, ref, cfg, w, rw)
                elif section == "3b":
                    topo.stop(rw)  # stock Celery is done: its workers would only reconnect
                    section_outage_latency(topo, cfg, w, ocycle_control)
                elif section == "6":
                    topo.stop(rw)
                    section_memory(topo, cfg, Path(tmp), w, ocycle_control)
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                print(f"  section {section}: {perf() - t:.1f} s", file=sys.stderr, flush=True)
                timings.append(f"{section} {perf() - t:.0f} s (load average after: {load})")
                for p in topo.procs:
                    p.check()
            verdicts.print()
            print(f"\nsections: {'; '.join(timings)}")
            worker_log_summary(procs)
        # Handled here, not only in ``finally``: leaving the except block frees the traceback's frames, and with
        # them Celery's AsyncResults, whose __del__ unsubscribes while Redis is still up (else ~20 s of retries).
        except BenchError as exc:
            print(f"\nFAILED: {exc}", file=sys.stderr)
            status = 1
        except KeyboardInterrupt as exc:
            print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}); stopping the workers and redis-server", file=sys.stderr)
            status = 130
        except Exception:
            traceback.print_exc()
            status = 1
        finally:
            for note in scan_logs(procs) if status else []:
                print(f"- {note}", file=sys.stderr)
            topo.stop()
    print(f"\ntotal runtime {perf() - start:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
