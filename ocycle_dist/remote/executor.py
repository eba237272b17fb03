"""The Celery executor: each chunk becomes a Celery task on Redis; its Future resolves when the reply comes.

``submit()`` keeps the chunk in the spool (memory, or SQLite on disk) and returns: ``write()`` never waits
on the network. A ``bytes`` or numpy chunk in a memory spool is joined (:class:`~ocycle_dist.pieces.Pieces`)
and encoded by the publisher's thread, not the writer's (its encoded size is known beforehand:
:func:`.wire.encoded_size`); a claimed one is not encoded at all (its raw bytes go to Redis); others are
joined and encoded at once.
One publisher thread per executor (:mod:`.dispatch`) publishes what is pending in batches and sends a
chunk again when its result has not come back after ``resend_after`` seconds (at-least-once), or at once
when its worker died or Redis restarted empty; one listener thread per broker pops the workers' replies
(:mod:`.listener`), which resolve the Futures, each once (:mod:`.outcomes`): a second reply for a chunk is
counted and ignored. ``on_done``/``on_error`` then run in the producer process, without polling and
without gevent. The state these parts share is declared in :mod:`.ledger`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from concurrent import futures
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from ..chunk import Chunk
from ..errors import ConfigError, EncodeError, SpoolError
from ..executors.base import ChunkExecutor
from ..pieces import joined
from . import listener, wire
from .dispatch import Dispatch
from .lease import LeaseWatch
from .outcomes import Outcomes
from .protocol import check_size, encode_chunk, mac_key, reply_key
from .redis_client import connect, probe
from .settings import Settings
from .spool import SPOOL_POLICIES, Entry, MemorySpool, open_spool

_SPOOL_TO_EMITTER = {"reject_newest": "drop_newest", "drop_oldest": "drop_oldest"}
TOKEN_FILE = "producer.token"


def producer_token(spool_dir: Any) -> str:
    """This producer's token: new for a memory spool; kept in a durable spool's directory, so a producer
    restarted on it listens where its predecessor's replies go."""
    token = uuid.uuid4().hex[:16]
    if spool_dir is None:
        return token
    path = Path(spool_dir) / TOKEN_FILE
    try:
        saved = path.read_text().strip()
        if saved.isalnum() and 8 <= len(saved) <= 64:
            return saved
    except OSError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(token)
    except OSError as exc:
        raise ConfigError("spool", str(spool_dir), f"a writable directory ({exc.strerror})") from None
    return token


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


