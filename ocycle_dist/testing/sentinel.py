"""Redis Sentinel on loopback: a primary and a replica ``redis-server`` and three sentinels, for failover tests.

What ``docker-compose.ha.yml`` runs, as local processes. The sentinels are Debian's ``redis-sentinel`` (package
``redis-sentinel``), or ``redis-server --sentinel`` without it: the same binary.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from ..procs.ports import free_port
from ..procs.processes import Proc
from ..procs.redis_server import RedisServer


class SentinelCluster:
    """A primary and a replica (``requirepass`` and ``masterauth`` both) watched by ``sentinels`` sentinels.

    Args:
        password: the password of the primary and the replica (the sentinels themselves have none).
        master_name: the name the sentinels monitor the primary under.
        sentinels: how many sentinels; a majority of them is the quorum.
        down_after: seconds without an answer before a sentinel holds the master down
            (``down-after-milliseconds``; Redis's example configuration says 30 s).
        failover_timeout: seconds a failover may take before another one is tried (``failover-timeout``).
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        master_name: str = "mymaster",
        sentinels: int = 3,
        down_after: float = 1.0,
        failover_timeout: float = 10.0,
    ) -> None:
        self.password, self.master_name = password, master_name
        self.down_after, self.failover_timeout = down_after, failover_timeout
        auth = ["--masterauth", password] if password else []
        self.primary = RedisServer(password=password, args=auth)
        self.replica = RedisServer(password=password, args=[*auth, "--replicaof", "127.0.0.1", str(self.primary.port)])
        self.servers = [self.primary, self.replica]
        self.ports = [free_port() for _ in range(sentinels)]
        self.dir = Path(tempfile.mkdtemp(prefix="ocycle-sentinel-"))
        self.sentinels: list[Proc] = []

    @property
    def url(self) -> str:
        """kombu's form: ``sentinel://:password@127.0.0.1:<port>/0;sentinel://:password@127.0.0.1:<port>;...``."""
        auth = f":{self.password}@" if self.password else ""
        first, *rest = self.ports
        return ";".join([f"sentinel://{auth}127.0.0.1:{first}/0", *(f"sentinel://{auth}127.0.0.1:{p}" for p in rest)])

    def _argv(self, conf: Path) -> list[str]:
        exe = shutil.which("redis-sentinel")
        if exe is not None:
            return [exe, str(conf)]
        server = shutil.which("redis-server")
        if server is None:
            raise FileNotFoundError("redis-sentinel is not installed (Debian: apt-get install redis-sentinel)")
        return [server, str(conf), "--sentinel"]

    def _config(self, port: int) -> str:
        name = self.master_name
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"sentinel monitor {name} 127.0.0.1 {self.primary.port} {len(self.ports) // 2 + 1}",
            f"sentinel down-after-milliseconds {name} {int(self.down_after * 1000)}",
            f"sentinel failover-timeout {name} {int(self.failover_timeout * 1000)}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30.0) -> SentinelCluster:
        """Start the servers and the sentinels; return once the replica is in sync and every sentinel knows
        the master, the replica and the other sentinels (so that a failover can be agreed)."""
        deadline = time.monotonic() + timeout
        self.primary.start()
        self.replica.start()
        assert self.replica.proc is not None
        self.replica.proc.wait_until(
            lambda: self._info(self.replica, "replication").get("master_link_status") == "up",
            max(1.0, deadline - time.monotonic()),
            "the replica in sync",
        )
        for i, port in enumerate(self.ports):
            conf = self.dir / f"sentinel-{i}.conf"  # a sentinel rewrites its own configuration file
            conf.write_text(self._config(port))
            self.sentinels.append(Proc(f"sentinel-{i}", self._argv(conf), self.dir / f"sentinel-{i}.log").start())
        for proc, port in zip(self.sentinels, self.ports, strict=True):
            proc.wait_until(partial(self._sentinel_ready, port), max(1.0, deadline - time.monotonic()), proc.name)
        return self

    def _sentinel(self, port: int) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0)

    def _ask(self, port: int, *command: str) -> Any:
        client = self._sentinel(port)
        try:
            return client.execute_command("SENTINEL", *command)
        except Exception:
            return None
        finally:
            client.close()

    def _sentinel_ready(self, port: int) -> bool:
        name = self.master_name
        others, replicas = self._ask(port, "sentinels", name), self._ask(port, "replicas", name)
        return (
            self.named_port(port) == self.primary.port
            and others is not None
            and len(others) == len(self.ports) - 1
            and bool(replicas)
        )

    def named_port(self, port: int) -> int | None:
        """The port of the master the sentinel on ``port`` names now (None if it does not answer)."""
        address = self._ask(port, "get-master-addr-by-name", self.master_name)
        return int(address[1]) if address else None

    def _info(self, server: RedisServer, section: str) -> dict[str, Any]:
        from ..remote.redis_client import connect

        client = connect(server.url, socket_timeout=1.0)
        try:
            return dict(client.info(section))
        except Exception:
            return {}
        finally:
            client.close()

    def master(self) -> RedisServer:
        """The server the sentinels name as master now (the first sentinel that answers)."""
        for port in self.ports:
            named = self.named_port(port)
            if named is not None:
                return next(s for s in self.servers if s.port == named)
        raise RuntimeError("no sentinel answers")

    def kill_master(self) -> RedisServer:
        """SIGKILL the master (a crash); the sentinels will promote the replica. Returns the killed server."""
        master = self.master()
        master.kill()
        return master

    def failed_over(self, old: RedisServer) -> RedisServer | None:
        """The new master once every sentinel names a server other than ``old`` and it acts as master."""
        named = {self.named_port(port) for port in self.ports}
        if len(named) != 1 or None in named or old.port in named:
            return None
        new = next(s for s in self.servers if s.port in named)
        return new if self._info(new, "replication").get("role") == "master" else None

    def __enter__(self) -> SentinelCluster:
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: Any) -> None:
        for proc in self.sentinels:
            proc.stop(timeout=5.0)
        for server in self.servers:
            server.__exit__()
        shutil.rmtree(self.dir, ignore_errors=True)
