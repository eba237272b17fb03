"""ocycle_dist's Celery path against stock Celery and raw redis-py: publish throughput and reply latency.

Run from the repository root (needs ``redis-server`` on PATH, e.g. Debian's ``apt-get install redis-server``)::

    python bench/bench_celery.py              # 5 interleaved publish rounds, 200 latency samples
    python bench/bench_celery.py --rounds 9
    python bench/bench_celery.py --quick      # smoke run: small counts, 2 rounds

Self-contained: starts its own ``redis-server`` on a free loopback port (no persistence), one
``celery -A workers worker --pool prefork -c 1`` (ocycle_dist, db 0) and one ``celery -A bench.refapp worker
--pool prefork -c 1`` (stock JSON Celery with a Redis result backend, db 1), waits for both with a control ping,
and stops them all at the end, on error and on Ctrl-C (process groups: SIGTERM, then SIGKILL).

Sections:
1. Publish throughput of random-bytes chunks (2 KiB and 1 MiB), to queues no worker consumes: a raw redis-py
   ``LPUSH`` loop (one command per chunk, one connection); stock ``task.apply_async(args=[payload, t0])`` (JSON,
   bytes go base64; each call also SUBSCRIBEs to its result channel); ocycle_dist ``BufferEmit(...,
   mode='celery')``: time from the first ``write()`` until the executor has published every chunk
   (``executor.published == N``). Interleaved rounds (who goes first rotates), medians; ratios are medians of
   the per-round ratios (min-max in brackets). Also the bytes each path puts in Redis per chunk.
2. Latency with one idle worker: emit-to-``on_done`` of single 2 KiB chunks, one at a time, against
   ``apply_async(...).get()`` of the same payload, samples alternating between the two; then "under load": N
   chunks written as fast as possible, latency of each from its emit to its ``on_done``, against N
   ``apply_async`` then ``.get()`` of each in order (so a reference sample is the later of its own completion
   and the previous ``.get()``: the worker runs them in order, so this is close).

Machines are shared and noisy (2 slow cores here): read ratios, not absolute numbers. Exit code 0 unless a
contender failed (lost reply, error, time-out).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's ocycle_dist, workers and bench.refapp

import redis  # noqa: E402

import ocycle_dist  # noqa: E402
from ocycle_dist.settings import Settings  # noqa: E402

KIB, MIB = 1024, 1024 * 1024
OCYCLE_DB, REF_DB, PUB_DB = 0, 1, 2  # ocycle worker; reference worker + its result backend; unconsumed queues
PUB_QUEUE = "bench-unconsumed"
TASK = "workers.tasks.echo"
perf = time.perf_counter


class BenchError(RuntimeError):
    """A contender failed (time-out, error, lost reply): the numbers would be meaningless."""


# ---- processes -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")


@dataclass
class Topology:
    """redis-server and the worker processes; ``stop()`` kills every process group it started."""

    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    port: int = 0

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_redis(self) -> redis.Redis:
        for _ in range(5):  # the free port may be taken between the probe and the bind
            self.port = free_port()
            proc = self.spawn("redis-server", [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.tmp), "--loglevel", "warning",
            ])  # fmt: skip
            client = redis.Redis(host="127.0.0.1", port=self.port, db=PUB_DB)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and proc.popen.poll() is None:
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return client
                time.sleep(0.02)
            self.kill(proc)
        raise BenchError(f"redis-server did not start:\n{proc.tail()}")

    def start_worker(self, name: str, app: str, env: dict[str, str]) -> Proc:
        argv = [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", "prefork", "-c", "1",
                "-n", f"{name}@%h", "--loglevel", "WARNING", "--without-mingle", "--without-gossip"]  # fmt: skip
        return self.spawn(name, argv, {**os.environ, **env, "PYTHONPATH": str(ROOT)})

    @staticmethod
    def kill(proc: Proc) -> None:
        if proc.popen.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, sig)
            try:
                proc.popen.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # pool children left behind in the group
            os.killpg(proc.popen.pid, signal.SIGKILL)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first, redis-server last
            self.kill(proc)
        self.procs.clear()


def wait_ready(proc: Proc, app: Any, timeout: float = 90.0) -> float:
    """Poll ``app.control.ping`` until the worker answers; returns the seconds it took."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        proc.check()
        if app.control.ping(timeout=0.5):
            return time.monotonic() - t
    raise BenchError(f"{proc.name} did not answer a ping in {timeout:.0f} s:\n{proc.tail()}")


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM/SIGHUP end the run through the ``finally`` blocks, like Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---- statistics and printing -------------------------------------------------------------------------------


