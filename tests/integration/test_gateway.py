"""A gateway: one process producing for 100 devices (100 Taps, each with the canonical three consumers: 300
emitters) at 4x real time against one worker with two pool processes, default settings.

Every emitter of the process shares one publisher, one listener and a small callback pool, so the process runs a
few threads whatever the number of emitters, ``Tap.write`` never waits on the network, and every chunk is done.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ocycle_dist as ocycle
from ocycle_dist.testing import RedisServer, Worker
from tests.support.helpers import wait_for

pytestmark = pytest.mark.usefixtures("redis_server_required")

RATE, FRAME, DEVICES, SPEED = 16000, 1024, 100, 4.0
CONSUMERS = (("spl", 0.5), ("model", 2.0), ("archive", 10.0))  # every one runs workers.tasks.spl: cheap, real


def os_threads() -> int:
    """Threads of this process, as the kernel counts them (Python's and any other)."""
    text = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("Threads:")))


def test_a_gateway_of_100_devices_runs_on_few_threads_and_write_never_waits() -> None:
    seconds = 20.0  # of audio per device: 5 s of wall time at 4x
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        worker = Worker(redis.url, name="gateway", concurrency=2, loglevel="WARNING")
        stack.callback(worker.stop)
        worker.start()
        threads_before = os_threads()
        done: Counter[str] = Counter()
        errors: list[str] = []
        lock = threading.Lock()

        def on_done(result: Any, meta: ocycle.Chunk) -> None:
            with lock:
                done[meta.stream] += 1

        def on_error(exc: BaseException) -> None:
            errors.append(repr(exc))

        run = uuid.uuid4().hex[:6]
        taps = [
            ocycle.Tap(*(ocycle.NumpyEmit("workers.tasks.spl", int(length * RATE), clip=True, rate=RATE,
                                          mode="celery", broker=redis.url, stream=f"gw{run}-{d}-{name}",
                                          on_done=on_done, on_error=on_error)
                         for name, length in CONSUMERS))
            for d in range(DEVICES)
        ]  # fmt: skip
        gc.freeze()  # what a gateway does once set up (as `ocycle-dist stream` does): the collector's full passes
        # then look at what changes, not at every object of the process (this one's includes pytest's)
        frame = (np.sin(np.arange(FRAME) / 8.0) * 0.1).astype(np.float32)
        frames = int(seconds * RATE / FRAME)
        step = FRAME / RATE / SPEED
        took: list[float] = []
        peak = [0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.05):
                peak[0] = max(peak[0], os_threads())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        start = time.perf_counter()
        t0 = time.time()
        for i in range(frames):
            wait = start + i * step - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            for tap in taps:
                t = time.perf_counter()
                tap.write(frame, t0=t0 + i * FRAME / RATE)
                took.append(time.perf_counter() - t)
        behind = time.perf_counter() - (start + frames * step)
        closing = time.perf_counter()
        pending = sum(tap.close(timeout=30) for tap in taps)
        close_s = time.perf_counter() - closing
        gc.unfreeze()
        stop.set()
        watcher.join()
        expected = {f"gw{run}-{d}-{name}": frames * FRAME // int(length * RATE) for d in range(DEVICES)
                    for name, length in CONSUMERS}  # fmt: skip
        wait_for(lambda: sum(done.values()) >= sum(expected.values()), 10,
                 lambda: f"every chunk's on_done: {sum(done.values())} of {sum(expected.values())}, {pending} pending,"
                 f" errors {errors[:3]}")  # fmt: skip
        took_ms = np.array(took) * 1e3
        p99, worst = float(np.percentile(took_ms, 99)), float(took_ms.max())
        print(
            f"\n[gateway] {DEVICES} taps x {len(CONSUMERS)} consumers at {SPEED:g}x: {len(took)} writes, Tap.write p50"
            f" {np.percentile(took_ms, 50):.3f} ms p99 {p99:.3f} ms max {worst:.1f} ms; threads {threads_before}"
            f" before, {peak[0]} at most while streaming (the watcher included); close() of all {close_s:.2f} s;"
            f" {sum(done.values())} chunks done; the writer ended {behind:.2f} s behind its pace"
        )
        assert errors == [] and pending == 0
        assert dict(done) == expected  # every chunk done, once
        assert peak[0] <= 24, f"{peak[0]} threads"
        # Speed is the bench's to measure (bench/bench_celery.py --sections gateway: threads <= 24, p99 < 1 ms, max
        # < 20 ms, close() < 2 s, on a machine to itself). Here the worker and redis-server share the two cores
        # with this process, at the scheduler's will: the bounds below leave room for that and still fail on a
        # stall of the producer's own making (a GIL held for tens of ms, a lock, a wait on the network).
        assert p99 < sys.getswitchinterval() * 1e3 and worst < 100.0, (p99, worst)  # ms
        assert close_s < 10.0, close_s
