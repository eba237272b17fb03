"""What the sections share: constants, the run's :class:`Config`, the reply :class:`Collector`, emitter helpers."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import ocycle_dist
from bench._report import pct, us
from ocycle_dist.remote.settings import Settings

KIB, MIB = 1024, 1024 * 1024
RATE = 16000
OCYCLE_DB, REF_DB, PUB_DB = 0, 1, 2  # ocycle workers; reference workers + their result backend; unconsumed queues
PUB_QUEUE = "bench-unconsumed"
TASK = "bench.echo"
WORKER_QUEUES = ["celery,q1,q2,q4", "q2,q4", "q4", "q4"]  # worker i serves these: queue qN has N workers
perf = time.perf_counter


class BenchError(RuntimeError):
    """A contender failed (time-out, error, lost reply): the numbers would be meaningless."""


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


def unconsumed_emitter(url: str, size: int, n: int) -> ocycle_dist.BufferEmit:
    """An emitter of ``size``-byte chunks to the queue no worker consumes, room for ``n`` chunks, connected.

    Its spool budget holds all ``n`` (a publishing-speed bench, not one of the budget: with the default 32 MiB,
    ``drop_oldest`` would drop 1 MiB chunks before they are published)."""
    budget = (n + 2) * (size + 4096)
    emitter = ocycle_dist.BufferEmit(
        TASK, size, clip=True, mode="celery", max_inflight=n + 1, stream=f"bench-pub-{uuid.uuid4().hex[:8]}",
        settings=Settings.from_env(broker_url=url, queue=PUB_QUEUE, resend_after=3600.0, spool_max_bytes=budget),
    )  # fmt: skip
    emitter.open()
    emitter.executor.hub.publisher.client.ping()  # connect outside the timing, as the others are
    return emitter


def wait_published(emitter: ocycle_dist.BufferEmit, n: int, timeout: float = 120.0) -> None:
    executor = emitter.executor
    deadline = time.monotonic() + timeout
    while executor.counts["published"] < n:
        if time.monotonic() > deadline:
            raise BenchError(f"ocycle_dist published {executor.counts['published']} of {n} chunks in {timeout} s")
        time.sleep(0.0002)


def close_unconsumed(emitter: ocycle_dist.BufferEmit) -> None:
    """Close an emitter whose queue no worker consumes: drop what it keeps (no reply will ever come)."""
    executor = emitter.executor
    emitter.close(wait=False)
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)
        if not executor.finished.wait(10):
            print("  note: an executor did not finish 10 s after shutdown(cancel_futures=True)",
                  file=sys.stderr)  # fmt: skip


LAT_HEADER = ["case", "writes", "p50", "p99", "p99.9", "max", ">= 1 ms", "goal p99", "p99 / goal", "note"]


def latency_row(label: str, lat: list[float], extra: str = "") -> list[str]:
    """A row of :data:`LAT_HEADER` (sections 3a and 3b): write() latency percentiles against the 1 ms goal."""
    over = sum(1 for x in lat if x >= 1e-3) / len(lat) if lat else 0.0
    return [label, f"{len(lat):,}", us(pct(lat, 50)), us(pct(lat, 99)), us(pct(lat, 99.9)), us(max(lat)),
            f"{over:.2%}", "1,000 µs", f"{pct(lat, 99) / 1e-3:.2f}x", extra]  # fmt: skip
