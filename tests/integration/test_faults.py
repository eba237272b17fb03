"""Fault injection against real processes: a worker killed inside a task, Redis down and restarted empty (once, and
three times in one stream), a Sentinel failover, the producer killed and restarted on its spool, tasks that raise,
run past their time limit or are unknown, the spool's directory deleted under a producer, the spool's disk full.

Each test starts its own redis-server and ``celery -A workers worker`` processes (never the session
``topology``), waits on conditions with deadlines, and ends with the accounting: every chunk written is
done, failed or counted as dropped, and ``on_done`` ran exactly once per chunk in each producer process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.errors import RemoteTaskError
from ocycle_dist.remote.redis_client import connect, reachable
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import RedisServer, SentinelCluster, Worker
from tests.support.helpers import wait_for

pytestmark = pytest.mark.usefixtures("redis_server_required")

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "fault-pw"


class Cluster:
    """A redis-server (password, no persistence) and worker processes loading tests.support.tasks."""

    def __init__(self, workers: int) -> None:
        self.redis = RedisServer(password=PASSWORD).start()
        self.retired: list[RedisServer] = []
        self.workers = [Worker(self.url, name=f"f{i}", include=("tests.support.tasks",)) for i in range(workers)]
        for worker in self.workers:
            worker.start()

    @property
    def url(self) -> str:
        return self.redis.url

    def worker(self, hostname: str) -> Worker:
        """The worker whose Celery hostname (``f0@host``) is ``hostname``."""
        return next(w for w in self.workers if hostname.split("@")[0] == w.name)

    def restart_redis_empty(self) -> RedisServer:
        """A new redis-server on the same port and password, with nothing in it (the old one must be stopped)."""
        self.retired.append(self.redis)
        self.redis = RedisServer(port=self.redis.port, password=PASSWORD).start()
        return self.redis

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
            worker.log.unlink(missing_ok=True)
        for server in [*self.retired, self.redis]:
            server.__exit__()


@pytest.fixture
def cluster() -> Iterator[Callable[[int], Cluster]]:
    made: list[Cluster] = []

    def build(workers: int) -> Cluster:
        made.append(Cluster(workers))
        return made[-1]

    yield build
    for c in made:
        c.close()


class Recorder:
    """on_done / on_error of one emitter: every call, with its chunk's sequence number."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: list[tuple[int, Any]] = []
        self.errors: list[tuple[int, BaseException, float]] = []

    def on_done(self, result: Any, meta: ocycle.Chunk) -> None:
        with self.lock:
            self.done.append((meta.seq, result))

    def on_error(self, exc: BaseException, meta: ocycle.Chunk) -> None:
        with self.lock:
            self.errors.append((meta.seq, exc, time.monotonic()))

    def done_seqs(self) -> list[int]:
        with self.lock:
            return sorted(seq for seq, _ in self.done)


@pytest.fixture
def emitters(cluster: Any) -> Iterator[Callable[..., tuple[ocycle.BufferEmit, Recorder]]]:
    """Build celery-mode emitters; torn down (pending chunks dropped) before the cluster is."""
    made: list[Any] = []

    def build(
        task: str, url: str, *, size: int = 16, settings: dict[str, Any] | None = None, **options: Any
    ) -> tuple[ocycle.BufferEmit, Recorder]:
        recorder = Recorder()
        emitter = ocycle.BufferEmit(
            task,
            size,
            clip=True,
            mode="celery",
            settings=Settings(broker_url=url, **(settings or {})),
            on_done=recorder.on_done,
            on_error=recorder.on_error,
            **options,
        )
        made.append((emitter, emitter.executor))
        return emitter, recorder

    yield build
    for emitter, executor in made:
        emitter.close(wait=False)
        executor.shutdown(wait=False, cancel_futures=True)
    for _, executor in made:
        executor.finished.wait(10)


def assert_exactly_once(emitter: ocycle.BufferEmit, recorder: Recorder, n: int) -> None:
    """Every one of the ``n`` chunks done, on_done once each, and the counters add up."""
    seqs = recorder.done_seqs()
    duplicates = [seq for seq, k in Counter(seqs).items() if k > 1]
    assert duplicates == [], f"on_done ran more than once for {duplicates}"
    assert seqs == list(range(n)), f"missing: {sorted(set(range(n)) - set(seqs))[:20]}"
    stats = emitter.stats()
    assert stats.in_flight == 0, stats
    wait_for(lambda: emitter.executor.spooled_bytes == 0, 10, "the spool emptied")
    assert stats.emitted == n == stats.done + stats.failed + stats.dropped, stats
    assert (stats.done, stats.failed, stats.dropped) == (n, 0, 0), stats


def log_count(worker: Worker, text: bytes) -> int:
    return worker.log.read_bytes().count(text)


def log_tail(worker: Worker, lines: int = 40) -> str:
    """The end of a worker's log, without the per-task lines."""
    text = worker.log.read_bytes().decode("utf-8", "replace").splitlines()
    return "\n".join([line for line in text if "Task contract." not in line][-lines:])


