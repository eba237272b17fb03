"""The producer of ``bench/bench_live.py``, run in its own process so that its RSS is its own.

Streams ``--seconds`` of the demo's synthetic 16 kHz float32 microphone (frames of 1024 samples) at ``--speed``
times real time through the canonical three consumers (``ocycle_dist.app.consumers.CONSUMERS``), with one contender of
:mod:`.contenders`: ``ocycle`` (a ``Tap``, default settings) or ``celery`` (stock ``apply_async``).

It times every write (the ``Tap.write``, or the stock chunking plus its ``apply_async`` calls) and every
``apply_async`` call, records when each chunk was emitted and when its outcome came, and a thread samples
``/proc/self/status`` and the spooled bytes every 20 ms. The parent names the phases on stdin
(``phase absent``, ``phase back``) while it stops and starts the workers.

Protocol on stdout: ``ready {json}`` once set up (the parent answers ``go``), ``written {json}`` after the last
frame, ``result {json}`` at the end (``error {json}`` on failure). Times are ``time.time()`` seconds.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._memchild import say, status  # the producer child's two helpers: its RSS, one JSON line a report
from bench.live_bench.contenders import Ocycle, Record, Stock
from ocycle_dist.app.sources import synthetic

RATE, FRAME = 16000, 1024
perf = time.perf_counter


def watch_gc() -> list[tuple[float, int, float]]:
    """Every cyclic garbage collection of this process: (time, generation, seconds it took)."""
    pauses: list[tuple[float, int, float]] = []
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = perf()
        else:
            pauses.append((time.time(), info["generation"], perf() - started[0]))

    gc.callbacks.append(callback)
    return pauses


class Sampler:
    """RSS and the bytes kept for results, every 20 ms, on a thread: a series of (time, rss, [spooled by consumer])."""

    def __init__(self, spooled: Any) -> None:
        self.spooled = spooled  # () -> bytes kept, a list by consumer
        self.series: list[tuple[float, int, list[int]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self) -> None:
        self.series.append((time.time(), status()["VmRSS"], self.spooled()))

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.sample()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contender", choices=("ocycle", "celery"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=1200.0)
    parser.add_argument("--speed", type=float, default=20.0)
    parser.add_argument("--model-task", default="bench.live.classify")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    rec = Record()
    side: Ocycle | Stock = (
        Ocycle(args.url, args.model_task, rec) if args.contender == "ocycle" else Stock(args.url, rec)
    )
    sampler = Sampler(side.spooled)
    marks: dict[str, float] = {}
    n_frames = -(-int(args.seconds * RATE) // FRAME)
    frames = synthetic(args.seconds, RATE, FRAME)  # generated as they are written, as a microphone would
    sampler.thread.start()
    gc_pauses = watch_gc()
    time.sleep(0.5)
    say("ready", {"rss": status()["VmRSS"], "frames": n_frames})

    def read_stdin() -> None:
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["phase"] and len(words) == 2:
                marks[words[1]] = time.time()

    if sys.stdin.readline().strip() != "go":
        return 2
    threading.Thread(target=read_stdin, daemon=True).start()
    write_at, write_took = array("d"), array("d")
    start, t_start = perf(), time.time()
    marks["start"] = t_start
    written = 0
    for frame in frames:
        due = start + written / RATE / args.speed
        now = perf()
        if due > now:
            time.sleep(due - now)
        at = time.time()
        t = perf()
        side.write(frame, t_start + written / RATE, at)
        took = perf() - t
        write_at.append(at)
        write_took.append(took)
        side.after_write(at)
        written += len(frame)
    marks["written"] = time.time()
    say("written", {"seconds": perf() - start})
    rss_written = status()["VmRSS"]
    end = side.finish(args.timeout)
    marks["closed"] = time.time()
    time.sleep(0.2)
    sampler.stop.set()
    sampler.thread.join()
    final = status()
    say("result", {
        **end, "marks": marks, "writes": [list(write_at), list(write_took)],
        "calls": [list(side.calls[0]), list(side.calls[1])], "emitted": {k: list(v) for k, v in rec.emitted.items()},
        "outcomes": {k: sorted((seq, *v) for seq, v in o.items()) for k, o in rec.outcomes.items()},
        "errors": rec.errors[:5], "n_errors": len(rec.errors), "series": sampler.series, "rss_end": final["VmRSS"],
        "hwm_end": final["VmHWM"], "rss_written": rss_written, "audio_seconds": written / RATE,
        "gc": gc_pauses,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:
        say("error", {"error": repr(exc)})
        raise