class CeleryExecutor(Dispatch, Outcomes, ChunkExecutor):
    """A ``concurrent.futures``-shaped executor running ``submit(task, chunk, t0, meta=...)`` on workers.

    ``submit()`` never waits on workers: the broker holds the backlog. What waits for results is bounded by
    the spool's byte budget (``settings.spool_max_bytes``), and only when it is full does ``policy`` act.

    Args:
        app: a Celery app to take the broker URL and queue from.
        broker: a Redis URL, when no ``app`` is given.
        settings: full settings (override ``app`` and ``broker``).
        spool: a directory for the durable spool (default ``settings.spool_dir``; memory when empty).
        batch: the most messages published in one round trip.
        queue: the Celery queue of these chunks' tasks (default ``settings.queue``); workers consume it with
            ``celery -A workers worker -Q <queue>``.
        expires: seconds after ``submit()`` within which a worker must start a chunk's task; later it is
            discarded unstarted (Celery's ``expires`` header) and its Future fails with ``ExpiredError``.
        policy: when the budget is full: ``block`` (wait for room), ``drop_newest`` or ``drop_oldest``
            (default: from ``settings.spool_policy``).
    """

    wants_meta = True
    bounds_backlog = True

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
        policy: str | None = None,
    ) -> None:
        s = resolve_settings(app, broker, settings)
        if s.spool_policy not in SPOOL_POLICIES:
            raise ConfigError("spool_policy", s.spool_policy, f"one of {', '.join(SPOOL_POLICIES)}")
        if queue is not None:
            if not isinstance(queue, str) or not queue.strip() or len(queue) > 200:
                raise ConfigError("queue", queue, "a non-empty queue name (str, at most 200 characters)")
            s = replace(s, queue=queue)
        if expires is not None and (
            isinstance(expires, bool) or not isinstance(expires, (int, float)) or not 0 < expires < 1e9
        ):
            raise ConfigError("expires", expires, "seconds > 0, or None for chunks that never expire")
        if policy is None:
            policy = _SPOOL_TO_EMITTER[s.spool_policy]
        if policy not in ("block", "drop_newest", "drop_oldest"):
            raise ConfigError("policy", policy, "'block', 'drop_newest' or 'drop_oldest'")
        self.settings, self.expires, self.policy = s, expires, policy
        self._full = False  # the budget is full: logged once per episode
        self._resolved: dict[Future[Any], Entry] = {}  # answered, kept in the spool until settled()
        probe(s.broker_url, master_name=s.sentinel_master)  # a wrong password, db or TLS fails here, not an outage
        self.token = producer_token(spool if spool is not None else (s.spool_dir or None))
        self._mac_key = mac_key(s.reply_secret, self.token)
        self._client = connect(s.broker_url, socket_timeout=s.socket_timeout, master_name=s.sentinel_master)
        self.spool = open_spool(spool if spool is not None else (s.spool_dir or None), s.spool_max_bytes or None)
        self.durable = type(self.spool) is not MemorySpool  # pending chunks outlive this process
        self.joins_later = not self.durable  # a durable spool stores each chunk encoded before submit() returns
        self._batch = batch
        self._futures: dict[str, Future[Any]] = {}
        self._queue: deque[Entry] = deque()  # to publish: new chunks, then chunks to send again
        self._deadlines: deque[tuple[float, str, int]] = deque()  # (resend at, id, attempt), in send order
        self._cond = threading.Condition()
        self._closing = False
        self.broker_up = threading.Event()
        self._run_id: str | None = None  # the Redis server's, to tell a restart from a blip
        self._has_info = True
        self.counts = dict.fromkeys(
            (
                "published",
                "resent",
                "recovered",  # sent again because the worker holding it died (its lease lapsed)
                "spool_dropped",
                "undelivered",
                "expired",
                "broker_errors",  # publishes refused or failed (each is retried)
                "forged",  # replies whose authentication failed: ignored
                "thread_errors",  # unexpected errors the publisher survived
                "messages",  # task messages sent (a batch message is one)
                "batched",  # chunks sent in batch messages
            ),
            0,
        )
        self.broker_error: str | None = None  # the last publish error, until a publish succeeds
        self._leases = LeaseWatch(self._client, s.worker_lease, s.broker_url) if s.worker_lease > 0 else None
        self._lease_check_at = 0.0
        self._batching = True  # off once a worker answered that it has no batch task
        self._tag_of: dict[str, str] = {}  # task id -> delivery tag of its last message, while unanswered
        self._task_of: dict[str, list[str]] = {}  # the reverse (a batch message's tag: all its chunks)
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
        """Keep the chunk (on disk with a spool) and queue its task; the Future resolves with its result.

        A chunk that cannot be encoded, or is over ``max_chunk_bytes``, gets a Future failed with EncodeError;
        one the durable spool cannot keep (disk full), a Future failed with SpoolError.
        """
        name = task_name(task)
        if self._closing:
            raise RuntimeError("cannot submit to a shut-down CeleryExecutor")
        expires_at = None if self.expires is None else time.time() + self.expires
        try:
            size = None if self.durable else wire.encoded_size(value)  # known: joined and encoded off this thread
            if size is None:
                chunk = encode_chunk(joined(value), self.settings)
                entry = Entry(str(uuid.uuid4()), name, meta, chunk, expires_at=expires_at)
            else:
                check_size(size, self.settings)
                entry = Entry(str(uuid.uuid4()), name, meta, b"", expires_at=expires_at, value=value, size=size)
            return self._track(entry, new=True)
        except (EncodeError, SpoolError) as exc:  # this chunk's outcome (on_error, counted as failed), not the stream's
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            return failed

    def adopt(self, stream: str) -> list[tuple[Chunk, Future[Any]]]:
        """Take over the chunks of ``stream`` an earlier producer left in the spool; they are sent again."""
        return [(entry.meta, self._track(entry, new=False)) for entry in self.spool.stored(stream)]

    def _track(self, entry: Entry, *, new: bool) -> Future[Any]:
        future: Future[Any] = Future()
        evicted: list[Future[Any]] = []
        try:
            with self._cond:
                if new and not self._make_room(entry.size, evicted):
                    self.counts["spool_dropped"] += 1
                    future.cancel()  # the emitter counts it as dropped
                else:
                    if new:
                        self.spool.add(entry)
                    self._futures[entry.id] = future
                    self._queue.append(entry)
                    self._cond.notify()
        finally:  # chunks evicted to make room are dropped even if the new one could not be kept
            for old in evicted:
                old.cancel()
        if not future.cancelled():
            future.add_done_callback(partial(self._discard, entry.id))
            self._listener.listen(reply_key(entry.meta.stream, self.token), self._on_reply)
        return future

    def _make_room(self, nbytes: int, evicted: list[Future[Any]]) -> bool:
        """Under the lock: apply the budget for a new chunk of ``nbytes``; False when the new chunk is dropped."""
        budget = self.spool.max_bytes
        if budget is not None and nbytes > budget:
            self._budget_full(f"a chunk of {nbytes} bytes is larger than the whole budget")
            return False
        while budget is not None and self.spool.nbytes + nbytes > budget:
            self._budget_full(f"policy {self.policy!r} acts")
            pending = next((i for i, f in self._futures.items() if not f.done()), None)
            if self.policy == "block" and not self._closing and (pending is not None or self._resolved):
                self._cond.wait(1.0)  # a result or a drop frees room
                continue
            if self.policy != "drop_oldest" or pending is None:
                return False
            self.spool.remove(pending)
            self.counts["spool_dropped"] += 1
            if (future := self._pop(pending)) is not None:
                evicted.append(future)
        if self._full and budget is not None and self.spool.nbytes + nbytes <= budget * 0.75:
            self._full = False  # a new episode will be logged again
            log.info("the spool budget of %s bytes has room again (queue %r)", budget, self.settings.queue)
        return True

    def _budget_full(self, what: str) -> None:
        if not self._full:
            self._full = True
            log.warning(
                "the spool budget of %s bytes (chunks waiting for results, queue %r) is full: %s;"
                " drops are counted in stats().dropped (logged once until it has room again)",
                self.spool.max_bytes,
                self.settings.queue,
                what,
            )

    def _discard(self, entry_id: str, future: Future[Any]) -> None:
        """Done-callback: forget a chunk whose Future was cancelled (dropped by a policy)."""
        if not future.cancelled():
            return
        with self._cond:
            self._pop(entry_id)
            self.spool.remove(entry_id)
            self._cond.notify_all()  # the dispatcher may be done

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