def assert_reconnected(worker: Worker, outages: int) -> None:
    """``worker`` lost Redis ``outages`` times and connected again each time, its main process never exiting."""
    wait_for(
        lambda: not worker.alive() or log_count(worker, b"Connected to ") >= outages + 1,
        40,
        lambda: f"{worker.name} to reconnect; its log ends with:\n{log_tail(worker)}",
    )
    assert worker.alive(), (
        f"{worker.name} exited with {worker.proc.returncode if worker.proc else None}:\n{log_tail(worker)}"
    )
    assert b"Unrecoverable error" not in worker.log.read_bytes(), log_tail(worker)
    assert log_count(worker, b"Connection to broker lost") == outages
    assert worker.starts == 1


# ---- 1. a worker SIGKILLed inside a task ---------------------------------------------------------------------


class LiveSource:
    """A live source on its own thread: writes ``b"fast" + seq`` as fast as ``write()`` lets it, until stopped."""

    def __init__(self, emitter: Any) -> None:
        self.emitter, self.written = emitter, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LiveSource:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.emitter.write(b"fast" + self.written.to_bytes(12, "big"))
                self.written += 1
        except Exception:  # the emitter closed under a write blocked at max_inflight: the test failed already
            if not self._stop.is_set():
                raise

    def stop(self) -> None:
        self._stop.set()

    def joined(self) -> int:
        """Wait for the thread (its last write may wait for room); the number of frames written."""
        self._thread.join(10)
        assert not self._thread.is_alive(), "the source's last write() never returned"
        return self.written


def test_a_worker_killed_inside_a_task_loses_no_chunk(cluster: Any, emitters: Any, tmp_path: Path) -> None:
    c = cluster(2)
    n, slow = 1000, 150
    stream = f"kill-worker-{uuid.uuid4().hex[:6]}"
    emitter, got = emitters(
        "contract.slow_echo",
        c.url,
        settings={"spool_dir": str(tmp_path)},  # default resend_after (120 s): the dead worker's lease does it
        stream=stream,
    )
    admin = connect(c.url)
    killed: dict[str, Any] = {}

    def kill_the_worker_running_the_slow_chunk() -> None:
        key = f"ocycle:test:running:{stream}:{slow}"  # set by contract.slow_echo while it runs (2 s for this one)
        deadline = time.monotonic() + 30
        while (host := admin.get(key)) is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        worker = c.worker(host.decode())
        worker.kill()  # SIGKILL to its process group: main process and pool child
        killed.update(host=host.decode(), worker=worker, still_running=admin.get(key) == host)

    killer = threading.Thread(target=kill_the_worker_running_the_slow_chunk, daemon=True)
    killer.start()
    started = time.monotonic()
    for i in range(n):
        emitter.write((b"slow" if i == slow else b"fast") + i.to_bytes(12, "big"))
    killer.join(30)
    assert killed, "no worker ever ran the slow chunk"
    assert killed["still_running"], "the slow task had already finished when its worker was killed"
    dead = killed["worker"]
    assert dead.wait_exit(10) == -signal.SIGKILL
    survivor = next(w for w in c.workers if w is not dead)
    assert survivor.alive()

    assert emitter.wait(60), f"chunks still in flight: {emitter.stats()}"
    elapsed = time.monotonic() - started
    admin.close()
    assert_exactly_once(emitter, got, n)
    results = dict(got.done)
    assert results[slow] == [b"slow" + slow.to_bytes(12, "big"), f"{survivor.name}@{killed['host'].split('@')[1]}"]
    assert all(results[i][0] == (b"slow" if i == slow else b"fast") + i.to_bytes(12, "big") for i in range(n))
    counts = emitter.executor.counts
    assert counts["recovered"] >= 1 and counts["undelivered"] == 0  # by the lapsed lease, not resend_after
    by_worker = Counter(host for _, host in results.values())
    print(
        f"\n[worker kill] killed {killed['host']} inside chunk #{slow}; {n} chunks in {elapsed:.1f} s;"
        f" stats={emitter.stats().as_dict()}; counts={counts}; done by={dict(by_worker)}"
    )


# ---- 2. Redis down for 5 s, restarted empty -----------------------------------------------------------------


