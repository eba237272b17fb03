"""A real ``celery -A <app> worker`` child process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .processes import Proc


def ping(broker: str, names: list[str], timeout: float = 1.0, *, master_name: str | None = None) -> set[str]:
    """The node names among ``names`` (``name@host``; or plain ``name``) answering a Celery ping on ``broker``.

    ``master_name``: the Sentinel master's, for a ``sentinel://`` broker (default ``OCYCLE_SENTINEL_MASTER``).
    """
    from celery import Celery

    from ..remote.redis_client import is_sentinel
    from ..remote.settings import Settings

    app = Celery("ocycle-ping", broker=broker, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = False
    if is_sentinel(broker):
        app.conf.broker_transport_options = {"master_name": master_name or Settings.from_env().sentinel_master}
    try:
        with app.connection_for_write() as conn:
            replies = app.control.ping(timeout=timeout, connection=conn) or []
    except Exception:  # the broker is not there (yet)
        return set()
    finally:
        app.close()
    seen = {node.split("@", 1)[0] for reply in replies for node in reply}
    return {n for n in names if n.split("@", 1)[0] in seen}


class Worker:
    """One ``celery -A <app> worker --pool prefork -c <concurrency>`` process.

    Args:
        broker: the Redis URL (given as ``OCYCLE_BROKER_URL``; the ``workers`` app reads it).
        name: the node name (``<name>@<host>``).
        app: the Celery app (``-A``).
        queues: the queues it consumes (``-Q``), default the app's default queue.
        concurrency: pool processes.
        env: more environment variables.
        include: more task modules to import (``--include``).
        loglevel: ``INFO`` (readiness is read from the log) or quieter (readiness by ping).
        log: the log file (default: a new temporary file).
        extra: more ``celery worker`` arguments.
    """

    def __init__(
        self,
        broker: str,
        *,
        name: str,
        app: str = "workers",
        queues: str | None = None,
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        include: tuple[str, ...] = (),
        loglevel: str = "INFO",
        log: Path | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.broker, self.name, self.app, self.queues = broker, name, app, queues
        self.concurrency, self.include, self.loglevel = concurrency, include, loglevel
        self.env = {**os.environ, "OCYCLE_BROKER_URL": broker, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), self.env.get("PYTHONPATH", "")]))
        self.log = log or Path(tempfile.mkstemp(prefix=f"ocycle-{name}-", suffix=".log")[1])
        self.extra = list(extra or ())
        self.proc: Proc | None = None
        self.starts = 0

    def argv(self) -> list[str]:
        args = [sys.executable, "-m", "celery", "-A", self.app, "worker", "--pool", "prefork"]
        args += ["-c", str(self.concurrency), "-n", f"{self.name}@%h", "--loglevel", self.loglevel]
        args += ["--without-mingle", "--without-gossip", *self.extra]
        if self.queues:
            args += ["-Q", self.queues]
        if self.include:
            args += ["--include", ",".join(self.include)]
        return args

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> Worker:
        """Start the process; with ``wait``, return once it consumes."""
        self.starts += 1
        size = self.log.stat().st_size if self.log.exists() else 0
        self.proc = Proc(self.name, self.argv(), self.log, env=self.env).start()
        if wait:
            self.wait_ready(timeout, log_from=size)
        return self

    def wait_ready(self, timeout: float = 60.0, *, log_from: int = 0) -> None:
        """Wait until the worker consumes (its "ready." log line at INFO, else a ping answered)."""
        assert self.proc is not None
        if self.loglevel.upper() in ("INFO", "DEBUG"):

            def ready() -> bool:
                with self.log.open("rb") as f:
                    f.seek(log_from)
                    return b" ready." in f.read()
        else:

            def ready() -> bool:
                master_name = self.env.get("OCYCLE_SENTINEL_MASTER")
                return bool(ping(self.broker, [self.name], timeout=0.5, master_name=master_name))

        self.proc.wait_until(ready, timeout, f"worker {self.name}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def children(self) -> list[int]:
        """PIDs of the pool's child processes."""
        if self.proc is None or self.proc.pid is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill(self, sig: int = 9) -> None:
        """Send ``sig`` (SIGKILL by default) to the whole worker: main process and pool."""
        if self.proc is not None and self.proc.alive():
            self.proc.signal(sig)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL after ``timeout``."""
        if self.proc is not None:
            self.proc.stop(timeout=timeout)

    def tail(self, lines: int = 30) -> str:
        return self.proc.tail(lines) if self.proc is not None else "(not started)"

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the process to exit; its return code, or None."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return None if self.proc is None else self.proc.returncode

    def __repr__(self) -> str:
        return f"<Worker {self.name} -A {self.app} -Q {self.queues or '(default)'} -c {self.concurrency}>"
