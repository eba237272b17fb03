"""The compose topology as local processes: redis-server, N ``celery -A workers worker``, a producer.

Used by the integration tests and by ``ocycle-dist up``; the same services as ``docker-compose.yml``,
without a container engine.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port free on the loopback interface now, below Linux's ephemeral range (32768-60999).

    An ephemeral port could meanwhile become some client's local port, and a connection to it from that
    client would then connect to itself (TCP simultaneous open) instead of being refused.
    """
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free port in 20000-32000")


def _wait(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout} s")
        time.sleep(0.05)


class RedisServer:
    """A ``redis-server`` child on a free loopback port (no persistence unless ``appendonly``)."""

    def __init__(self, *, password: str | None = None, appendonly: bool = False, port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.exe = exe
        self.port = port or free_port()
        self.password = password
        self.appendonly = appendonly
        self.dir = tempfile.mkdtemp(prefix="ocycle-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from .embedded import reachable

        _wait(lambda: reachable(self.url), 10.0, "redis-server", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Worker:
    """One ``celery -A workers worker`` process (prefork pool of ``concurrency`` children)."""

    def __init__(
        self,
        broker: str,
        *,
        name: str,
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        include: tuple[str, ...] = (),
    ) -> None:
        self.broker, self.name, self.concurrency, self.include = broker, name, concurrency, include
        self.env = {**os.environ, "OCYCLE_BROKER_URL": broker, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), self.env.get("PYTHONPATH", "")]))
        self.log = Path(tempfile.mkstemp(prefix=f"ocycle-{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "--pool",
            "prefork",
            "-c",
            str(self.concurrency),
            "-n",
            f"{self.name}@%h",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        if self.include:
            args += ["--include", ",".join(self.include)]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait(lambda: b" ready." in self.log.read_bytes(), 60.0, f"worker {self.name}", self.proc)
        return self

    def children(self) -> list[int]:
        """PIDs of the pool's child processes."""
        if self.proc is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole worker (main process and children)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


class Topology:
    """redis-server plus ``workers`` worker processes, started and stopped together."""

    def __init__(
        self,
        workers: int = 1,
        *,
        concurrency: int = 1,
        password: str | None = None,
        env: dict[str, str] | None = None,
        include: tuple[str, ...] = (),
    ) -> None:
        self.redis = RedisServer(password=password)
        self.workers = [
            Worker(self.redis.url, name=f"w{i}", concurrency=concurrency, env=env, include=include)
            for i in range(workers)
        ]

    @property
    def url(self) -> str:
        return self.redis.url

    def __enter__(self) -> Topology:
        self.redis.start()
        try:
            for w in self.workers:
                w.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for w in self.workers:
            w.stop()
        self.redis.__exit__()
