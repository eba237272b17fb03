"""Processes of ``bench/bench_celery.py``: its own redis-server (restartable on the same port) and workers.

Every process is started in its own session (process group); ``Topology.stop()`` kills each group (SIGTERM,
then SIGKILL), so Celery's pool children go with their parent, on success, error and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A contender failed (time-out, error, lost reply): the numbers would be meaningless."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)  # what spawn() added to the environment

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
    redis_proc: Proc | None = None
    redis_starts: int = 0

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        extra = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}
        proc = Proc(name, popen, log, extra)
        self.procs.append(proc)
        return proc

    def _spawn_redis(self) -> Proc:
        self.redis_starts += 1
        return self.spawn(f"redis-server-{self.redis_starts}", [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.tmp), "--loglevel", "warning",
        ])  # fmt: skip

    def _wait_redis(self, proc: Proc, timeout: float = 15.0) -> redis.Redis | None:
        client = redis.Redis(host="127.0.0.1", port=self.port, db=0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.popen.poll() is None:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return client
            time.sleep(0.02)
        return None

    def start_redis(self) -> redis.Redis:
        """redis-server on a free loopback port (no persistence); returns a client of db 0."""
        for _ in range(5):  # the free port may be taken between the probe and the bind
            self.port = free_port()
            proc = self._spawn_redis()
            client = self._wait_redis(proc)
            if client is not None:
                self.redis_proc = proc
                return client
            self.kill(proc)
        raise BenchError(f"redis-server did not start:\n{proc.tail()}")

    def stop_redis(self) -> None:
        """Stop redis-server (SIGKILL: a crash, nothing saved; clients see their connections drop)."""
        if self.redis_proc is not None:
            self.kill(self.redis_proc, graceful=False)
            self.procs.remove(self.redis_proc)
            self.redis_proc = None

    def restart_redis(self) -> None:
        """A new, empty redis-server on the same port."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the port can take a moment to be free again
            proc = self._spawn_redis()
            if self._wait_redis(proc, 5.0) is not None:
                self.redis_proc = proc
                return
            self.kill(proc)
            self.procs.remove(proc)
            time.sleep(0.2)
        raise BenchError(f"redis-server did not restart on port {self.port}")

    def start_worker(
        self, name: str, app: str, env: dict[str, str], *, queues: str | None = None, concurrency: int = 1
    ) -> Proc:
        """``celery -A app worker --pool prefork -c concurrency`` (``-Q queues`` when given)."""
        argv = [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", "prefork", "-c", str(concurrency),
                "-n", f"{name}@%h", "--loglevel", "WARNING", "--without-mingle", "--without-gossip"]  # fmt: skip
        if queues:
            argv += ["-Q", queues]
        return self.spawn(name, argv, {**os.environ, **env, "PYTHONPATH": str(ROOT)})

    def revive(self, procs: list[Proc], app: Any) -> list[str]:
        """Start again, in place, the workers of ``procs`` that have exited; returns their names and exit codes."""
        revived = []
        for i, proc in enumerate(procs):
            if proc.popen.poll() is None:
                continue
            revived.append(f"{proc.name} (exit code {proc.popen.returncode})")
            if proc in self.procs:
                self.procs.remove(proc)
            args = proc.popen.args
            argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else [str(args)]
            procs[i] = self.spawn(proc.name, argv, {**os.environ, "PYTHONPATH": str(ROOT), **proc.env})
        if revived:
            wait_ready(procs, app)
        return revived

    def kill(self, proc: Proc, *, graceful: bool = True) -> None:
        if proc.popen.poll() is not None:
            return
        steps = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)) if graceful else ((signal.SIGKILL, 5.0),)
        for sig, grace in steps:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, sig)
            try:
                proc.popen.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # pool children left behind in the group
            os.killpg(proc.popen.pid, signal.SIGKILL)

    def stop(self, procs: list[Proc] | None = None) -> None:
        """Kill ``procs`` (default: all, workers first, redis-server last)."""
        chosen = list(self.procs) if procs is None else procs
        chosen.sort(key=lambda p: p.name.startswith("redis-server"))  # stable: workers first
        for proc in chosen:
            self.kill(proc)
            if proc in self.procs:
                self.procs.remove(proc)
        if procs is None:
            self.redis_proc = None


def wait_ready(procs: list[Proc], app: Any, timeout: float = 120.0) -> float:
    """Poll ``app.control.ping`` until every worker of ``procs`` answers; returns the seconds it took."""
    t = time.monotonic()
    want = {p.name for p in procs}
    seen: set[str] = set()
    while time.monotonic() - t < timeout:
        for p in procs:
            p.check()
        conn = app.connection_for_write()  # not the app's pool: redis-server may have been restarted
        try:
            replies = app.control.ping(timeout=0.5, connection=conn) or []
        except (OSError, *conn.connection_errors):
            time.sleep(0.1)
            continue
        finally:
            conn.release()
        for reply in replies:
            seen.update(name.split("@", 1)[0] for name in reply)
        if want <= seen:
            return time.monotonic() - t
    missing = sorted(want - seen)
    raise BenchError(f"workers {missing} did not answer a ping in {timeout:.0f} s:\n" + "\n".join(
        p.tail(10) for p in procs if p.name in missing))  # fmt: skip


def scan_logs(procs: list[Proc], ignore: tuple[str, ...] = ()) -> list[str]:
    """Error lines of the processes' logs (minus lines containing one of ``ignore``)."""
    notes = []
    for p in procs:
        text = p.log.read_text(errors="replace") if p.log.exists() else ""
        bad = [
            line
            for line in text.splitlines()
            if ("Traceback" in line or " ERROR" in line or "CRITICAL" in line) and not any(i in line for i in ignore)
        ]
        if bad:
            notes.append(f"{p.name}: {len(bad)} error lines in its log, first: {bad[0][:200]}")
    return notes


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
