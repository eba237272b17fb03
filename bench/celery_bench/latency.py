"""Section "latency": emit-to-``on_done`` latency with idle workers (``echo``, 2 KiB random chunks).

One chunk at a time against stock Celery's ``apply_async(...).get()`` (samples alternate; goal: ratio <= 1.1
at p50 and p99), and N chunks written at once against N ``apply_async`` then ``.get()`` of each in order (goal
"far better under load", read here as ratio <= 0.5 at p50 and p99). One worker process each (queue
``celery``: ``w0`` and ``r0``), prefetch 4 on both sides.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import ocycle_dist
from bench._report import Verdicts, fmt, ms, pct, table
from ocycle_dist.remote.settings import Settings

from .common import KIB, OCYCLE_DB, TASK, BenchError, Collector, Config, check_echo, perf
from .rig import Rig


def run(rig: Rig, cfg: Config, verdicts: Verdicts) -> None:
    ref, workers = rig.ref, rig.w[:1] + rig.rw[:1]
    samples, load = cfg.samples, cfg.load
    payloads = [os.urandom(2 * KIB) for _ in range(max(samples, load))]
    col = Collector(1)
    emitter = ocycle_dist.BufferEmit(
        TASK, 2 * KIB, clip=True, mode="celery", broker=rig.url(OCYCLE_DB), on_done=col.on_done,
        on_error=col.on_error, max_inflight=load + 1, stream=f"bench-lat-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    seq = 0

    def one_ocycle(payload: bytes) -> float:
        nonlocal seq
        col.reset(1)
        t = perf()
        emitter.write(payload)
        if not col.event.wait(60):
            rig.check(workers)
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
        what = f"one at a time, emit-to-on_done p{q} vs {ref_name} <= 1.1x"
        verdicts.at_most("latency", what, ms(a), ms(b), b / a, 1.1)
    if load:
        for q in (50, 99):
            a, b = pct(under[ref_name], q), pct(under["ocycle_dist"], q)
            rows.append([f"under load ({load} at once), p{q}", f"{ref_name} each", ms(a), ms(b), f"{b / a:.2f}x",
                         "<= 0.5x"])  # fmt: skip
            verdicts.at_most("latency", f"under load ({load} at once), p{q} vs {ref_name} each <= 0.5x ('far better')",
                             ms(a), ms(b), b / a, 0.5)  # fmt: skip
        a, b = load / span[ref_name], load / span["ocycle_dist"]
        rows.append(["under load: first send to last reply, chunks/s", ref_name, fmt(a), fmt(b), f"{b / a:.2f}x",
                     "(higher is better)"])  # fmt: skip
    title = "Emit-to-on_done latency, 2 KiB random chunks, echo, one idle worker each (prefork -c 1)"
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
