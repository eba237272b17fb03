"""Section "publish": publish throughput of random-bytes chunks (2 KiB and 1 MiB) to a queue no worker consumes.

References: a raw redis-py ``LPUSH`` loop (one command per chunk, one connection), and stock
``task.apply_async(args=[payload, t0])`` (JSON, bytes go base64; each call also SUBSCRIBEs to its result
channel). ocycle_dist: ``BufferEmit(..., mode='celery')``, from the first ``write()`` until the executor has
published every chunk (``executor.counts['published'] == N``). Interleaved rounds (who goes first rotates),
medians; ratios are medians of the per-round ratios (min-max in brackets). Goals: 2 KiB chunks/s >= 1x raw
LPUSH and >= 5x apply_async; 1 MiB MB/s >= 0.7x raw LPUSH and >= 5x apply_async.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from bench._report import Verdicts, fmt, ratio_cell, table
from ocycle_dist.remote.protocol import BATCH_HEADER, CHUNK_PREFIX

from .common import (
    KIB,
    MIB,
    PUB_DB,
    PUB_QUEUE,
    REF_DB,
    Config,
    close_unconsumed,
    perf,
    size_label,
    unconsumed_emitter,
    wait_published,
)
from .rig import Rig


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
        chunks = len(json.loads(message)["headers"].get(BATCH_HEADER) or [0]) if message else 1  # a batch message
        claims = [r.strlen(k) for k in r.scan_iter(CHUNK_PREFIX + "*", count=1000)]
        case.wire["ocycle_dist"] = len(message) // chunks + (claims[0] if claims else 0)
        if claims:
            case.wire["ocycle_dist claimed"] = claims[0]
            case.wire["ocycle_dist message"] = len(message) // chunks
    return elapsed


def run(rig: Rig, cfg: Config, verdicts: Verdicts) -> None:
    ref = rig.ref
    r = redis.Redis.from_url(rig.url(PUB_DB))
    r_ref = redis.Redis.from_url(rig.url(REF_DB))
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
        "ocycle_dist": lambda c: pub_ocycle(rig.url(PUB_DB), r, c),
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
    report(cases, keys, verdicts)


def report(cases: list[Publish], keys: list[str], verdicts: Verdicts) -> None:
    goals = {(2 * KIB, "raw LPUSH"): ("publish", 1.0), (2 * KIB, "apply_async"): ("publish", 5.0),
             (MIB, "raw LPUSH"): ("publish", 0.8), (MIB, "apply_async"): ("publish", 5.0)}  # fmt: skip
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
    table("Publish throughput (random bytes, queue not consumed; MB = 10^6 B of payload; ratio > 1 is faster)",
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
    table("Bytes stored in Redis per chunk (list entry, a batch message divided by its chunks; for ocycle_dist "
          "claimed chunks + the SET value)",
          ["payload", "path", "bytes", "x payload"], rows)  # fmt: skip
