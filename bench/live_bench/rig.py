"""One contender's run of ``bench/bench_live.py``: its workers up, then all away for a stretch, then back.

ocycle_dist's workers are the compose file's two services (``ocycle_dist.testing.COMPOSE_GROUPS``): ``worker``
consuming ``spl,archive,celery`` and ``worker-model`` consuming ``model``, run by a ``Topology`` (its
redis-server, db 0). Stock Celery's are two ``celery -A bench.refapp worker`` on its default queue (db 1),
every task on one shared queue, Celery's default. Each is ``--pool prefork -c 1``, log level WARNING.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from ocycle_dist.archive.keys import ensure_identity
from ocycle_dist.testing import Topology, Worker, wait_all_ready
from ocycle_dist.testing.topology import COMPOSE_GROUPS

ROOT = Path(__file__).resolve().parents[2]
OCYCLE_DB, STOCK_DB = 0, 1


class BenchError(RuntimeError):
    """A contender failed (time-out, error, lost result): the numbers would be meaningless."""


@dataclass(frozen=True)
class Plan:
    seconds: float  # audio streamed
    speed: float  # times real time
    outage: tuple[float, float]  # the workers are away from/to these fractions of the stream
    model_seconds: float  # the lagging model's time per chunk (0: workers.tasks.classify as it is)
    stop: str  # "term" (warm shutdown, as `docker compose stop`) or "kill" (SIGKILL)
    timeout: float  # close()/collection bound after the last write

    @property
    def wall(self) -> float:
        return self.seconds / self.speed


class Rig:
    """redis-server and both contenders' workers (started only for their contender's run); logs in ``tmp``."""

    def __init__(self, tmp: Path, plan: Plan) -> None:
        self.tmp, self.plan = tmp, plan
        _, self.recipient, _ = ensure_identity(tmp / "archive-identity.txt")  # both contenders encrypt to it
        env = {"OCYCLE_ARCHIVE_DIR": str(tmp / "archive-ocycle"), "BENCH_MODEL_SECONDS": str(plan.model_seconds),
               "OCYCLE_ARCHIVE_RECIPIENTS": self.recipient}  # fmt: skip
        self.topology = Topology(workers=0, env=env, include=("bench.live_bench.tasks",), restart=False)
        self.topology.redis.log = tmp / "redis-server.log"
        self.stock: list[Worker] = []

    def start(self) -> None:
        self.topology.__enter__()  # redis-server only: the workers are added below and started per run
        for service in COMPOSE_GROUPS:
            self.topology.add_worker(queues=COMPOSE_GROUPS[service], start=False, cwd=ROOT, loglevel="WARNING",
                                     log=self.tmp / f"{service}.log")  # fmt: skip
        env = {"BENCH_REF_URL": self.url("celery"), "BENCH_ARCHIVE_DIR": str(self.tmp / "archive-stock"),
               "BENCH_MODEL_SECONDS": str(self.plan.model_seconds),
               "BENCH_ARCHIVE_RECIPIENTS": self.recipient}  # fmt: skip
        self.stock = [Worker(self.url("celery"), name=f"stock{i}", app="bench.refapp", env=env, loglevel="WARNING",
                             include=("bench.live_bench.reftasks",), log=self.tmp / f"stock{i}.log", cwd=ROOT)
                      for i in range(2)]  # fmt: skip

    def url(self, contender: str) -> str:
        return self.topology.redis.url_for(OCYCLE_DB if contender == "ocycle" else STOCK_DB)

    def workers(self, contender: str) -> list[Worker]:
        return self.topology.workers if contender == "ocycle" else self.stock

    def stop(self) -> None:
        for w in self.stock:
            w.stop(timeout=10.0)
        self.topology.__exit__()


def start_workers(workers: list[Worker]) -> float:
    for w in workers:
        w.start(wait=False)
    try:
        return wait_all_ready(workers, 120.0)
    except (RuntimeError, TimeoutError) as exc:
        raise BenchError(str(exc)) from None


def stop_workers(workers: list[Worker], how: str, grace: float = 10.0) -> list[str]:
    """Stop them all at once: ``term``, a warm shutdown (SIGTERM to each main process, as ``docker compose stop``;
    ``Worker.stop()`` after ``grace`` seconds), or ``kill`` (SIGKILL to all). Returns the names of those still
    running after ``grace``: a pool child can wait up to 30 s on exit for its main process to read its last
    result (billiard's ``_ensure_messages_consumed``), which the main process no longer does once it is stopping."""
    forced: list[str] = []

    def one(w: Worker) -> None:
        if how == "kill":
            w.kill()
            w.wait_exit(10.0)
            return
        if w.pid is not None and w.alive():  # the main process only: the running task finishes (Worker.stop()
            with contextlib.suppress(ProcessLookupError):  # signals the whole group, pool children included)
                os.kill(w.pid, signal.SIGTERM)
            if w.wait_exit(grace) is None:
                forced.append(w.name)
        w.stop(timeout=5.0)  # whatever is left

    threads = [threading.Thread(target=one, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return forced


class Child:
    """The producer process and its line protocol (see ``producer.py``)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self.err = open(log, "wb")  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     text=True, start_new_session=True)  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"no '{kind}' from the producer in {timeout:.0f} s") from None
            word, _, rest = line.partition(" ")
            if word == kind:
                return dict(json.loads(rest))
            if word in ("error", ""):
                tail = self.log.read_text(errors="replace")[-3000:]
                raise BenchError(f"the producer failed: {rest.strip()}\n{tail}")

    def tell(self, msg: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(msg + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(5)
        self.err.close()


class RedisMemory:
    """Redis's ``used_memory``, sampled every 0.25 s on a thread."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.series: list[tuple[float, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.wait(0.25):
            with contextlib.suppress(redis.RedisError):
                self.series.append((time.time(), int(self.client.info("memory")["used_memory"])))

    def stop(self) -> list[tuple[float, int]]:
        self.done.set()
        self.thread.join()
        self.client.close()
        return self.series


def until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def run(rig: Rig, contender: str, model_task: str) -> dict[str, Any]:
    """Stream once with ``contender`` (``ocycle`` or ``celery``); the producer's record plus the parent's marks."""
    plan, workers = rig.plan, rig.workers(contender)
    ready_s = start_workers(workers)
    time.sleep(1.0)  # the pool children finish starting before anything is timed
    argv = [sys.executable, str(ROOT / "bench" / "live_bench" / "producer.py"), "--contender", contender,
            "--url", rig.url(contender), "--seconds", str(plan.seconds), "--speed", str(plan.speed),
            "--model-task", model_task, "--timeout", str(plan.timeout)]  # fmt: skip
    child = Child(argv, rig.tmp / f"producer-{contender}.log")
    memory = None
    marks: dict[str, float] = {}
    forced: list[str] = []
    try:
        ready = child.expect("ready", 60)
        memory = RedisMemory(rig.url(contender))
        child.tell("go")
        t_go = time.time()
        until(t_go + plan.wall * plan.outage[0])
        child.tell("phase absent")
        marks["stopping"] = time.time()
        forced = stop_workers(workers, plan.stop)
        marks["stopped"] = time.time()
        until(t_go + plan.wall * plan.outage[1])
        marks["starting"] = time.time()
        start_workers(workers)
        child.tell("phase back")
        marks["ready"] = time.time()
        child.expect("written", plan.wall + 120)
        result = child.expect("result", plan.timeout + 120)
        child.proc.wait(30)
    finally:
        child.close()
        redis_series = memory.stop() if memory is not None else []
        stop_workers(workers, "term")
    return {**result, "contender": contender, "ready": ready, "parent_marks": marks, "redis": redis_series,
            "workers_ready_s": ready_s, "forced": forced}  # fmt: skip
