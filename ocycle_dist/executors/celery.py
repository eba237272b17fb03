"""The Celery executor: each chunk becomes a Celery task on Redis; its Future resolves when the reply comes.

``submit()`` only queues the job and returns (``write()`` never waits on the network). One dispatcher
thread encodes queued jobs and publishes them in batches (``ocycle_dist.publisher``); one listener thread
pops the workers' replies (``ocycle_dist.listener``) and resolves the Futures: ``on_done`` and
``on_error`` then run in the producer process, without polling and without gevent.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent import futures
from concurrent.futures import Future
from typing import Any

from ..chunk import Chunk
from ..errors import ConfigError, EncodeError, RemoteTaskError
from ..publisher import Job, encode, publish
from ..redis_client import connect
from ..settings import Settings

log = logging.getLogger("ocycle_dist.celery")


def task_name(task: Any) -> str:
    """The registered name of a Celery task object, or the name itself."""
    name = task if isinstance(task, str) else getattr(task, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError("callback", task, "a Celery task or a task name (str)")
    return name


def resolve_settings(app: Any = None, broker: str | None = None, settings: Settings | None = None) -> Settings:
    """``settings`` if given; else the broker comes from ``app``, ``broker``, ``OCYCLE_BROKER_URL``, the default."""
    if settings is not None:
        return settings
    if app is not None:
        return Settings.from_env(broker_url=app.conf.broker_url, queue=app.conf.task_default_queue)
    if broker is not None and (not isinstance(broker, str) or "://" not in broker):
        raise ConfigError("broker", broker, "a URL such as redis://host:6379/0")
    return Settings.from_env(broker_url=broker)


class CeleryExecutor:
    """A ``concurrent.futures``-shaped executor running ``submit(task, chunk, t0, meta=...)`` on workers.

    Args:
        max_workers: accepted for the shape of the pools (publishing uses one thread).
        app: a Celery app to take the broker URL and queue from.
        broker: a Redis URL, when no ``app`` is given.
        settings: full settings (overrides ``app`` and ``broker``).
        batch: the most messages published in one round trip.
    """

    wants_meta = True

    def __init__(
        self,
        max_workers: int = 1,
        *,
        app: Any = None,
        broker: str | None = None,
        settings: Settings | None = None,
        batch: int = 200,
    ) -> None:
        del max_workers
        self.settings = resolve_settings(app, broker, settings)
        self._client = connect(self.settings.broker_url, socket_timeout=self.settings.socket_timeout)
        self._batch = batch
        self._queue: deque[Job] = deque()
        self._jobs: dict[tuple[Any, Any], tuple[Job, Future[Any]]] = {}  # by (stream, seq)
        self._lock = threading.Condition()
        self._closing = False
        self._wait_on_close = True
        self.duplicates = 0
        self.published = 0
        from ..listener import ReplyListener

        self._listener = ReplyListener(
            connect(self.settings.broker_url, socket_timeout=self.settings.socket_timeout), self._on_reply
        )
        self._dispatcher = threading.Thread(target=self._dispatch, name="ocycle-publisher", daemon=True)
        self._dispatcher.start()

    def submit(self, task: Any, value: Any, t0: float, *, meta: Chunk) -> Future[Any]:
        """Queue ``task(value, t0)`` for publishing; the Future resolves with the task's result."""
        name = task_name(task)
        if self._closing:
            raise RuntimeError("cannot submit to a shut-down CeleryExecutor")
        future: Future[Any] = Future()
        job = Job(name, value, t0, meta, reply=f"ocycle:reply:{meta.stream}")
        self._listener.listen(job.reply)
        with self._lock:
            self._jobs[(meta.stream, meta.seq)] = (job, future)
            self._queue.append(job)
            self._lock.notify()
        return future

    def _dispatch(self) -> None:
        import redis

        backoff, down = 0.05, False
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            encoded = []
            for job in batch:
                _, future = self._jobs[(job.meta.stream, job.meta.seq)]
                if not future.set_running_or_notify_cancel():  # dropped by the overload policy
                    self._forget(job)
                    continue
                try:
                    message, claimed = encode(job, self.settings)
                except EncodeError as exc:
                    self._forget(job)
                    future.set_exception(exc)
                    continue
                encoded.append((job, message, claimed))
            while encoded:
                try:
                    publish(self._client, encoded, self.settings)
                    self.published += len(encoded)
                    if down:
                        log.warning("Redis reachable again at %s; publishing", self.settings.broker_url)
                    backoff, down = 0.05, False
                    break
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    if not down:
                        log.warning("Redis unreachable at %s (%s); holding chunks", self.settings.broker_url, exc)
                    down = True
                    with self._lock:
                        if self._closing and not self._wait_on_close:
                            for job, _, _ in encoded:
                                self._fail(job, exc)
                            break
                        self._lock.wait(backoff)
                    backoff = min(backoff * 2, 2.0)

    def _forget(self, job: Job) -> tuple[Job, Future[Any]] | None:
        with self._lock:
            return self._jobs.pop((job.meta.stream, job.meta.seq), None)

    def _fail(self, job: Job, exc: BaseException) -> None:
        entry = self._forget(job)
        if entry is not None and not entry[1].done():
            entry[1].set_exception(exc)

    def _on_reply(self, record: dict[str, Any]) -> None:
        with self._lock:
            entry = self._jobs.pop((record.get("stream"), record.get("seq")), None)
        if entry is None:  # a redelivered task's second reply, or another producer's
            self.duplicates += 1
            return
        job, future = entry
        if job.claim:
            try:
                self._client.delete(job.claim)
            except Exception:  # it expires anyway
                log.debug("could not delete %s", job.claim)
        if record.get("ok"):
            future.set_result(record.get("result"))
        else:
            type_name, message = (record.get("error") or ["Error", "unknown"])[:2]
            future.set_exception(RemoteTaskError(str(type_name), str(message)))

    @property
    def pending(self) -> int:
        """Jobs queued, published or running, without a reply yet."""
        with self._lock:
            return len(self._jobs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop publishing and listening. With ``wait``, first wait for every reply."""
        with self._lock:
            self._closing, self._wait_on_close = True, wait
            if cancel_futures:
                for job in list(self._queue):
                    entry = self._jobs.get((job.meta.stream, job.meta.seq))
                    if entry is not None and entry[1].cancel():
                        self._jobs.pop((job.meta.stream, job.meta.seq), None)
                self._queue.clear()
            self._lock.notify_all()
        if wait:
            futures.wait([future for _, future in list(self._jobs.values())])
        self._dispatcher.join()
        self._listener.stop()
