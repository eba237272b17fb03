"""The producer of section 6 of ``bench/bench_celery.py``, run in its own process so that its RSS is its own.

Streams ``--seconds`` of synthetic 16 kHz float32 audio (frames of 1024) through the three demo consumers
(``ocycle_dist.app.consumers.CONSUMERS``) at ``--speed`` times real time. A thread samples ``/proc/self/status`` every
10 ms and keeps, per phase, the peak ``VmRSS`` and the peak of the emitters' ``spooled_bytes``. The parent
names the phases on stdin (``phase outage``, ``phase restored``) while it stops and restarts redis-server.

Protocol on stdout: ``ready {json}`` once set up (the parent answers ``go``), ``written {json}`` when the last
frame is written, ``result {json}`` at the end (``error {json}`` on failure).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ocycle_dist
from ocycle_dist.app.consumers import CONSUMERS
from ocycle_dist.app.sources import synthetic
from ocycle_dist.remote.settings import Settings

RATE = 16000


def status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def say(kind: str, data: dict[str, Any]) -> None:
    print(f"{kind} {json.dumps(data)}", flush=True)


class Sampler:
    """Peak RSS and spooled bytes per phase, sampled from a thread."""

    def __init__(self, emitters: list[Any]) -> None:
        self.emitters = emitters
        self.phase = "setup"
        self.peaks: dict[str, dict[str, float]] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self) -> None:
        rss = status()["VmRSS"]
        spooled = sum(e.stats().spooled_bytes for e in self.emitters)
        in_flight = sum(e.stats().in_flight for e in self.emitters)
        with self.lock:
            p = self.peaks.setdefault(self.phase, {"rss": 0, "spooled": 0, "in_flight": 0, "samples": 0, "last_rss": 0})
            p["rss"] = max(p["rss"], rss)
            p["spooled"] = max(p["spooled"], spooled)
            p["in_flight"] = max(p["in_flight"], in_flight)
            p["samples"] += 1
            p["last_rss"] = rss

    def run(self) -> None:
        while not self.stop.wait(0.01):
            self.sample()

    def set_phase(self, phase: str) -> None:
        self.sample()  # the end of the previous phase
        with self.lock:
            self.phase = phase
        self.sample()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", default="celery")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--speed", type=float, default=40.0)
    parser.add_argument("--max-inflight", type=int, default=64)
    parser.add_argument("--resend-after", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    settings = Settings(broker_url=args.url, queue=args.queue, resend_after=args.resend_after)
    errors: list[str] = []
    lock = threading.Lock()

    def on_error(exc: BaseException, meta: ocycle_dist.Chunk) -> None:
        with lock:
            errors.append(f"{meta.stream}#{meta.seq}: {exc!r}")

    emitters = [
        ocycle_dist.NumpyEmit(
            task,
            int(secs * RATE),
            clip=True,
            rate=RATE,
            mode="celery",
            stream=f"bench-mem-{name}",
            settings=settings,
            on_error=on_error,
            max_inflight=args.max_inflight,
            policy="block",  # this section bounds memory by max_inflight, as it did before the byte budget
        )
        for name, task, secs, _queue in CONSUMERS
    ]
    sampler = Sampler(emitters)
    tap = ocycle_dist.Tap(*emitters).open()
    for e in emitters:
        e.executor.hub.publisher.client.ping()  # connected before the baseline
    n_frames = -(-int(args.seconds * RATE) // 1024)
    frames = synthetic(args.seconds, RATE)  # generated as they are written, as a microphone would
    sampler.thread.start()
    time.sleep(0.3)
    sampler.set_phase("start")
    time.sleep(0.2)
    say(
        "ready",
        {"rss": status()["VmRSS"], "frames": n_frames, "chunk_bytes": [int(s * RATE) * 4 for _, _, s, _ in CONSUMERS]},
    )

    def read_stdin() -> None:
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["phase"] and len(words) == 2:
                sampler.set_phase(words[1])

    if sys.stdin.readline().strip() != "go":
        return 2
    threading.Thread(target=read_stdin, daemon=True).start()
    sampler.set_phase("before")
    start = time.perf_counter()
    t_start = time.time()
    longest, blocked, written = 0.0, 0.0, 0
    rss_quarter = 0
    for i, frame in enumerate(frames):
        due = start + written / RATE / args.speed
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        t = time.perf_counter()
        tap.write(frame, t0=t_start + written / RATE)
        took = time.perf_counter() - t
        longest = max(longest, took)
        if took > 0.01:
            blocked += took
        written += len(frame)
        if i == n_frames // 4:
            rss_quarter = status()["VmRSS"]
    write_seconds = time.perf_counter() - start
    rss_written = status()["VmRSS"]
    say("written", {"seconds": write_seconds})
    sampler.set_phase("drain")
    deadline = time.monotonic() + args.timeout
    complete = all(e.wait(max(0.0, deadline - time.monotonic())) for e in emitters)
    drain_seconds = time.perf_counter() - start - write_seconds
    executors = [e.executor for e in emitters]
    counts = {k: sum(x.counts[k] for x in executors) for k in executors[0].counts}
    tap.close(wait=complete)
    sampler.set_phase("end")
    time.sleep(0.3)
    sampler.stop.set()
    sampler.thread.join()
    final = status()
    stats = {e.stream: e.stats().as_dict() for e in emitters}
    say("result", {
        "complete": complete, "errors": errors[:5], "n_errors": len(errors), "stats": stats, "counts": counts,
        "peaks": sampler.peaks, "rss_end": final["VmRSS"], "hwm_end": final["VmHWM"], "rss_quarter": rss_quarter,
        "rss_written": rss_written, "write_seconds": write_seconds, "drain_seconds": drain_seconds,
        "longest_write": longest, "blocked_seconds": blocked, "audio_seconds": written / RATE,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:
        say("error", {"error": repr(exc)})
        raise