def pct(data: list[float], q: int) -> float:
    """The q-th percentile (inclusive method)."""
    if len(data) == 1:
        return data[0]
    return statistics.quantiles(data, n=100, method="inclusive")[q - 1]


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def ms(x: float) -> str:
    return f"{x * 1e3:.2f} ms"


def ratio_cell(ratios: list[float]) -> str:
    med = statistics.median(ratios)
    return f"{med:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else f"{med:.2f}x"


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


# ---- section 1: publish throughput ------------------------------------------------------------------------------


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
    emitter = ocycle_dist.BufferEmit(
        TASK, case.size, clip=True, mode="celery", max_inflight=n + 1, stream=f"bench-pub-{uuid.uuid4().hex[:8]}",
        settings=Settings(broker_url=url, queue=PUB_QUEUE),
    )  # fmt: skip
    emitter.open()
    executor = emitter._executor
    executor._client.ping()  # connect outside the timing, as the other two are
    write = emitter.write
    try:
        t = perf()
        for p in case.payloads:
            write(p)
        written = perf() - t
        deadline = time.monotonic() + 120
        while executor.published < n:
            if time.monotonic() > deadline:
                raise BenchError(f"ocycle_dist published {executor.published} of {n} chunks in 120 s")
            time.sleep(0.0002)
        elapsed = perf() - t
    finally:
        emitter.close(wait=False)  # no worker consumes PUB_QUEUE: do not wait for replies
    case.write_seconds.append(written)
    if "ocycle_dist" not in case.wire:
        message = r.lindex(PUB_QUEUE, 0) or b""
        claims = [r.strlen(k) for k in r.scan_iter("ocycle:chunk:*", count=1000)]
        case.wire["ocycle_dist"] = len(message) + (claims[0] if claims else 0)
        if claims:
            case.wire["ocycle_dist claimed"] = claims[0]
            case.wire["ocycle_dist message"] = len(message)
    return elapsed


def section_publish(topo: Topology, ref: Any, rounds: int, counts: dict[int, int]) -> None:
    r = redis.Redis.from_url(topo.url(PUB_DB))
    r_ref = redis.Redis.from_url(topo.url(REF_DB))
    cases = [Publish(f"{size // KIB} KiB" if size < MIB else f"{size // MIB} MiB", size,
                     [os.urandom(size) for _ in range(n)]) for size, n in counts.items()]  # fmt: skip
    ref.echo.apply_async(args=[b"warm-up", 0.0], queue=PUB_QUEUE).forget()  # connect + subscribe once

    def clean() -> None:
        r.flushdb()
        r_ref.delete(PUB_QUEUE)
        gc.collect()

    clean()
    contenders: dict[str, Callable[[Publish], float]] = {
        "raw LPUSH": lambda c: pub_raw(r, c),
        "apply_async": lambda c: pub_celery(ref.echo, r_ref, c),
        "ocycle_dist": lambda c: pub_ocycle(topo.url(PUB_DB), r, c),
    }
    keys = list(contenders)
    for case in cases:
        case.seconds = {k: [] for k in keys}
    for rnd in range(rounds):
        order = keys[rnd % len(keys) :] + keys[: rnd % len(keys)]
        for case in cases:
            for k in order:
                case.seconds[k].append(contenders[k](case))
                clean()
        print(f"  publish round {rnd + 1}/{rounds} done", file=sys.stderr, flush=True)

    rows = []
    for case in cases:
        n, mb = len(case.payloads), len(case.payloads) * case.size / 1e6
        dist = case.seconds["ocycle_dist"]
        for ref_name in ("raw LPUSH", "apply_async"):
            # a rate ratio is the inverse of the time ratio
            ratios = [rs / ds for rs, ds in zip(case.seconds[ref_name], dist, strict=True)]
            for unit, amount in (("chunks/s", n), ("MB/s", mb)):
                rows.append([f"{case.label} x {n}, {unit}", ref_name,
                             fmt(amount / statistics.median(case.seconds[ref_name])),
                             fmt(amount / statistics.median(dist)), ratio_cell(ratios)])  # fmt: skip
    table("1. Publish throughput (random bytes, queue not consumed; MB = 10^6 B of payload)",
          ["chunks, unit", "reference", "reference", "ocycle_dist", "ocycle_dist / reference"], rows)  # fmt: skip
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
    table("1b. Bytes stored in Redis per chunk (list entry; for ocycle_dist claimed chunks + the SET value)",
          ["payload", "path", "bytes", "x payload"], rows)  # fmt: skip


