"""Section "outage": the "write" goal while the broker is down: ``write()`` latency across a redis-server crash.

Paced writes (2 KiB frames into 2 KiB chunks, and 64 KiB frames into 1 MiB chunks), redis-server killed after a
moment and restarted empty a few seconds later; every write timed; ``echo`` tasks on 4 workers (queue ``q4``),
``Settings(resend_after=5)`` so chunks lost with the old Redis are sent again, and a spool budget that holds
every chunk (~53 MiB of 1 MiB chunks: the default 32 MiB would drop the oldest, by design; this section is
about latency and recovery, not the budget). Reference: the goal itself.
Goals: p99 < 1000 µs while the broker is down, and every chunk's result arrives once, with its payload.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import ocycle_dist
from bench._report import Verdicts, fmt, pct, table, us
from ocycle_dist.remote.settings import Settings

from .common import KIB, LAT_HEADER, MIB, OCYCLE_DB, TASK, BenchError, Collector, Config, check_echo, latency_row, perf
from .rig import Rig


def run(rig: Rig, cfg: Config, verdicts: Verdicts) -> None:
    rate, before, down, after = cfg.outage
    big_every = 6  # one 64 KiB frame every 6 ticks: ~10.7 MB/s at 1000 ticks/s, a 1 MiB chunk every 1.5 s
    n = int(rate * (before + down + after))
    small_frames = [os.urandom(2 * KIB) for _ in range(n)]
    big_frames = [os.urandom(64 * KIB) for _ in range(n // big_every + 1)]
    n_big_chunks = len(big_frames) * 64 * KIB // MIB
    budget = (n_big_chunks + 2) * (MIB + 4096)
    settings = Settings(broker_url=rig.url(OCYCLE_DB), queue="q4", resend_after=5.0, spool_max_bytes=budget)
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
        e.executor.hub.publisher.client.ping()
    lat_small: list[tuple[float, float]] = []  # (start, seconds)
    lat_big: list[tuple[float, float]] = []
    marks: dict[str, float] = {}

    def outage() -> None:
        time.sleep(before)
        marks["kill"] = perf()
        rig.redis.kill()
        marks["down"] = perf()
        time.sleep(down)
        marks["restart"] = perf()
        rig.redis.restart_empty()
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
        revived = rig.revive(rig.w)  # as the compose file's restart policy would
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
            verdicts.at_most("outage", f"write() p99 < 1 ms, {label}, broker down", "1,000 µs", us(pct(by["down"], 99)),
                             pct(by["down"], 99) / 1e-3, 1.0)  # fmt: skip
    table(f"write() latency, paced ({fmt(rate)} writes/s of 2 KiB + {fmt(rate / big_every)}/s of 64 KiB), "
          f"redis-server killed for {marks['restart'] - marks['down']:.1f} s", LAT_HEADER, rows)  # fmt: skip
    print(
        f"- all {cols['small'].expect} + {cols['big'].expect} results arrived once, payloads intact; the last "
        f"{t_all - marks['up']:.1f} s after redis-server was back ({t_all - t_written:.1f} s after the last write)"
    )
    print(f"- executor counts: {counts}")
    if revived:
        print(f"- workers that exited when redis-server died, started again by the bench: {', '.join(revived)}")
    ok = not cols["small"].errors and not cols["big"].errors
    verdicts.add("outage", "every chunk's result arrives after the outage (once, payload intact)", "all",
                 f"{cols['small'].expect + cols['big'].expect} of {cols['small'].expect + cols['big'].expect}",
                 "1.00x", ok, f"last result {t_all - marks['up']:.1f} s after restart")  # fmt: skip
