"""The Celery executor: each chunk becomes a Celery task on Redis; its Future resolves when the reply comes.

``submit()`` encodes the chunk, keeps it in the spool (memory, or SQLite on disk) and returns: ``write()``
never waits on the network. One dispatcher thread publishes what is pending in batches
(:mod:`.publisher`) and sends a chunk again when its result has not come back after
``resend_after`` seconds (at-least-once); one listener thread pops the workers' replies
(:mod:`.listener`) and resolves the Futures, each once: a second reply for a chunk is counted and
ignored. ``on_done``/``on_error`` then run in the producer process, without polling and without gevent.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from concurrent import futures
from concurrent.futures import Future
from functools import partial
from typing import Any

from ..chunk import Chunk
from ..errors import ConfigError, DeliveryError, RemoteTaskError
from ..executors.base import ChunkExecutor
from . import listener
from .protocol import claim_key, encode_chunk, is_claimed, reply_key
from .publisher import publish
from .redis_client import connect, redacted
from .settings import Settings
from .spool import SPOOL_POLICIES, Entry, open_spool

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


_TRANSIENT = ("ConnectionError", "TimeoutError", "BusyLoadingError")  # redis-py's, raised on a worker


def _transient(record: dict[str, Any]) -> bool:
    """Whether a reply is a failure of the worker's Redis connection rather than of the task."""
    return not record.get("ok") and bool(record.get("error")) and record["error"][0] in _TRANSIENT