def test_redis_down_for_5_s_and_restarted_empty_loses_no_chunk(cluster: Any, emitters: Any, tmp_path: Path) -> None:
    c = cluster(2)
    stream = f"outage-{uuid.uuid4().hex[:6]}"
    emitter, got = emitters(
        "contract.slow_echo",
        c.url,
        # resend_after far beyond the test's waits: what the empty Redis lost must be sent again because the
        # producer sees a new server (its run_id changed), not because a deadline passed
        settings={"resend_after": 600.0, "spool_dir": str(tmp_path)},
        stream=stream,
        max_inflight=10_000,
    )
    executor = emitter.executor
    admin = connect(c.url)
    admin.set("ocycle:test:before-outage", 1)
    seq = 0

    def write(prefix: bytes = b"fast") -> None:
        nonlocal seq
        emitter.write(prefix + seq.to_bytes(12, "big"))
        seq += 1

    for i in range(300):
        write(b"slow" if i == 60 else b"fast")  # the slow one still runs on a worker when Redis goes
    wait_for(lambda: admin.get(f"ocycle:test:running:{stream}:60"), 30, "the slow chunk running")
    wait_for(lambda: len(got.done) >= 50, 30, "50 chunks done before the outage")
    admin.close()

    c.redis.stop()
    down_at = time.monotonic()
    in_flight_at_stop = emitter.stats().in_flight
    assert not reachable(c.url)
    before_outage = seq
    write_times = []
    while time.monotonic() - down_at < 5.0:  # a live source keeps writing through the outage
        t = time.perf_counter()
        write()
        write_times.append(time.perf_counter() - t)
        time.sleep(0.05)
    assert not executor.broker_up.is_set(), "the producer did not notice the outage"
    c.restart_redis_empty()
    outage = time.monotonic() - down_at
    admin = connect(c.url)
    assert admin.exists("ocycle:test:before-outage") == 0  # a new, empty Redis

    # The workers reconnect by themselves, none exits (see test_a_worker_survives_redis_killed_under_its_task)
    for worker in c.workers:
        assert_reconnected(worker, 1)
    after_restart = seq
    for _ in range(200):
        write()
    n = seq
    assert emitter.wait(45), f"chunks still in flight: {emitter.stats()}"
    admin.close()

    assert outage >= 5.0
    written_during = after_restart - before_outage
    assert written_during >= 50 and sum(write_times) < 1.0 and max(write_times) < 0.5, write_times
    assert in_flight_at_stop > 0
    assert_exactly_once(emitter, got, n)
    results = dict(got.done)
    assert all(results[i][0][4:] == i.to_bytes(12, "big") for i in range(n))
    assert {results[i][1].split("@")[0] for i in range(after_restart, n)} <= {w.name for w in c.workers}
    counts = executor.counts
    assert counts["resent"] >= 1 and counts["undelivered"] == 0  # what the empty Redis lost was sent again
    assert all(w.alive() and w.starts == 1 for w in c.workers)
    print(
        f"\n[redis outage] down {outage:.1f} s with {in_flight_at_stop} chunks in flight; {written_during} writes"
        f" during it took {sum(write_times) * 1000:.1f} ms in all (max {max(write_times) * 1000:.2f} ms);"
        f" {n} chunks, none lost; stats={emitter.stats().as_dict()}; counts={counts}"
    )


# ---- 2b. Redis killed under a worker running a late-ack task, three times -------------------------------------


def test_a_worker_survives_redis_killed_under_its_task(cluster: Any, emitters: Any) -> None:
    """Celery 5.7 + kombu 5.7 killed this worker: "Unrecoverable error: AttributeError 'NoneType' object has no
    attribute 'hostname'" (see ocycle_dist.remote.transport._ClosingChannel). The conditions, made certain here:
    the worker holds an unacknowledged late-ack task (running) and has prefetch room left, so its channel
    has a BRPOP pending when Redis is SIGKILLed."""
    c = cluster(1)
    (worker,) = c.workers
    stream = f"under-task-{uuid.uuid4().hex[:6]}"
    emitter, got = emitters("contract.slow_echo", c.url, stream=stream)  # default settings
    seq = 0
    for outage in range(1, 4):
        slow = seq
        emitter.write(b"slow" + slow.to_bytes(12, "big"))  # runs 2 s
        seq += 1
        admin = connect(c.url)
        wait_for(lambda a=admin, s=slow: a.get(f"ocycle:test:running:{stream}:{s}"), 30, f"chunk {slow} running")
        admin.close()
        c.redis.kill()  # SIGKILL mid-task
        c.restart_redis_empty()
        assert_reconnected(worker, outage)
        emitter.write(b"fast" + seq.to_bytes(12, "big"))  # the worker consumes again
        wait_for(lambda s=seq: s in got.done_seqs(), 30, f"chunk {seq} done after restart {outage}")
        seq += 1
    assert worker.alive() and worker.starts == 1
    print(f"\n[redis killed under a task] 3 times; worker alive, {log_count(worker, b'Restoring')} restores logged")


# ---- 2c. Redis killed and restarted empty three times in one stream, default settings ------------------------


def queued_chunks(admin: Any, queue: str = "celery") -> int:
    """Chunks in the queue's messages: one a plain message, all of a batch message's."""
    from ocycle_dist.remote.protocol import BATCH_HEADER

    return sum(len(json.loads(raw)["headers"].get(BATCH_HEADER) or [0]) for raw in admin.lrange(queue, 0, -1))


