"""The Celery executor: each chunk becomes a Celery task on Redis; its Future resolves when the reply comes.

One executor per emitter: its settings (queue, ``expires``...), its spool (memory, or SQLite on disk), its
budget and its counters. ``submit()`` keeps the chunk and puts it in the process's pending table; it never
waits on the network. The sending, the replies and the recovery are done for every emitter of the process
by one :class:`~.hub.Hub` per broker. A ``bytes`` or numpy chunk in a memory spool is joined
(:class:`~ocycle_dist.pieces.Pieces`) and encoded by the hub's publisher thread, not the writer's (its encoded
size is known beforehand: :func:`.wire.encoded_size`); a claimed one is not encoded at all (its raw bytes go
to Redis); others are encoded at once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..checks import finite, queue_name
from ..chunk import Chunk
from ..errors import ConfigError, EncodeError, SpoolError
from ..executors.base import ChunkExecutor
from ..pieces import joined
from . import wire
from .chunkfuture import ChunkFuture
from .hub import Hub
from .pending import Entry
from .protocol import check_size, encode_chunk, is_claimed, mac_key, reply_key
from .redis_client import probe
from .settings import Settings
from .spool import open_spool

TOKEN_FILE = "producer.token"
log = logging.getLogger("ocycle_dist.celery")


def producer_token(spool_dir: Any) -> str | None:
    """The token a durable spool keeps in its directory, so that a producer restarted on it listens where its
    predecessor's replies go (made on first use); None for a memory spool (the process's own is used)."""
    if spool_dir is None:
        return None
    path = Path(spool_dir) / TOKEN_FILE
    try:
        saved = path.read_text().strip()
        if saved.isalnum() and 8 <= len(saved) <= 64:
            return saved
    except OSError:
        pass
    token = uuid.uuid4().hex[:16]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(token)
    except OSError as exc:
        raise ConfigError("spool", str(spool_dir), f"a writable directory ({exc.strerror})") from None
    return token


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


class CeleryExecutor(ChunkExecutor):
    """A ``concurrent.futures``-shaped executor running ``submit(task, chunk, t0, meta=...)`` on workers.

    ``submit()`` never waits on workers: the broker holds the backlog. What waits for results is measured in
    bytes (:attr:`spooled_bytes`); the emitter bounds it by ``settings.spool_max_bytes`` (:attr:`budget`) with
    its ``policy``.

    Args:
        app: a Celery app to take the broker URL and queue from.
        broker: a Redis URL, when no ``app`` is given.
        settings: full settings (override ``app`` and ``broker``).
        spool: a directory for the durable spool (default ``settings.spool_dir``; memory when empty).
        batch: the most chunks published in one round trip (accepted for compatibility; the process's
            publisher takes up to 500).
        queue: the Celery queue of these chunks' tasks (default ``settings.queue``); workers consume it with
            ``celery -A workers worker -Q <queue>``.
        expires: seconds after ``submit()`` within which a worker must start a chunk's task; later it is
            discarded unstarted (Celery's ``expires`` header) and its Future fails with ``ExpiredError``.
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
        queue: str | None = None,
        expires: float | None = None,
    ) -> None:
        del batch
        s = resolve_settings(app, broker, settings)
        if queue is not None:
            s = replace(s, queue=queue_name(queue))
        if expires is not None and not finite(expires, above=0, below=1e9):
            raise ConfigError("expires", expires, "seconds > 0, or None for chunks that never expire")
        self.settings, self.expires = s, expires
        # a wrong password, db or TLS, or a Redis that may evict the queues, fails here; an outage does not
        probe(s.broker_url, master_name=s.sentinel_master, allow_eviction=s.allow_eviction)
        directory = spool if spool is not None else (s.spool_dir or None)
        self._own_token = producer_token(directory)
        self.spool = open_spool(directory, s.spool_max_bytes or None)
        self.durable = self.spool.durable  # pending chunks outlive this process
        self.joins_later = not self.durable  # a durable spool stores each chunk encoded before submit() returns
        self.budget = s.spool_max_bytes or None
        self.batching = True  # off once a worker answered that it has no batch task
        self.counts = dict.fromkeys(
            (
                "published",  # chunks sent (each send of a chunk sent again too)
                "messages",  # task messages sent (a batch message is one)
                "batched",  # chunks sent in batch messages
                "resent",  # chunks sent again, for any reason
                "recovered",  # ... because Redis was a new server, their worker died, or a worker lost Redis
                "lost",  # ... because they were gone from Redis after resend_after (counted against max_attempts)
                "evicted",  # ... because a Redis that evicts keys (maxmemory-policy) took them
                "undelivered",  # failed with DeliveryError after max_attempts losses
                "dropped",  # dropped by the emitter's policy while waiting here
                "expired",
                "forged",  # replies whose authentication failed: ignored
            ),
            0,
        )
        self._lock = threading.Lock()
        self._live = 0  # chunks submitted (or adopted) and not yet settled
        self._closing = False
        self._listening = False
        self.finished = threading.Event()  # shut down and every chunk settled: detached from the hub
        self._encoded: tuple[Any, bytes] | None = None  # cost() of a value only encoding measures, for submit()
        self.token = ""
        self.mac_key = b""
        self.reply_key = ""
        self.hub = Hub.attach(self)

    def bind(self, hub: Hub) -> None:
        """Called by the hub it attaches to: the reply list and its key (the process's, or the spool's own)."""
        self.token = self._own_token or hub.token
        self.mac_key = mac_key(self.settings.reply_secret, self.token)
        self.reply_key = reply_key(self.token)

    # ---- the hub's state, as this executor's ----------------------------------------------------------------

    @property
    def broker_up(self) -> threading.Event:
        """Set while the last publish reached Redis."""
        return self.hub.broker_up

    @property
    def broker_error(self) -> str | None:
        """The last publish error, until a publish succeeds."""
        return self.hub.publisher.broker_error

    @property
    def spooled_bytes(self) -> int:
        """Bytes of the chunks kept until their result is in (on disk: the pages they take)."""
        return self.spool.nbytes

    @property
    def closing(self) -> bool:
        """Shut down: it takes no more chunks (those pending still get their results)."""
        return self._closing

    @property
    def pending(self) -> int:
        """Chunks submitted and not settled."""
        return self._live

    # ---- the producer's side --------------------------------------------------------------------------------

    def cost(self, value: Any) -> int:
        """The bytes ``value`` will be kept as: its encoded size (known without encoding for bytes and numpy
        chunks; others are encoded now, once, for :meth:`submit`). Raises EncodeError (over ``max_chunk_bytes``
        or not encodable)."""
        size = None if self.durable else wire.encoded_size(value)
        if size is None:
            chunk = encode_chunk(joined(value), self.settings)
            self._encoded = (value, chunk)
            return len(chunk)
        check_size(size, self.settings)
        return size

    def submit(self, task: Any, value: Any, t0: float, *, meta: Chunk) -> Future[Any]:
        """Keep the chunk (on disk with a durable spool) and queue its task; the Future resolves with its result.

        A chunk that cannot be encoded, or is over ``max_chunk_bytes``, gets a Future failed with EncodeError;
        one the durable spool cannot keep (disk full), a Future failed with SpoolError.
        """
        name = task_name(task)
        if self._closing:
            raise RuntimeError("cannot submit to a shut-down CeleryExecutor")
        expires_at = None if self.expires is None else time.time() + self.expires
        try:
            memo, self._encoded = self._encoded, None
            if memo is not None and memo[0] is value:
                entry = Entry(str(uuid.uuid4()), name, meta, memo[1], expires_at=expires_at)
            elif self.durable or (size := wire.encoded_size(value)) is None:
                entry = Entry(str(uuid.uuid4()), name, meta, encode_chunk(joined(value), self.settings),
                              expires_at=expires_at)  # fmt: skip
            else:
                check_size(size, self.settings)
                entry = Entry(str(uuid.uuid4()), name, meta, b"", expires_at=expires_at, value=value, size=size)
            entry.emitted_at = time.time()
            return self._keep(entry, adopted=False)
        except (EncodeError, SpoolError) as exc:  # this chunk's outcome (on_error, counted as failed), not the stream's
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            return failed

    def _keep(self, entry: Entry, *, adopted: bool) -> Future[Any]:
        future = ChunkFuture(entry)
        entry.future, entry.owner = future, self
        if not adopted:
            self.spool.add(entry)  # SpoolError: nothing kept
        with self._lock:
            self._live += 1
        self.hub.table.add(entry, sent=adopted and bool(entry.tag))
        if not adopted:
            self._listen()
        return future

    def _listen(self) -> None:
        """Pop the replies of this executor's list. A durable spool's list may hold replies for the chunks an
        earlier producer left: it is listened to only once those are taken over (adopt(), or the first chunk),
        else they would find no chunk waiting, be dropped, and the chunks run again."""
        if not self._listening:
            self._listening = True
            self.hub.listener.listen(self.reply_key)

    def adopt(self, stream: str) -> list[tuple[Chunk, Future[Any], float]]:
        """Take over the chunks of ``stream`` an earlier producer left in the spool: ``(meta, Future, emitted_at)``.
        Those it had sent are looked for in Redis first (:meth:`.hub.Hub.adopted`): only what is gone is sent
        again."""
        entries = self.spool.stored(stream)
        adopted = [(entry.meta, self._keep(entry, adopted=True), entry.emitted_at) for entry in entries]
        if entries:
            self.hub.adopted()
        self._listen()
        return adopted

    def dropped(self, entry: Entry) -> None:
        """A chunk's Future is being cancelled (the emitter's policy drops it): it is no longer sent or answered.
        Its bytes are freed when the emitter settles it (at once, for a dropped chunk)."""
        if self.hub.table.pop(entry.id) is not None:
            self.counts["dropped"] += 1
            entry.future = None

    def settled(self, future: Future[Any]) -> None:
        """The emitter has handled this chunk's outcome: forget it (spool, claimed chunk in Redis)."""
        entry = getattr(future, "entry", None)
        if entry is None:
            return
        future.entry = None  # type: ignore[attr-defined]
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        self.spool.remove(entry)
        if entry.claimed or is_claimed(entry, self.settings):
            self.hub.forget_claim(entry.id)
        with self._lock:
            self._live -= 1
            last = self._closing and self._live <= 0
        if last:
            self._detach()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more chunks and stop once every result is in (and settled).

        With ``wait``, block until then (every chunk settled by its emitter). Without, return at once: publishing
        and listening go on in the background until the last result, as with the stdlib pools (a durable spool
        also keeps what is pending for the next producer). ``cancel_futures`` drops what has not come back.
        """
        if cancel_futures:
            for entry in self.hub.table.owned_by(self):
                if entry.future is not None:
                    entry.future.cancel()
        with self._lock:
            self._closing = True
            last = self._live <= 0
        if last:
            self._detach()
        elif wait:
            self.finished.wait()

    def abandon(self) -> None:
        """Stop following this executor's chunks at once, as a process exit would: nothing is settled, and a
        durable spool keeps its rows for the next producer of the stream (which may be in this process)."""
        for entry in self.hub.table.owned_by(self):
            self.hub.table.pop(entry.id)
        with self._lock:
            self._closing, self._live = True, 0
        self._detach()

    def _detach(self) -> None:
        with self._lock:
            if self.finished.is_set():
                return
            self.finished.set()
        self.hub.detach(self)
        self.spool.close()