class CeleryExecutor(ChunkExecutor):
    """A ``concurrent.futures``-shaped executor running ``submit(task, chunk, t0, meta=...)`` on workers.

    Args:
        app: a Celery app to take the broker URL and queue from.
        broker: a Redis URL, when no ``app`` is given.
        settings: full settings (override ``app`` and ``broker``).
        spool: a directory for the durable spool (default ``settings.spool_dir``; memory when empty).
        batch: the most messages published in one round trip.
    """

    wants_meta = True

    def __init__(
        self,
        *,
        app: Any = None,
        broker: str | None = None,
        settings: Settings | None = None,
        spool: Any = None,
        batch: int = 500,
    ) -> None:
        self.settings = s = resolve_settings(app, broker, settings)
        if s.spool_policy not in SPOOL_POLICIES:
            raise ConfigError("spool_policy", s.spool_policy, f"one of {', '.join(SPOOL_POLICIES)}")
        self._client = connect(s.broker_url, socket_timeout=s.socket_timeout, master_name=s.sentinel_master)
        self.spool = open_spool(spool if spool is not None else (s.spool_dir or None), s.spool_max_bytes or None)
        self._batch = batch
        self._futures: dict[str, Future[Any]] = {}
        self._queue: deque[Entry] = deque()  # to publish: new chunks, then chunks to send again
        self._deadlines: deque[tuple[float, str, int]] = deque()  # (resend at, id, attempt), in send order
        self._cond = threading.Condition()
        self._closing = False
        self.broker_up = threading.Event()
        self._run_id: str | None = None  # the Redis server's, to tell a restart from a blip
        self._checked_at = 0.0
        self._has_info = True
        self.counts = dict.fromkeys(("published", "resent", "spool_dropped", "undelivered"), 0)
        self._listener = listener.attach(
            s.broker_url,
            self._on_reply,
            socket_timeout=s.socket_timeout,
            master_name=s.sentinel_master,
            on_server=self._on_server,
        )
        self._dispatcher = threading.Thread(target=self._dispatch, name="ocycle-publisher", daemon=True)
        self._dispatcher.start()

    # ---- the producer's side --------------------------------------------------------------------------

    def submit(self, task: Any, value: Any, t0: float, *, meta: Chunk) -> Future[Any]:
        """Keep the chunk (on disk with a spool) and queue its task; the Future resolves with its result."""
        name = task_name(task)
        if self._closing:
            raise RuntimeError("cannot submit to a shut-down CeleryExecutor")
        entry = Entry(str(uuid.uuid4()), name, meta, encode_chunk(value, self.settings))
        return self._track(entry, new=True)

    def adopt(self, stream: str) -> list[tuple[Chunk, Future[Any]]]:
        """Take over the chunks of ``stream`` an earlier producer left in the spool; they are sent again."""
        return [(entry.meta, self._track(entry, new=False)) for entry in self.spool.stored(stream)]

    def _track(self, entry: Entry, *, new: bool) -> Future[Any]:
        future: Future[Any] = Future()
        evicted: list[Future[Any]] = []
        with self._cond:
            if new and not self._make_room(len(entry.chunk), evicted):
                self.counts["spool_dropped"] += 1
                future.cancel()  # the emitter counts it as dropped
            else:
                if new:
                    self.spool.add(entry)
                self._futures[entry.id] = future
                self._queue.append(entry)
                self._cond.notify()
        for old in evicted:
            old.cancel()
        if not future.cancelled():
            future.add_done_callback(partial(self._discard, entry.id))
            self._listener.listen(reply_key(entry.meta.stream))
        return future

    def _make_room(self, nbytes: int, evicted: list[Future[Any]]) -> bool:
        """Apply the spool budget for a new chunk of ``nbytes``; False when the new chunk is rejected."""
        budget = self.spool.max_bytes
        while budget is not None and self.spool.nbytes + nbytes > budget:
            oldest = self.spool.oldest()
            if self.settings.spool_policy == "reject_newest" or oldest is None:
                return False
            self.spool.remove(oldest.id)
            self.counts["spool_dropped"] += 1
            future = self._futures.pop(oldest.id, None)
            if future is not None:
                evicted.append(future)
        return True

    def _discard(self, entry_id: str, future: Future[Any]) -> None:
        """Done-callback: forget a chunk whose Future was cancelled (dropped by a policy)."""
        if not future.cancelled():
            return
        with self._cond:
            self._futures.pop(entry_id, None)
            self.spool.remove(entry_id)
            self._cond.notify_all()  # the dispatcher may be done

    # ---- publishing -------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        import redis

        s, backoff = self.settings, 0.05
        while True:
            with self._cond:
                while not self._queue and not self._finished():
                    wait = self._deadlines[0][0] - time.monotonic() if self._deadlines else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                undelivered = self._expire()
                finished = self._finished()
                batch: list[Entry] = []
                while self._queue and len(batch) < self._batch:
                    entry = self._queue.popleft()
                    if entry.id in self._futures:
                        batch.append(entry)
            for entry, future in undelivered:
                future.set_exception(
                    DeliveryError(
                        f"no result for chunk {entry.meta.stream}#{entry.meta.seq} after {entry.attempts} sends"
                        f" {self.settings.resend_after:g} s apart: is a worker consuming queue"
                        f" {self.settings.queue!r} at {self.settings.broker_url}?"
                    )
                )
            if finished:
                self._stop()
                return
            while batch:
                try:
                    publish(self._client, batch, self.settings)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    if self.broker_up.is_set() or backoff == 0.05:
                        log.warning("Redis unreachable at %s (%s); chunks wait in the spool", s.broker_url, exc)
                    self.broker_up.clear()
                    with self._cond:
                        self._cond.wait(backoff)
                        batch = [entry for entry in batch if entry.id in self._futures]  # minus the dropped
                    backoff = min(backoff * 2, 2.0)
                    continue
                if not self.broker_up.is_set() or time.monotonic() - self._checked_at > 1.0:
                    self._check_restart(after_outage=backoff > 0.05)
                self.broker_up.set()
                backoff = 0.05
                now = time.monotonic()
                with self._cond:
                    for entry in batch:
                        entry.attempts += 1
                        self._deadlines.append((now + self.settings.resend_after, entry.id, entry.attempts))
                    self.counts["published"] += len(batch)
                break

    def _check_restart(self, after_outage: bool) -> None:
        """On (re)connecting: if Redis is a new server (run_id changed), what was sent may be gone with the
        old one: send every unanswered chunk again now instead of after ``resend_after``."""
        self._checked_at = time.monotonic()
        run_id = None
        if self._has_info:
            try:
                run_id = self._client.info("server").get("run_id")
            except Exception:  # a server without INFO (fakeredis's drops the connection): rely on resend_after
                self._has_info = False
                self._client.connection_pool.disconnect()
        restarted = run_id is not None and self._on_server(run_id)
        if after_outage:
            log.warning(
                "Redis reachable again at %s%s: sending the spooled chunks",
                self.settings.broker_url,
                " (a new server: sending again what it may have lost)" if restarted else "",
            )

    def _on_server(self, run_id: str) -> bool:
        """The run_id of the Redis server, read by the dispatcher after an outage and by the listener after
        each reconnect and every second. A new one (restarted empty, failed over): what was sent may be gone
        with the old server, so every unanswered chunk is sent again now instead of after ``resend_after``."""
        with self._cond:
            restarted = self._run_id is not None and run_id != self._run_id
            self._run_id = run_id
            if restarted:
                self._deadlines = deque((0.0, entry_id, attempt) for _, entry_id, attempt in self._deadlines)
                self._cond.notify_all()
            pending = len(self._futures)
        if restarted:
            log.warning(
                "Redis at %s is a new server: sending the unanswered chunks again (%d pending)",
                redacted(self.settings.broker_url),
                pending,
            )
        return restarted

    def _finished(self) -> bool:
        """Under the lock: shut down and every chunk resolved and out of the spool."""
        return self._closing and not self._futures and not len(self.spool)

    def _expire(self) -> list[tuple[Entry, Future[Any]]]:
        """Under the lock: queue again the chunks whose result is late; return those out of attempts."""
        now, undelivered = time.monotonic(), []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, entry_id, attempt = self._deadlines.popleft()
            entry = self.spool.get(entry_id)
            if entry is None or entry.attempts != attempt or entry_id not in self._futures:
                continue  # answered, dropped, or already sent again
            if entry.attempts >= self.settings.max_attempts:
                self.counts["undelivered"] += 1
                self.spool.remove(entry_id)
                undelivered.append((entry, self._futures.pop(entry_id)))
            else:
                self.counts["resent"] += 1
                self._queue.append(entry)
        return undelivered

    # ---- results ------------------------------------------------------------------------------------------

    def _on_reply(self, record: dict[str, Any]) -> bool:
        """Resolve the chunk the reply is for; False when it is not one of this executor's.

        The chunk leaves the spool only after its Future is resolved (and ``on_done`` has run): a producer
        killed in between sends it again when restarted, so ``on_done`` is never skipped.
        """
        entry_id = record.get("id")
        if not isinstance(entry_id, str):
            return False
        with self._cond:
            entry = self.spool.get(entry_id)
            if (
                entry is not None
                and entry.attempts < self.settings.max_attempts
                and entry_id in self._futures
                and _transient(record)
            ):
                self.counts["resent"] += 1  # the worker lost Redis mid-task: not the chunk's fault, send again
                self._queue.append(entry)
                self._cond.notify()
                return True
            future = self._futures.pop(entry_id, None)
        if future is None:
            return False  # another executor's, or a second reply: the listener counts it
        if not future.done():
            if record.get("ok"):
                future.set_result(record.get("result"))
            else:
                type_name, message = [*(record.get("error") or []), "Error", "unknown"][:2]
                future.set_exception(RemoteTaskError(str(type_name), str(message)))
        with self._cond:
            self.spool.remove(entry_id)
            self._cond.notify_all()
        if entry is not None and is_claimed(entry, self.settings):
            try:
                self._client.delete(claim_key(entry.id))
            except Exception:  # it expires anyway
                log.debug("could not delete the claimed chunk of %s", entry_id)
        return True

    @property
    def spooled_bytes(self) -> int:
        """Bytes of the chunks kept until their result is in."""
        return self.spool.nbytes

    @property
    def pending(self) -> int:
        """Chunks kept for a result that has not come back."""
        with self._cond:
            return len(self._futures)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more chunks and stop once every result is in.

        With ``wait``, block until then. Without, return at once: publishing and listening go on in the
        background until the last result, as with the stdlib pools (a durable spool also keeps what is
        pending for the next producer). ``cancel_futures`` drops what has not come back.
        """
        with self._cond:
            pending = list(self._futures.values())
        if cancel_futures:
            for future in pending:
                future.cancel()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if wait:
            futures.wait(pending)
            self._dispatcher.join()

    def _stop(self) -> None:
        """The dispatcher's last act: detach from the listener, close the spool."""
        listener.detach(self.settings.broker_url, self._on_reply)
        self.spool.close()
        self._client.close()