def test_redis_killed_and_restarted_empty_three_times_in_one_stream_recovers_in_seconds(
    cluster: Any, emitters: Any
) -> None:
    """A live source writes as fast as it can, so ``write()`` sits blocked at ``max_inflight`` (256). Each time,
    the workers are frozen (SIGSTOP, as if busy) until every chunk is published, and stay frozen until the
    new server holds the chunks again: no reply can wake the publisher, which is idle when Redis dies and has
    nothing to send that could fail. Default settings (``resend_after`` 120 s): what the empty server lost
    must be sent again because the listener sees a new server, within seconds."""
    c = cluster(2)
    stream = f"thrice-{uuid.uuid4().hex[:6]}"
    emitter, got = emitters(  # default settings: resend_after=120
        "contract.slow_echo", c.url, stream=stream, max_inflight=256, policy="block"
    )
    assert emitter.executor.settings.resend_after == 120.0

    def published_settles(executor: Any) -> bool:
        before = executor.counts["published"]
        time.sleep(0.5)
        return bool(executor.counts["published"] == before and emitter.stats().in_flight == 256)

    source = LiveSource(emitter).start()
    recoveries: list[tuple[int, float, float]] = []  # (chunks in flight at the kill, s to resent, s to done)
    try:
        for outage in range(1, 4):
            wait_for(lambda: emitter.stats().in_flight == 256, 30, "write() blocked at max_inflight")
            base = len(got.done)
            wait_for(lambda b=base: len(got.done) >= b + 100, 30, "100 more chunks done")  # streaming
            for worker in c.workers:
                worker.kill(signal.SIGSTOP)
            wait_for(lambda: published_settles(emitter.executor), 10, "every chunk in flight published")
            stats = emitter.stats()
            c.redis.kill()
            killed = time.monotonic()
            c.restart_redis_empty()
            admin = connect(c.url)
            try:
                wait_for(
                    lambda a=admin, k=stats.in_flight: queued_chunks(a) >= k,
                    20,  # far below resend_after: a stall fails here
                    lambda k=outage: f"the chunks in flight sent again after restart {k}: {emitter.executor.counts}",
                )
            finally:
                admin.close()
            resent = time.monotonic() - killed
            for worker in c.workers:
                worker.kill(signal.SIGCONT)
            wait_for(
                lambda n=stats.emitted: set(range(n)) <= set(got.done_seqs()),
                60,  # far below resend_after: a stall fails here
                lambda k=outage: f"every chunk emitted before kill {k} done: {emitter.stats()}",
            )
            recoveries.append((stats.in_flight, resent, time.monotonic() - killed))
            for worker in c.workers:
                assert_reconnected(worker, outage)
    finally:
        source.stop()
    assert emitter.wait(60), f"chunks still in flight: {emitter.stats()}"
    n = source.joined()
    assert_exactly_once(emitter, got, n)
    results = dict(got.done)
    assert all(results[i][0] == b"fast" + i.to_bytes(12, "big") for i in range(n))
    counts = emitter.executor.counts
    assert counts["undelivered"] == 0 and counts["resent"] >= 3
    assert emitter.executor.hub.server.new_servers >= 3
    for worker in c.workers:
        assert_reconnected(worker, 3)
    assert all(seconds < 30 for _, _, seconds in recoveries), recoveries
    print(
        f"\n[redis restarted empty x3] {n} chunks, none lost, on_done once each; recovery (kill to every chunk"
        f" emitted before it done; kill to sent again): "
        + ", ".join(f"{done:.1f} s ({k} in flight; sent again {resent:.1f} s)" for k, resent, done in recoveries)
        + f"; counts={counts}; workers never restarted"
    )


def test_redis_killed_and_restarted_empty_three_times_in_a_paced_stream_every_chunk_done_once(
    cluster: Any, emitters: Any
) -> None:
    """The stream of a live source: a 1000-byte chunk every 10 ms, a 50 ms task, two workers (one process each),
    default settings. Redis is SIGKILLed and restarted empty three times, 1-2 s apart, while it streams. What a
    server lost is sent again (not counted as an attempt), a worker's reply that could not be written is never
    a failed task: every chunk is done exactly once, none fails."""
    c = cluster(2)
    stream = f"paced-{uuid.uuid4().hex[:6]}"
    emitter, got = emitters("contract.work", c.url, size=1000, stream=stream)  # default settings
    n = 600
    writer_done = threading.Event()

    def paced() -> None:
        start = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, start + i * 0.01 - time.monotonic()))
            emitter.write(bytes([i % 256]) * 1000)
        writer_done.set()

    writer = threading.Thread(target=paced, daemon=True)
    writer.start()
    kills = []
    for gap in (1.0, 1.5, 1.5):
        time.sleep(gap)  # the stream goes on meanwhile: a live source
        c.redis.kill()
        kills.append((time.monotonic(), emitter.stats().emitted))
        c.restart_redis_empty()
    assert writer_done.wait(30), "the writer was held up"
    writer.join(10)
    assert emitter.wait(60), f"chunks still in flight: {emitter.stats()}"
    assert got.errors == [], [(seq, repr(exc)) for seq, exc, _ in got.errors[:5]]
    assert_exactly_once(emitter, got, n)
    assert all(got_len == 1000 for _, (got_len, _) in got.done)
    counts = emitter.executor.counts
    assert counts["undelivered"] == 0 and counts["recovered"] >= 1
    assert emitter.executor.hub.server.new_servers == 3
    for worker in c.workers:  # a restart during a worker's reconnect back-off (2 s) is one outage to it
        lost = log_count(worker, b"Connection to broker lost")
        assert worker.alive() and worker.starts == 1 and 1 <= lost <= 3, log_tail(worker)
        assert log_count(worker, b"Connected to ") == lost + 1, log_tail(worker)
        assert b"Unrecoverable error" not in worker.log.read_bytes(), log_tail(worker)
        assert b"Task handler raised error" not in worker.log.read_bytes(), log_tail(worker)
    print(
        f"\n[paced stream, redis restarted empty x3] {n} chunks done once each, 0 on_error; kills after"
        f" {[k for _, k in kills]} chunks; counts={counts}"
    )


