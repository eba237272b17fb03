"""What sealed messages cost (``OCYCLE_REPLY_SECRET``): the same code with and without a secret, side by side.

Run from the repository root (needs ``redis-server`` on PATH)::

    python bench/bench_seals.py              # 5 interleaved rounds (~2 min)
    python bench/bench_seals.py --rounds 3

Two measures, each in interleaved rounds (who goes first alternates), medians and the median of the per-round
ratios (min-max in brackets):

- **publish**: 2,000 chunks of 2 KiB written to a queue no worker consumes, from the first ``write()`` until the
  producer has published them all (as ``bench_celery.py`` section 1): unsealed, and sealed (each chunk's SHA-256
  and HMAC on the publisher's thread).
- **drain**: 2,000 SPL chunks (0.5 s of 16 kHz int16, 16 KB) queued, then one worker process (``-c 1``) told to
  consume them, timed from the first result to the last (as the fleet section's drain): a worker without the
  secret draining unsealed messages, and one with it draining sealed ones (each chunk's digest and seal checked
  before it runs, its reply carrying the digest, the producer comparing it).

Self-contained: starts its own redis-server and two workers, stopped at the end. Machines are shared and noisy
(2 cores here): read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import ocycle_dist  # noqa: E402
from bench._report import fmt, table  # noqa: E402
from bench.celery_bench.common import Collector  # noqa: E402
from bench.celery_bench.fleet import SPL, consume, spl_chunks  # noqa: E402
from ocycle_dist.remote import wire  # noqa: E402
from ocycle_dist.remote.settings import Settings  # noqa: E402
from ocycle_dist.testing import RedisServer, Worker  # noqa: E402

SECRET = "bench-secret"
RATE = 16000
perf = time.perf_counter


def publish(url: str, secret: str, payloads: list[bytes]) -> float:
    """Chunks/s of 2 KiB chunks published to a queue no worker consumes."""
    n, size = len(payloads), len(payloads[0])
    emitter = ocycle_dist.BufferEmit(
        "bench.echo", size, clip=True, mode="celery", max_inflight=n + 1,
        settings=Settings(broker_url=url, queue=f"pub-{uuid.uuid4().hex[:6]}", resend_after=3600.0,
                          spool_max_bytes=(n + 2) * (size + 4096), reply_secret=secret),
    )  # fmt: skip
    emitter.open()
    executor = emitter.executor
    assert executor is not None
    executor.hub.publisher.client.ping()  # connected outside the timing
    t = perf()
    for p in payloads:
        emitter.write(p)
    while executor.counts["published"] < n:
        time.sleep(0.0002)
    elapsed = perf() - t
    emitter.close(wait=False)
    executor.shutdown(wait=False, cancel_futures=True)
    return n / elapsed


def drain(url: str, secret: str, node: str, chunks: list[np.ndarray]) -> float:
    """Chunks/s of one worker process draining a backlog of SPL chunks (the first result to the last)."""
    n, queue = len(chunks), f"drain-{uuid.uuid4().hex[:6]}"
    col = Collector(n)
    emitter = ocycle_dist.NumpyEmit(
        "workers.tasks.spl", SPL, clip=True, rate=RATE, mode="celery", on_done=col.on_done, on_error=col.on_error,
        settings=Settings(broker_url=url, queue=queue, reply_secret=secret),
    )  # fmt: skip
    try:
        t0 = time.time()
        for i, c in enumerate(chunks):
            emitter.write(c, t0=t0 + i * 0.5)
        executor = emitter.executor
        assert executor is not None
        deadline = time.monotonic() + 60
        while executor.counts["published"] < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {executor.counts['published']} of {n} chunks published in 60 s")
            time.sleep(0.005)
        consume(url, wire.SERIALIZER, node, queue, True)
        if not col.event.wait(300):
            raise RuntimeError(f"{node} drained {len(col.done)} of {n} in 300 s")
        if col.errors:
            raise RuntimeError(f"{node}: {col.errors[0]}")
        elapsed = max(col.done.values()) - min(col.done.values())
    finally:
        emitter.close(wait=False)
        consume(url, wire.SERIALIZER, node, queue, False)
    return (n - 1) / elapsed


def interleaved(rounds: int, a: Any, b: Any) -> tuple[list[float], list[float]]:
    got_a, got_b = [], []
    for rnd in range(rounds):
        if rnd % 2 == 0:
            got_a.append(a())
            got_b.append(b())
        else:
            got_b.append(b())
            got_a.append(a())
        print(f"  round {rnd + 1}/{rounds} done", file=sys.stderr, flush=True)
    return got_a, got_b


def row(case: str, unit: str, plain: list[float], sealed: list[float]) -> list[str]:
    ratios = [s / p for p, s in zip(plain, sealed, strict=True)]
    return [case, unit, fmt(statistics.median(plain)), fmt(statistics.median(sealed)),
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"python {sys.version.split()[0]} | {os.cpu_count()} cpus | load average {load} | rounds {args.rounds}")
    rng = np.random.default_rng(2)
    payloads = [rng.bytes(2048) for _ in range(2000)]
    chunks = spl_chunks(2000)
    with tempfile.TemporaryDirectory(prefix="bench-seals-") as tmp, RedisServer() as redis:
        secrets = {"plain": "", "sealed": SECRET}
        workers = [
            Worker(
                redis.url,
                name=name,
                queues=f"idle-{name}",
                include=("bench.tasks",),
                cwd=ROOT,
                log=Path(tmp) / f"{name}.log",
                loglevel="WARNING",
                env={"OCYCLE_REPLY_SECRET": secret},
            )
            for name, secret in secrets.items()
        ]
        try:
            for w in workers:
                w.start(wait=False)
            for w in workers:
                w.wait_ready()
            time.sleep(1.0)
            print("  publish ...", file=sys.stderr, flush=True)
            pub = interleaved(args.rounds, lambda: publish(redis.url, "", payloads),
                              lambda: publish(redis.url, SECRET, payloads))  # fmt: skip
            print("  drain ...", file=sys.stderr, flush=True)
            dra = interleaved(args.rounds, lambda: drain(redis.url, "", "plain", chunks),
                              lambda: drain(redis.url, SECRET, "sealed", chunks))  # fmt: skip
        finally:
            for w in workers:
                w.stop()
    table(f"Sealed messages: the same code without and with OCYCLE_REPLY_SECRET, {args.rounds} interleaved rounds,"
          " medians (ratio: sealed / unsealed, the median of the rounds' ratios, min-max)",
          ["case", "unit", "unsealed", "sealed", "ratio"],
          [row("publish 2,000 chunks of 2 KiB (queue not consumed)", "chunks/s", *pub),
           row("one worker (-c 1) draining 2,000 SPL chunks (16 KB)", "chunks/s", *dra)])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
