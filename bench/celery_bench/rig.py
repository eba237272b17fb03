"""The bench's processes, on ``ocycle_dist.testing``: one redis-server, ocycle_dist's and stock Celery's workers.

Eight workers, each ``celery worker --pool prefork -c 1`` at log level WARNING: ``w0``-``w3`` of ocycle_dist
(``-A workers``, db 0) and ``r0``-``r3`` of stock Celery (``-A bench.refapp``, db 1). Queues: ``w0``/``r0``
serve ``celery``, ``q1``, ``q2``, ``q4``; ``w1``/``r1`` ``q2`` and ``q4``; the others ``q4`` only: sending to
``qN`` uses N worker processes. Also the bench-only process helpers (CPU of process groups, log scans).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ocycle_dist.archive.keys import ensure_identity
from ocycle_dist.testing import RedisServer, Worker, wait_all_ready

from .common import OCYCLE_DB, REF_DB, WORKER_QUEUES, BenchError

ROOT = Path(__file__).resolve().parents[2]


class Rig:
    """redis-server (restartable empty on its port) and the workers; logs in ``tmp``; :meth:`stop` ends all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = RedisServer(log=tmp / "redis-server.log")
        self.w: list[Worker] = []  # ocycle_dist's
        self.rw: list[Worker] = []  # stock Celery's
        self.stopped: set[str] = set()  # workers stopped on purpose
        self.ref: Any = None  # the module bench.refapp, once its URL is set

    def url(self, db: int) -> str:
        return self.redis.url_for(db)

    @property
    def workers(self) -> list[Worker]:
        return self.w + self.rw

    def start_workers(self) -> float:
        """Start the 8 workers together; returns the seconds until every one answered a ping."""
        os.environ["BENCH_REF_URL"] = self.url(REF_DB)
        self.ref = importlib.import_module("bench.refapp")
        _, public, _ = ensure_identity(self.tmp / "archive-identity.txt")
        ocycle_env = {"OCYCLE_ARCHIVE_DIR": str(self.tmp / "archive"), "OCYCLE_ARCHIVE_RECIPIENTS": public}
        ref_env = {"BENCH_REF_URL": self.url(REF_DB)}
        for prefix, app, db, env, group in (("w", "workers", OCYCLE_DB, ocycle_env, self.w),
                                            ("r", "bench.refapp", REF_DB, ref_env, self.rw)):  # fmt: skip
            for i, q in enumerate(WORKER_QUEUES):
                name = f"{prefix}{i}"
                include = ("bench.tasks",) if app == "workers" else ()
                group.append(Worker(self.url(db), name=name, app=app, queues=q, env=env, loglevel="WARNING",
                                    include=include, log=self.tmp / f"{name}.log", cwd=ROOT))  # fmt: skip
        for worker in self.workers:
            worker.start(wait=False)
        return self.wait_ready(self.workers)

    def wait_ready(self, workers: Sequence[Worker], timeout: float = 120.0) -> float:
        try:
            return wait_all_ready(workers, timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise BenchError(str(exc)) from None

    def revive(self, workers: list[Worker]) -> list[str]:
        """Start again the workers that have exited, as the compose file's restart policy would; their names and
        exit codes."""
        revived = []
        for w in workers:
            if w.proc is not None and not w.alive() and w.name not in self.stopped:
                revived.append(f"{w.name} (exit code {w.proc.returncode})")
                w.start(wait=False)
        if revived:
            self.wait_ready(workers)
        return revived

    def stop_reference(self) -> None:
        """Stop stock Celery's workers for good (once its sections are done: they would only reconnect)."""
        for w in self.rw:
            if w.name not in self.stopped:
                self.stopped.add(w.name)
                w.stop(timeout=10.0)

    def check(self, workers: Sequence[Worker] | None = None) -> None:
        """Raise :class:`BenchError` if redis-server or a worker (not stopped on purpose) has exited."""
        if not self.redis.alive():
            raise BenchError(f"redis-server is not running:\n{self.redis.proc.tail() if self.redis.proc else ''}")
        for w in self.workers if workers is None else workers:
            if w.name not in self.stopped and not w.alive():
                raise BenchError(f"{w.name} exited with {w.proc.returncode if w.proc else None}:\n{w.tail()}")

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL), then redis-server."""
        for w in self.workers:
            self.stopped.add(w.name)
            w.stop(timeout=10.0)
        self.redis.__exit__()


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


def group_cpu(pgids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the live processes of these process groups."""
    tick = os.sysconf("SC_CLK_TCK")
    want, total = set(pgids), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in want:  # pgrp; fields[11], [12]: utime, stime
            total += int(fields[11]) + int(fields[12])
    return total / tick


def scan_logs(workers: list[Worker], ignore: tuple[str, ...] = ()) -> list[str]:
    """Error lines of the workers' logs (minus lines containing one of ``ignore``)."""
    notes = []
    for p in workers:
        text = p.log.read_text(errors="replace") if p.log.exists() else ""
        bad = [
            line
            for line in text.splitlines()
            if ("Traceback" in line or " ERROR" in line or "CRITICAL" in line) and not any(i in line for i in ignore)
        ]
        if bad:
            notes.append(f"{p.name}: {len(bad)} error lines in its log, first: {bad[0][:200]}")
    return notes


LOG_EVENTS = {  # what the workers' logs say, by kind: sections 3b and 6 kill redis-server on purpose
    "exited: Unrecoverable error (kombu/celery, on the lost connection)": "Unrecoverable error",
    "connection to broker lost": "Connection to broker lost",
    "running task terminated (late ack impossible after the loss)": "cannot be acknowledged after a connection loss",
    "could not ack (connection lost)": "Couldn't ack",
    "claimed chunk no longer in Redis (a duplicate run after the first reply)": "is no longer in Redis",
}


def worker_log_summary(workers: list[Worker]) -> None:
    """Counts of the notable lines of the workers' logs; anything else that looks like an error is quoted."""
    counts: dict[str, int] = {}
    other: list[str] = []
    for p in workers:
        text = p.log.read_text(errors="replace") if p.log.exists() else ""
        for line in text.splitlines():
            kind = next((k for k, needle in LOG_EVENTS.items() if needle in line), None)
            if kind is not None:
                counts[kind] = counts.get(kind, 0) + 1
            elif (" ERROR/" in line or "CRITICAL/" in line) and "consumer: Cannot connect" not in line:
                other.append(f"{p.name}: {line[:200]}")
    if counts:
        print("- workers' logs: " + "; ".join(f"{k}: {v}" for k, v in counts.items()))
    for line in other[:5]:
        print(f"- WARNING, in a worker's log: {line}")
    if len(other) > 5:
        print(f"- ... and {len(other) - 5} more error lines")