# ---- 3. the producer SIGKILLed and restarted on its spool ---------------------------------------------------


def run_producer(args: list[str], log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with log.open("a") as err:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "support" / "producer_proc.py"), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=ROOT,
        )


def lines(path: Path) -> list[str]:
    """The complete lines of a file another process appends to (a line being written is left out)."""
    if not path.exists():
        return []
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


def results_of(path: Path) -> list[tuple[int, int]]:
    """``(seq, number)`` per on_done of one producer run."""
    return [(int(a), int(b)) for a, b in (line.split() for line in lines(path))]


def test_a_producer_killed_mid_stream_and_restarted_on_its_spool_loses_no_chunk(cluster: Any, tmp_path: Path) -> None:
    c = cluster(1)
    n = 600
    stream = f"crash-{uuid.uuid4().hex[:6]}"
    spool = tmp_path / "spool"
    files = {name: tmp_path / name for name in ("results1", "progress1", "results2", "progress2", "stderr")}
    common = ["--broker", c.url, "--spool", str(spool), "--stream", stream, "--count", str(n)]  # default settings

    first = run_producer(
        [*common, "--results", str(files["results1"]), "--progress", str(files["progress1"]), "--interval", "0.002"],
        files["stderr"],
    )
    try:
        wait_for(
            lambda: len(lines(files["progress1"])) >= 200 and len(results_of(files["results1"])) >= 20,
            30,
            f"the first producer mid-stream (stderr: {files['stderr'].read_text()[-2000:]})",
        )
    finally:
        first.kill()  # SIGKILL
    assert first.wait(10) == -signal.SIGKILL
    first.stdout.close()
    recorded = [int(x) for x in lines(files["progress1"])]
    assert recorded == list(range(len(recorded))) and len(recorded) < n  # killed mid-stream
    last = recorded[-1]
    results1 = results_of(files["results1"])

    second = run_producer(
        [*common, "--results", str(files["results2"]), "--progress", str(files["progress2"]), "--first", str(last + 1)],
        files["stderr"],
    )
    try:
        out, _ = second.communicate(timeout=60)
    finally:
        second.kill()
    assert second.returncode == 0, files["stderr"].read_text()[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    stats, counts = report["stats"], report["counts"]
    results2 = results_of(files["results2"])

    # the restarted producer took over what was pending, and its own accounting holds
    assert report["adopted"] >= 1
    assert stats["in_flight"] == 0 and (stats["failed"], stats["dropped"]) == (0, 0)
    assert stats["emitted"] == stats["done"] + stats["failed"] + stats["dropped"] == len(results2)
    assert stats["emitted"] == report["adopted"] + (n - last - 1)
    # on_done exactly once per chunk within each process
    for results in (results1, results2):
        seqs = [seq for seq, _ in results]
        assert len(seqs) == len(set(seqs)), Counter(seqs).most_common(3)
    # every chunk recorded as written before the kill has a result in one run or the other; the rest too
    numbers1, numbers2 = Counter(num for _, num in results1), Counter(num for _, num in results2)
    assert set(range(last + 1)) <= set(numbers1) | set(numbers2)
    assert set(numbers1) | set(numbers2) == set(range(n))
    across = sorted(set(numbers1) & set(numbers2))
    within2 = sorted(num for num, k in numbers2.items() if k > 1)  # written by run 1 after its last record
    assert all(num > last for num in within2)
    db = sqlite3.connect(spool / "spool.sqlite")
    try:
        assert db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0  # nothing left behind
    finally:
        db.close()
    print(
        f"\n[producer kill] killed after {last + 1} recorded writes with {len(results1)} results in; restart adopted"
        f" {report['adopted']} and wrote {n - last - 1}; run 2 stats={stats} counts={counts};"
        f" on_done in both runs (at-least-once across the crash): {len(across)} {across[:10]};"
        f" chunks written twice (run 1 after its last record, again by run 2): {within2}"
    )


# ---- 4. a task that raises, one past its time limit, one no worker has --------------------------------------


def test_failed_timed_out_and_unknown_tasks_reach_on_error_and_the_stream_goes_on(cluster: Any, emitters: Any) -> None:
    c = cluster(1)
    settings = {"resend_after": 60.0}  # what comes back is the worker's reply, not a resend's DeliveryError
    raising, raising_got = emitters("contract.fail_on_b", c.url, size=4, settings=settings)
    slow, slow_got = emitters("contract.sleep", c.url, size=4, settings={**settings, "task_time_limit": 1.0})
    stream = f"unknown-{uuid.uuid4().hex[:6]}"
    unknown, unknown_got = emitters("contract.no_such_task", c.url, size=4, settings=settings, stream=stream)
    good, good_got = emitters("contract.reverse", c.url, size=4, settings=settings, stream=stream)

    started = time.monotonic()
    raising.write(b"bbbb")
    slow.write(b"30.0")  # sleeps 30 s: killed after 1 s
    unknown.write(b"abcd")
    for emitter in (raising, slow, unknown):
        assert emitter.wait(30), f"no outcome within 30 s: {emitter.stats()}"
    # the next chunks of the same emitters, and a good task on the unknown task's stream, complete
    raising.write(b"aaaa")
    slow.write(b"0.01")
    good.write(b"wxyz")
    for emitter in (raising, slow, good):
        assert emitter.wait(30), f"no outcome within 30 s: {emitter.stats()}"

    def only_error(recorder: Recorder) -> RemoteTaskError:
        ((seq, exc, at),) = recorder.errors
        assert seq == 0 and isinstance(exc, RemoteTaskError)
        assert at - started < 20, f"{exc!r} took {at - started:.1f} s"
        return exc

    exc = only_error(raising_got)
    assert exc.type_name == "ValueError" and "starts with b" in exc.message
    exc = only_error(slow_got)
    assert exc.type_name == "TimeLimitExceeded" and "ran past its hard time limit of 1.0 s" in exc.message, exc
    exc = only_error(unknown_got)
    assert exc.type_name == "NotRegistered" and exc.message == "no worker has a task named 'contract.no_such_task'"

    assert raising_got.done == [(1, b"aaaa")]
    assert slow_got.done == [(1, b"0.01")]
    assert good_got.done == [(0, b"zyxw")] and good_got.errors == []
    assert unknown_got.done == []
    for emitter, (done, failed) in ((raising, (1, 1)), (slow, (1, 1)), (unknown, (0, 1)), (good, (1, 0))):
        stats = emitter.stats()
        assert (stats.done, stats.failed, stats.dropped, stats.in_flight) == (done, failed, 0, 0), stats
        assert stats.emitted == stats.done + stats.failed + stats.dropped
        assert emitter.executor.counts["resent"] == 0
    assert c.workers[0].alive()  # the worker survived its pool child's time-limit kill
    print(
        "\n[task errors] "
        + "; ".join(
            f"{rec.errors[0][1]!r} after {rec.errors[0][2] - started:.2f} s"
            for rec in (raising_got, slow_got, unknown_got)
        )
    )


# ---- 5. the durable spool's directory deleted, its disk full --------------------------------------------------


def spool_count(spool: Path) -> int:
    db = sqlite3.connect(spool / "spool.sqlite")
    try:
        return int(db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
    finally:
        db.close()


def test_a_spool_directory_deleted_under_a_producer_then_killed_loses_no_chunk(cluster: Any, tmp_path: Path) -> None:
    c = cluster(0)  # no worker yet: every chunk stays pending
    n = 300
    stream = f"vanish-{uuid.uuid4().hex[:6]}"
    spool = tmp_path / "spool"
    files = {name: tmp_path / name for name in ("results1", "progress1", "results2", "progress2", "stderr")}
    common = ["--broker", c.url, "--spool", str(spool), "--stream", stream, "--count", str(n), "--resend-after", "60"]

    first = run_producer(
        [*common, "--results", str(files["results1"]), "--progress", str(files["progress1"]), "--interval", "0.002"],
        files["stderr"],
    )
    try:
        wait_for(lambda: len(lines(files["progress1"])) >= n // 2, 30, "the first producer mid-stream")
        shutil.rmtree(spool)  # its directory deleted under it
        wait_for(lambda: len(lines(files["progress1"])) == n, 30, "every chunk written")  # write() never raised
        assert spool_count(spool) == n  # the spool noticed and wrote the file again, with every chunk
    finally:
        first.kill()
    first.wait(10)
    first.stdout.close()
    assert "vanished" in files["stderr"].read_text()

    c.workers.append(Worker(c.url, name="late", include=("tests.support.tasks",)).start())
    second = run_producer(
        [*common, "--results", str(files["results2"]), "--progress", str(files["progress2"]), "--first", str(n)],
        files["stderr"],
    )
    try:
        out, _ = second.communicate(timeout=90)
    finally:
        second.kill()
    assert second.returncode == 0, files["stderr"].read_text()[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["adopted"] == n  # was 0 of 300
    assert report["stats"]["done"] == n and report["stats"]["failed"] == 0
    assert {num for _, num in results_of(files["results2"])} == set(range(n))
    assert spool_count(spool) == 0
    print(f"\n[spool deleted] restart adopted {report['adopted']} of {n}; stats={report['stats']}")


def test_a_full_spool_disk_fails_chunks_counted_and_recovers_as_results_come_back(
    cluster: Any, emitters: Any, small_disk: Path
) -> None:
    c = cluster(0)  # no worker yet: the spool fills its disk
    settings = {"spool_dir": str(small_disk), "resend_after": 60.0}
    emitter, got = emitters("contract.echo_t0", c.url, size=16384, settings=settings, max_inflight=1000)
    for i in range(400):  # 6.4 MB of chunks, a 4 MiB disk
        emitter.write(bytes([i % 256]) * 16384)  # never raises
    wait_for(lambda: emitter.stats().callback_backlog == 0, 10, "the failed chunks' on_error run")
    stats = emitter.stats()
    kept = stats.in_flight
    assert 0 < stats.failed < 400 and kept + stats.failed == 400 and stats.dropped == 0
    assert all(isinstance(exc, ocycle.SpoolError) and "the disk is full" in str(exc) for _, exc, _ in got.errors)
    assert spool_count(small_disk) == kept

    c.workers.append(Worker(c.url, name="late", include=("tests.support.tasks",)).start())
    assert emitter.wait(60), emitter.stats()
    assert len(got.done) == kept
    wait_for(lambda: spool_count(small_disk) == 0, 10, "the spool emptied on its full disk")  # right after on_done
    for i in range(400, 450):  # and keeps new chunks again
        emitter.write(bytes([i % 256]) * 16384)
    assert emitter.wait(60), emitter.stats()
    stats = emitter.stats()
    assert (stats.emitted, stats.done, stats.failed, stats.in_flight) == (450, kept + 50, 400 - kept, 0)
    print(f"\n[spool disk full] {400 - kept} of 400 chunks failed with SpoolError, {kept} kept and done; then 50 more")


# ---- 6. Redis Sentinel: the master SIGKILLed mid-stream --------------------------------------------------------


def test_a_sentinel_failover_mid_stream_loses_no_chunk(emitters: Any) -> None:
    """Producer, listener and workers on a ``sentinel://`` URL; a primary, a replica and three sentinels. The master
    is SIGKILLed while ``write()`` sits blocked at ``max_inflight``; the sentinels promote the replica (down after
    1 s); default settings otherwise. What the replica had not received, or what was in flight, is sent again
    when the listener sees the new master's run_id."""
    with SentinelCluster(password=PASSWORD) as sentinel:
        env = {"OCYCLE_SENTINEL_MASTER": sentinel.master_name}
        workers = [Worker(sentinel.url, name=f"s{i}", include=("tests.support.tasks",), env=env) for i in range(2)]
        try:
            for worker in workers:
                worker.start()
            stream = f"failover-{uuid.uuid4().hex[:6]}"
            emitter, got = emitters("contract.slow_echo", sentinel.url, stream=stream, max_inflight=256, policy="block")
            source = LiveSource(emitter).start()
            try:
                wait_for(lambda: emitter.stats().in_flight == 256 and len(got.done) >= 200, 60, "streaming, blocked")
                stats = emitter.stats()
                old = sentinel.kill_master()
                killed = time.monotonic()
                new = wait_for(lambda: sentinel.failed_over(old), 30, "the sentinels to promote the replica")
                failed_over = time.monotonic() - killed
                wait_for(
                    lambda n=stats.emitted: set(range(n)) <= set(got.done_seqs()),
                    60,  # far below resend_after
                    lambda: f"every chunk emitted before the kill done: {emitter.stats()}",
                )
                recovered = time.monotonic() - killed
                base = len(got.done)
                wait_for(lambda: len(got.done) >= base + 200, 30, "200 more chunks done on the new master")
            finally:
                source.stop()
            assert emitter.wait(60), f"chunks still in flight: {emitter.stats()}"
            n = source.joined()
            assert_exactly_once(emitter, got, n)
            results = dict(got.done)
            assert all(results[i][0] == b"fast" + i.to_bytes(12, "big") for i in range(n))
            counts = emitter.executor.counts
            assert counts["undelivered"] == 0
            listener = emitter.executor.hub.server
            assert listener.new_servers == 1 and new is not old
            for worker in workers:
                assert_reconnected(worker, 1)
            print(
                f"\n[sentinel failover] master SIGKILLed with {stats.in_flight} chunks in flight; replica promoted"
                f" after {failed_over:.1f} s; every chunk emitted before the kill done {recovered:.1f} s after it;"
                f" {n} chunks, none lost, on_done once each; counts={counts}; workers never restarted"
            )
        finally:
            for worker in workers:
                worker.stop()
                worker.log.unlink(missing_ok=True)


# ---- 7. recovery without waste: a failover under a paced stream, a producer restarted on its spool -------------


def test_a_sentinel_failover_under_a_paced_stream_recovers_what_was_written_before_it_within_10_s(
    emitters: Any,
) -> None:
    """A paced stream (a 1000-byte chunk every 10 ms, a 50 ms task), producer and two workers on ``sentinel://``,
    default settings; the primary SIGKILLed after 200 of 600 chunks. What the workers held and what the old
    master lost is sent again ahead of what was written during the outage, the workers reconnect within a
    second of the promotion: every chunk written before the kill is done within 10 s of it, every chunk once."""
    with SentinelCluster(password=PASSWORD) as sentinel:
        env = {"OCYCLE_SENTINEL_MASTER": sentinel.master_name}
        workers = [Worker(sentinel.url, name=f"p{i}", include=("tests.support.tasks",), env=env) for i in range(2)]
        try:
            for worker in workers:
                worker.start()
            stream = f"paced-failover-{uuid.uuid4().hex[:6]}"
            emitter, got = emitters("contract.work", sentinel.url, size=1000, stream=stream)  # default settings
            n, kill_at = 600, 200
            killed: dict[str, float] = {}
            old: list[Any] = []

            def paced() -> None:
                start = time.monotonic()
                for i in range(n):
                    time.sleep(max(0.0, start + i * 0.01 - time.monotonic()))
                    if i == kill_at:
                        old.append(sentinel.kill_master())
                        killed["at"] = time.monotonic()
                        watcher.start()
                    emitter.write(bytes([i % 256]) * 1000)

            def watch() -> None:  # when the sentinels promoted the replica, seen while the writer goes on
                promoted.append(wait_for(lambda: sentinel.failed_over(old[0]), 30, "the promotion"))
                promoted.append(time.monotonic() - killed["at"])

            promoted: list[Any] = []
            writer = threading.Thread(target=paced, daemon=True)
            watcher = threading.Thread(target=watch, daemon=True)
            writer.start()
            writer.join(60)
            assert not writer.is_alive(), "the writer was held up"
            watcher.join(30)
            assert len(promoted) == 2, "the sentinels did not promote the replica within 30 s"
            new, promoted_after = promoted
            wait_for(
                lambda: set(range(kill_at)) <= set(got.done_seqs()),
                10.0 - (time.monotonic() - killed["at"]),  # within 10 s of the kill
                lambda: f"every chunk written before the kill done within 10 s: {emitter.stats()}",
            )
            before_done = time.monotonic() - killed["at"]
            assert emitter.wait(60), f"chunks still in flight: {emitter.stats()}"
            assert got.errors == [], [(seq, repr(exc)) for seq, exc, _ in got.errors[:5]]
            assert_exactly_once(emitter, got, n)
            assert new is not old[0] and emitter.executor.hub.server.new_servers == 1
            for worker in workers:
                log = worker.log.read_bytes()
                assert worker.alive() and worker.starts == 1 and b"Unrecoverable error" not in log, log_tail(worker)
                assert b"Task handler raised error" not in log, log_tail(worker)
            print(
                f"\n[sentinel failover, paced] master SIGKILLed after {kill_at} of {n} chunks; replica promoted after"
                f" {promoted_after:.1f} s; every chunk written before the kill done {before_done:.1f} s after it;"
                f" counts={emitter.executor.counts}"
            )
        finally:
            for worker in workers:
                worker.stop()
                worker.log.unlink(missing_ok=True)


def test_a_producer_restarted_on_its_spool_sends_again_only_what_redis_lost(cluster: Any, tmp_path: Path) -> None:
    """A producer with a durable spool writes 400 chunks with no worker running and is SIGKILLed; a new one on the
    same stream and spool takes them over: their messages still wait in Redis, so it sends (almost) none again,
    and every chunk runs once; the adopted chunks' latency counts from their first emit. Default settings."""
    c = cluster(0)
    n = 400
    stream = f"restart-{uuid.uuid4().hex[:6]}"
    spool = tmp_path / "spool"
    files = {name: tmp_path / name for name in ("results1", "progress1", "results2", "progress2", "stderr")}
    common = ["--broker", c.url, "--spool", str(spool), "--stream", stream, "--count", str(n), "--task",
              "contract.counted_echo"]  # fmt: skip
    first = run_producer([*common, "--results", str(files["results1"]), "--progress", str(files["progress1"])],
                         files["stderr"])  # fmt: skip
    try:
        wait_for(lambda: len(lines(files["progress1"])) == n, 60, "every chunk written")
        admin = connect(c.url)
        wait_for(lambda: queued_chunks(admin) == n, 30, "every chunk in Redis")  # published, no worker to run them
    finally:
        first.kill()  # SIGKILL: its chunks are in its spool and in Redis
    assert first.wait(10) == -signal.SIGKILL
    first.stdout.close()
    c.workers.append(Worker(c.url, name="late", include=("tests.support.tasks",)).start())
    second = run_producer(
        [*common, "--results", str(files["results2"]), "--progress", str(files["progress2"]), "--first", str(n)],
        files["stderr"],
    )
    try:
        out, _ = second.communicate(timeout=120)
    finally:
        second.kill()
    assert second.returncode == 0, files["stderr"].read_text()[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    runs = {int(k): int(v) for k, v in admin.hgetall(f"ocycle:test:runs:{stream}").items()}
    admin.close()
    twice = sorted(seq for seq, k in runs.items() if k > 1)
    assert report["adopted"] == n and report["stats"]["done"] == n and report["stats"]["failed"] == 0
    assert sorted(seq for seq, _ in results_of(files["results2"])) == list(range(n))  # on_done once each
    assert sorted(runs) == list(range(n))
    assert len(twice) <= n * 0.05, f"{len(twice)} of {n} adopted chunks ran twice: {twice[:20]}"
    assert report["counts"]["resent"] <= n * 0.05, report["counts"]
    assert report["stats"]["latency_p50"] > 0.0  # counted from the first producer's emit
    print(
        f"\n[producer restart] adopted {report['adopted']} of {n}; sent again {report['counts']['resent']};"
        f" ran twice {len(twice)}; stats={report['stats']}"
    )
