"""A real ``celery -A <app> worker`` child process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ..remote import wire
from .processes import Proc


def ping(
    broker: str, names: list[str], timeout: float = 1.0, *, serializer: str = "json", master_name: str | None = None
) -> set[str]:
    """The node names among ``names`` (``name@host``; or plain ``name``) answering a Celery ping on ``broker``.

    ``serializer`` is the one the workers' app accepts: a worker drops a control message in another format
    (``json`` for stock Celery apps; ``ocycle`` for ocycle_dist's, :data:`ocycle_dist.remote.wire.SERIALIZER`).
    ``master_name``: the Sentinel master's, for a ``sentinel://`` broker (default ``OCYCLE_SENTINEL_MASTER``).
    """
    from celery import Celery

    from ..remote.redis_client import is_sentinel, kombu_url
    from ..remote.settings import Settings

    app = Celery("ocycle-ping", broker=kombu_url(broker), set_as_current=False)
    if serializer == wire.SERIALIZER:
        wire.register()
    app.conf.update(
        broker_connection_retry_on_startup=False, task_serializer=serializer, accept_content=[serializer, "json"]
    )
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
        cwd: its working directory, first on its ``PYTHONPATH`` (default: this process's).
        serializer: the serializer its app accepts, for pings (default: ocycle_dist's for the ``workers``
            app, ``json`` for any other).
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
        cwd: Path | str | None = None,
        serializer: str | None = None,
    ) -> None:
        self.broker, self.name, self.app, self.queues = broker, name, app, queues
        self.concurrency, self.include, self.loglevel = concurrency, include, loglevel
        self.cwd = Path(cwd) if cwd is not None else None
        self.serializer = serializer or (wire.SERIALIZER if app == "workers" else "json")
        self.env = {**os.environ, "OCYCLE_BROKER_URL": broker, **(env or {})}
        first = str(self.cwd or Path.cwd())
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [first, self.env.get("PYTHONPATH", "")]))
        self.log = log or Path(tempfile.mkstemp(prefix=f"ocycle-{name}-", suffix=".log")[1])
        self.extra = list(extra or ())
        self.proc: Proc | None = None
        self.starts = 0
        self.log_from = 0  # where the output of the latest start begins in the log

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
        self.log_from = self.log.stat().st_size if self.log.exists() else 0
        self.proc = Proc(self.name, self.argv(), self.log, env=self.env, cwd=self.cwd).start()
        if wait:
            self.wait_ready(timeout, log_from=self.log_from)
        return self

    @property
    def logs_ready(self) -> bool:
        """Whether its log says when it is ready (a "ready." line at INFO or DEBUG); else ask by ping."""
        return self.loglevel.upper() in ("INFO", "DEBUG")

    def said_ready(self, log_from: int = 0) -> bool:
        """Whether its log, from byte ``log_from`` on, has the "ready." line (only written at INFO or DEBUG)."""
        with self.log.open("rb") as f:
            f.seek(log_from)
            return b" ready." in f.read()

    def wait_ready(self, timeout: float = 60.0, *, log_from: int = 0) -> None:
        """Wait until the worker consumes (its "ready." log line at INFO, else a ping answered)."""
        assert self.proc is not None
        if self.logs_ready:

            def ready() -> bool:
                return self.said_ready(log_from)
        else:

            def ready() -> bool:
                master_name = self.env.get("OCYCLE_SENTINEL_MASTER")
                return bool(
                    ping(self.broker, [self.name], timeout=0.5, serializer=self.serializer, master_name=master_name)
                )

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


def wait_all_ready(workers: Sequence[Worker], timeout: float = 60.0) -> float:
    """Wait until every one of ``workers`` (started with ``wait=False``) consumes; returns the seconds it took.

    :meth:`Worker.wait_ready` for many at once, so that they start in parallel: the log of those at INFO is
    read, the others are pinged (one ping per broker and serializer a round). Raises ``RuntimeError`` when
    one of them exits, ``TimeoutError`` after ``timeout`` seconds.
    """
    t = time.monotonic()
    pending = list(workers)
    while pending:
        for w in pending:
            if not w.alive():
                code = w.proc.returncode if w.proc is not None else None
                raise RuntimeError(f"worker {w.name} exited with code {code}:\n{w.tail()}")
        ready = {(w.broker, w.name) for w in pending if w.logs_ready and w.said_ready(w.log_from)}
        quiet = [w for w in pending if not w.logs_ready]
        for broker, serializer in {(w.broker, w.serializer) for w in quiet}:
            names = [w.name for w in quiet if (w.broker, w.serializer) == (broker, serializer)]
            ready |= {(broker, name) for name in ping(broker, names, timeout=0.5, serializer=serializer)}
        pending = [w for w in pending if (w.broker, w.name) not in ready]
        if pending and time.monotonic() - t > timeout:
            tails = "\n".join(f"{w.name}:\n{w.tail(10)}" for w in pending)
            raise TimeoutError(f"workers {[w.name for w in pending]} not ready after {timeout} s:\n{tails}")
        if pending:
            time.sleep(0.05)
    return time.monotonic() - t
