"""Section "write": ``write()`` latency while the publisher thread sends at full rate.

Every ``emitter.write(frame)`` timed with ``perf_counter``: 2 KiB frames into 2 KiB chunks and 64 KiB frames
into 1 MiB chunks, written as fast as possible to a queue no worker consumes while the executor's publisher
thread sends them. Reference: the goal itself, not another contender. Goal: p99 < 1000 µs.
"""

from __future__ import annotations

import gc
import os
import sys

import redis

from bench._report import Verdicts, fmt, pct, table, us

from .common import (
    LAT_HEADER,
    PUB_DB,
    Config,
    close_unconsumed,
    latency_row,
    perf,
    size_label,
    unconsumed_emitter,
    wait_published,
)
from .rig import Rig


def run(rig: Rig, cfg: Config, verdicts: Verdicts) -> None:
    rows = []
    for (frame, chunk), n in cfg.writes.items():
        frames = [os.urandom(frame) for _ in range(64)]
        chunks, warm = n * frame // chunk, chunk // frame * 20
        emitter = unconsumed_emitter(rig.url(PUB_DB), chunk, chunks + 21)
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
            redis.Redis.from_url(rig.url(PUB_DB)).flushdb()
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
        verdicts.at_most("write", f"write() p99 < 1 ms, {label}, publishing at full rate", "1,000 µs",
                         us(pct(lat, 99)), pct(lat, 99) / 1e-3, 1.0)  # fmt: skip
    table("write() latency while the publisher thread sends at full rate (each call timed; queue not consumed)",
          LAT_HEADER, rows)  # fmt: skip
    print(f"- sys.getswitchinterval() = {sys.getswitchinterval() * 1e3:g} ms: a thread waiting for the GIL "
          "waits up to that long while another runs Python code")  # fmt: skip
