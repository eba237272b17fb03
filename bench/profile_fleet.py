"""The fleet section's fleet loop on its own, for profiling the producer: 50 emitters (threads of this process, one
stream each, one SPL chunk in flight each, paced at 100 chunks/s each) against one worker process (-c 1).

Run from the repository root (needs ``redis-server`` on PATH)::

    python bench/profile_fleet.py                  # chunks/s and this process's CPU per completed chunk
    python bench/profile_fleet.py --spy out.raw    # also py-spy (--gil, raw format) of this process for 5 s

It starts its own redis-server and worker; it prints after a 2 s warm-up a 6 s window's completed chunks per
second and the producer's CPU (``time.process_time``) per completed chunk.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ocycle_dist
from bench.celery_bench.fleet import RATE, SPL, spl_chunks
from ocycle_dist.procs.workers import Worker
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--producers", type=int, default=50)
    parser.add_argument("--spy", help="write a py-spy --gil raw profile of this process (5 s) to this file")
    args = parser.parse_args()
    with RedisServer() as redis:
        worker = Worker(redis.url, name="fleet", queues="q1", concurrency=1, loglevel="WARNING").start()
        try:
            run(redis.url, args.producers, args.spy)
        finally:
            worker.stop()


def run(url: str, producers: int, spy: str | None) -> None:
    settings = Settings(broker_url=url, queue="q1")
    done = [0]
    lock = threading.Lock()

    def on_done(result: object) -> None:
        with lock:
            done[0] += 1

    emitters = [ocycle_dist.NumpyEmit("workers.tasks.spl", SPL, clip=True, rate=RATE, mode="celery", max_inflight=1,
                                      policy="block", on_done=on_done, settings=settings,
                                      stream=f"profile-fleet{i}-{uuid.uuid4().hex[:6]}")
                for i in range(producers)]  # fmt: skip
    chunks = spl_chunks(8)
    stop = threading.Event()

    def produce(k: int, emitter: ocycle_dist.NumpyEmit) -> None:
        start, i = time.perf_counter() + k / (producers * 100), 0
        while not stop.is_set():
            wait = start + i / 100 - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            emitter.write(chunks[i % 8])
            i += 1

    threads = [threading.Thread(target=produce, args=(k, e), daemon=True) for k, e in enumerate(emitters)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # warm-up
    with lock:
        before = done[0]
    c0, t0 = time.process_time(), time.perf_counter()
    if spy:
        subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "-r", "200", "--gil", "--format", "raw",
                          "-o", spy, "-d", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(6.0)
    with lock:
        completed = done[0] - before
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    print(f"{completed / wall:,.0f} chunks/s; producer CPU {cpu / wall * 100:.0f} % of a core, "
          f"{cpu / max(1, completed) * 1e6:,.0f} us per completed chunk")  # fmt: skip
    stop.set()
    for thread in threads:
        thread.join(30)  # a writer may wait for its chunk's result first (max_inflight=1, block)
    for emitter in emitters:
        emitter.close(timeout=30)


if __name__ == "__main__":
    main()