# ---- section 2: latency -----------------------------------------------------------------------------------------


class Collector:
    """on_done/on_error target: times each chunk's reply by its sequence number."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.done: dict[int, float] = {}
        self.results: dict[int, Any] = {}
        self.errors: list[str] = []
        self.event = threading.Event()
        self.lock = threading.Lock()

    def reset(self, expect: int) -> None:
        with self.lock:
            self.expect, self.done, self.results, self.errors = expect, {}, {}, []
            self.event.clear()

    def on_done(self, result: Any, meta: ocycle_dist.Chunk) -> None:
        t = perf()
        with self.lock:
            self.done[meta.seq] = t
            self.results[meta.seq] = result
            if len(self.done) + len(self.errors) >= self.expect:
                self.event.set()

    def on_error(self, exc: BaseException, meta: ocycle_dist.Chunk) -> None:
        with self.lock:
            self.errors.append(f"chunk {meta.seq}: {exc!r}")
            if len(self.done) + len(self.errors) >= self.expect:
                self.event.set()


def check_echo(result: Any, payload: bytes, who: str) -> None:
    if not (isinstance(result, (list, tuple)) and bytes(result[0]) == payload):
        raise BenchError(f"{who}: echo returned something else than the payload: {str(result)[:200]}")


def section_latency(topo: Topology, ref: Any, samples: int, load: int, procs: list[Proc]) -> None:
    payloads = [os.urandom(2 * KIB) for _ in range(max(samples, load))]
    col = Collector(1)
    emitter = ocycle_dist.BufferEmit(
        TASK, 2 * KIB, clip=True, mode="celery", broker=topo.url(OCYCLE_DB), on_done=col.on_done,
        on_error=col.on_error, max_inflight=load + 1, stream=f"bench-lat-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    seq = 0

    def one_ocycle(payload: bytes) -> float:
        nonlocal seq
        col.reset(1)
        t = perf()
        emitter.write(payload)
        if not col.event.wait(60):
            for p in procs:
                p.check()
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

    try:
        for p in payloads[:5]:  # warm-up: connections, subscriptions, the pool child's imports
            one_ocycle(p)
            one_ref(p)
        lat: dict[str, list[float]] = {"apply_async().get()": [], "ocycle_dist": []}
        for i in range(samples):
            first, second = ("ocycle_dist", "apply_async().get()") if i % 2 else ("apply_async().get()", "ocycle_dist")
            for k in (first, second):
                lat[k].append((one_ocycle if k == "ocycle_dist" else one_ref)(payloads[i]))
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
                                 f"(stats {emitter.stats()}, pending {emitter._executor.pending})")  # fmt: skip
            if col.errors:
                raise BenchError(f"ocycle_dist under load: {len(col.errors)} errors, first {col.errors[0]}")
            under["ocycle_dist"] = [col.done[base + i] - sent[i] for i in range(load)]
            span["ocycle_dist"] = max(col.done.values()) - t_first
            seq += load
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
            under["apply_async().get()"] = [g - s for g, s in zip(got, sent, strict=True)]
            span["apply_async().get()"] = got[-1] - t_first
            print("  latency, under load: done", file=sys.stderr, flush=True)
    finally:
        emitter.close(wait=False)
    executor_note = ""
    if emitter.stats().failed or emitter.stats().dropped:
        executor_note = f" (emitter stats: {emitter.stats()})"

    rows = []
    ref_name = "apply_async().get()"
    for q in (50, 99):
        a, b = pct(lat[ref_name], q), pct(lat["ocycle_dist"], q)
        rows.append([f"one at a time, p{q} ({samples} samples)", ref_name, ms(a), ms(b), f"{b / a:.2f}x"])
    if load:
        for q in (50, 99):
            a, b = pct(under[ref_name], q), pct(under["ocycle_dist"], q)
            rows.append([f"under load ({load} at once), p{q}", f"{ref_name} each", ms(a), ms(b), f"{b / a:.2f}x"])
        a, b = load / span[ref_name], load / span["ocycle_dist"]
        rows.append(["under load: first send to last reply, chunks/s", ref_name, fmt(a), fmt(b), f"{b / a:.2f}x"])
    table("2. Latency, 2 KiB random chunks, one idle worker each (prefork -c 1); ratio < 1 is faster" + executor_note,
          ["case", "reference", "reference", "ocycle_dist", "ocycle_dist / reference"], rows)  # fmt: skip
    print("- chunks/s row: higher is better (ratio > 1 is faster)")


# ---- main -----------------------------------------------------------------------------------------------------


def environment(r: redis.Redis) -> str:
    server = r.info("server").get("redis_version", "?")
    return (f"python {platform.python_version()} | celery {version('celery')} | kombu {version('kombu')} | "
            f"redis-py {version('redis')} | redis-server {server} | msgpack {version('msgpack')} | "
            f"ocycle_dist {ocycle_dist.__version__} | {os.cpu_count()} cpus | {platform.platform()}")  # fmt: skip


def scan_logs(procs: list[Proc]) -> list[str]:
    notes = []
    for p in procs:
        text = p.log.read_text(errors="replace") if p.log.exists() else ""
        bad = [line for line in text.splitlines() if "Traceback" in line or " ERROR" in line or "CRITICAL" in line]
        if bad:
            notes.append(f"{p.name}: {len(bad)} error lines in its log, first: {bad[0][:200]}")
    return notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved publish rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, small counts")
    args = parser.parse_args()
    rounds = 2 if args.quick else max(1, args.rounds)
    counts = {2 * KIB: 200, MIB: 10} if args.quick else {2 * KIB: 2000, MIB: 60}
    samples, load = (30, 50) if args.quick else (200, 500)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = perf()
    status = 0
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp, interrupts_as_exceptions():
        topo = Topology(Path(tmp))
        procs: list[Proc] = []
        try:
            r = topo.start_redis()
            print(environment(r))
            print("command:", " ".join([Path(sys.executable).name, *sys.argv]),
                  f"(rounds={rounds}, chunks={ {f'{k}B': v for k, v in counts.items()} }, "
                  f"latency samples={samples}, under load={load})")  # fmt: skip
            os.environ["BENCH_REF_URL"] = topo.url(REF_DB)
            ref = importlib.import_module("bench.refapp")
            from ocycle_dist.worker import make_app

            ocycle_control = make_app(Settings(broker_url=topo.url(OCYCLE_DB)), name="bench-control")
            procs.append(topo.start_worker("ocycle", "workers", {"OCYCLE_BROKER_URL": topo.url(OCYCLE_DB)}))
            procs.append(topo.start_worker("ref", "bench.refapp", {"BENCH_REF_URL": topo.url(REF_DB)}))
            ready = [wait_ready(procs[0], ocycle_control), wait_ready(procs[1], ref.app)]
            print(f"workers ready after {ready[0]:.1f} s and {ready[1]:.1f} s more "
                  f"(setup {perf() - start:.1f} s)")  # fmt: skip
            section_publish(topo, ref, rounds, counts)
            section_latency(topo, ref, samples, load, procs)
            for p in procs:
                p.check()
            notes = scan_logs(procs)
            for note in notes:
                print(f"- WARNING {note}")
        # Handled here, not only in ``finally``: leaving the except block frees the traceback's frames, and with
        # them Celery's AsyncResults, whose __del__ unsubscribes while Redis is still up (else ~20 s of retries).
        except BenchError as exc:
            print(f"\nFAILED: {exc}", file=sys.stderr)
            status = 1
        except KeyboardInterrupt as exc:
            print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}); stopping the workers and redis-server", file=sys.stderr)
            status = 130
        except Exception:
            traceback.print_exc()
            status = 1
        finally:
            for note in scan_logs(procs) if status else []:
                print(f"- {note}", file=sys.stderr)
            topo.stop()
    print(f"\ntotal runtime {perf() - start:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
