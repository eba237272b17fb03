"""The compose file's services as local processes: redis-server and groups of ``celery worker`` processes.

What ``docker-compose.yml`` runs, without a container engine: the integration tests, the fault tests and
the benchmarks use it. Like compose's ``restart: unless-stopped``, a worker that exits without being
stopped (a crash, an OOM kill) is started again, and the restart is logged.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..procs.redis_server import RedisServer
from ..procs.workers import Worker

log = logging.getLogger("ocycle_dist.testing")

# The worker services of docker-compose.yml and the queues each consumes (tests/unit/test_compose.py checks
# that the compose file says the same): light, latency-sensitive consumers apart from the heavy model.
COMPOSE_GROUPS = {"worker": "spl,archive,celery", "worker-model": "model"}


class Topology:
    """redis-server plus worker processes, started and stopped together.

    Args:
        workers: worker processes of the default group (consuming ``queues``).
        concurrency: pool processes per worker.
        queues: the default group's queues (``-Q``), default the app's default queue.
        password: Redis ``requirepass``.
        env: environment of every worker.
        include: more task modules every worker imports.
        restart: start again a worker that exits without ``stop()`` (checked every ``check_every`` s).
        groups: more workers by compose service name (:data:`COMPOSE_GROUPS`), e.g. ``{"worker": 2,
            "worker-model": 1}``: each consumes its service's queues, as ``docker compose up --scale`` would.
    """

    def __init__(
        self,
        workers: int = 1,
        *,
        concurrency: int = 1,
        queues: str | None = None,
        password: str | None = None,
        env: dict[str, str] | None = None,
        include: tuple[str, ...] = (),
        restart: bool = True,
        check_every: float = 0.5,
        redis_args: list[str] | None = None,
        groups: dict[str, int] | None = None,
    ) -> None:
        self.redis = RedisServer(password=password, args=redis_args)
        self.env, self.include, self.restart, self.check_every = dict(env or {}), include, restart, check_every
        self.workers: list[Worker] = []
        self.restarts: list[str] = []  # "<name> (exit code N)" for every worker restarted
        self._stopped: set[str] = set()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        for _ in range(workers):
            self.add_worker(concurrency=concurrency, queues=queues, start=False)
        for service, count in (groups or {}).items():
            for _ in range(count):
                self.add_worker(concurrency=concurrency, queues=COMPOSE_GROUPS[service], start=False)

    @property
    def url(self) -> str:
        return self.redis.url

    def add_worker(
        self, *, concurrency: int = 1, queues: str | None = None, start: bool = True, **options: Any
    ) -> Worker:
        """One more worker process (started at once unless ``start=False``)."""
        worker = Worker(
            self.redis.url,
            name=f"w{len(self.workers)}",
            concurrency=concurrency,
            queues=queues,
            env=self.env,
            include=self.include,
            **options,
        )
        with self._lock:
            self.workers.append(worker)
        if start:
            worker.start()
        return worker

    def stop_worker(self, worker: Worker) -> None:
        """Stop a worker for good (it is not restarted)."""
        with self._lock:
            self._stopped.add(worker.name)
        worker.stop()

    def _supervise(self) -> None:
        while not self._done.wait(self.check_every):
            with self._lock:
                dead = [w for w in self.workers if w.proc is not None and not w.alive() and w.name not in self._stopped]
            for worker in dead:
                if self._done.is_set():
                    return
                note = f"{worker.name} (exit code {worker.proc.returncode if worker.proc else None})"
                log.warning("worker %s exited; starting it again", note)
                self.restarts.append(note)
                try:
                    worker.start(wait=False)
                except Exception:  # keep supervising the others
                    log.exception("could not restart worker %s", worker.name)

    def __enter__(self) -> Topology:
        self.redis.start()
        try:
            for w in self.workers:
                w.start()
        except BaseException:
            self.__exit__()
            raise
        if self.restart:
            self._supervisor = threading.Thread(target=self._supervise, name="ocycle-supervisor", daemon=True)
            self._supervisor.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for w in self.workers:
            w.stop()
        self.redis.__exit__()
