"""The Celery executor: each chunk becomes a Celery task on Redis; its Future resolves when the reply comes.

``submit()`` keeps the chunk in the spool (memory, or SQLite on disk) and returns: ``write()`` never waits
on the network. A ``bytes`` or numpy chunk in a memory spool is joined (:class:`~ocycle_dist.pieces.Pieces`)
and encoded by the publisher's thread, not the writer's (its encoded size is known beforehand:
:func:`.wire.encoded_size`); a claimed one is not encoded at all (its raw bytes go to Redis); others are
joined and encoded at once.
One dispatcher thread publishes what is pending in batches (:mod:`.publisher`) and sends a chunk again
when its result has not come back after ``resend_after`` seconds (at-least-once); one listener thread
pops the workers' replies (:mod:`.listener`) and resolves the Futures, each once: a second reply for a
chunk is counted and ignored. ``on_done``/``on_error`` then run in the producer process, without polling
and without gevent.
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
from ..errors import ConfigError, DeliveryError, EncodeError, ExpiredError, RemoteTaskError, SpoolError
from ..executors.base import ChunkExecutor
from ..pieces import joined
from . import listener, wire
from .lease import LeaseWatch
from .protocol import check_size, claim_key, encode_chunk, is_claimed, mac_key, reply_key, unseal
from .publisher import YIELD_EVERY, publish
from .redis_client import CONFIG, classify, connect, probe, reason, redact
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


_TRANSIENT = ("ConnectionError", "TimeoutError", "BusyLoadingError")  # redis-py's, raised on a worker


def _transient(record: dict[str, Any]) -> bool:
    """Whether a reply is a failure of the worker's Redis connection rather than of the task."""
    return not record.get("ok") and bool(record.get("error")) and record["error"][0] in _TRANSIENT


class CeleryExecutor(ChunkExecutor):
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
            self._listener.listen(reply_key(entry.meta.stream, self.token))
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

    # ---- publishing -------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """The publisher thread: never dies of an error it did not expect; it logs it and goes on."""
        while True:
            try:
                self._dispatch_loop()
                return
            except Exception:
                self.counts["thread_errors"] += 1
                log.exception("the publisher of queue %r hit an unexpected error; it goes on", self.settings.queue)
                time.sleep(1.0)

    def _dispatch_loop(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                while not self._queue and not self._finished():
                    wait = self._deadlines[0][0] - time.monotonic() if self._deadlines else None
                    if wait is not None and wait <= 0:
                        break
                    if self._leases is not None and self._deadlines:  # something is out: watch the leases
                        lease_wait = self._lease_check_at - time.monotonic()
                        if lease_wait <= 0:
                            break
                        wait = lease_wait if wait is None else min(wait, lease_wait)
                    self._cond.wait(wait)
                undelivered = self._expire()
                finished = self._finished()
                batch: list[Entry] = []
                while self._queue and len(batch) < self._batch:
                    entry = self._queue.popleft()
                    if entry.id in self._futures:
                        batch.append(entry)
            batch = self._encode(self._drop_stale(batch))
            for entry, future in undelivered:
                future.set_exception(
                    DeliveryError(
                        f"no result for chunk {entry.meta.stream}#{entry.meta.seq} after {entry.attempts} sends"
                        f" {self.settings.resend_after:g} s apart: is a worker consuming queue"
                        f" {self.settings.queue!r} at {redact(self.settings.broker_url)}?"
                    )
                )
            if finished:
                self._stop()
                return
            if self._leases is not None and time.monotonic() >= self._lease_check_at and self.broker_up.is_set():
                self._check_leases()
            while batch:
                try:
                    sent = publish(self._client, batch, self.settings, self.token, batch=self._batching)
                except Exception as exc:
                    self._broker_failed(exc, first=self.broker_up.is_set() or backoff == 0.05)
                    with self._cond:
                        self._cond.wait(backoff)
                        batch = [entry for entry in batch if entry.id in self._futures]  # minus the dropped
                    backoff = min(backoff * 2, 2.0)
                    continue
                if not self.broker_up.is_set():  # later restarts: the listener reads the run_id every second
                    self._check_restart(after_outage=backoff > 0.05)
                self.broker_up.set()
                self.broker_error = None
                backoff = 0.05
                now = time.monotonic()
                with self._cond:
                    for entry in batch:
                        entry.attempts += 1
                        self._deadlines.append((now + self.settings.resend_after, entry.id, entry.attempts))
                        self._sent(entry)
                    self.counts["published"] += len(batch)
                    self.counts["messages"] += len(sent)
                    self.counts["batched"] += sum(len(group) for group in sent if len(group) > 1)
                break

    def _encode(self, batch: list[Entry]) -> list[Entry]:
        """Encode the chunks left for this thread (see :meth:`submit`); one that cannot be fails alone. A chunk
        that travels by claim check is not: its raw bytes go to Redis as they are."""
        ok = []
        for i, entry in enumerate(batch):
            if entry.value is None:
                ok.append(entry)
                continue
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                time.sleep(0)  # let the writer's thread run between chunks
            try:
                if is_claimed(entry, self.settings):
                    entry.join()  # its raw bytes go as they are (protocol.task_message)
                else:
                    entry.encode()
            except EncodeError as exc:
                with self._cond:
                    future = self._pop(entry.id)
                    self.spool.remove(entry.id)
                    self._cond.notify_all()
                if future is not None:
                    future.set_exception(exc)
            else:
                ok.append(entry)
        return ok

    def _broker_failed(self, exc: Exception, *, first: bool) -> None:
        """A publish failed: count it, say why once per episode; the chunks wait in the spool meanwhile."""
        kind = classify(exc)
        why = f"{type(exc).__name__}: {reason(exc)}"
        self.counts["broker_errors"] += 1
        if first or why != self.broker_error:
            if kind == CONFIG:
                log.error(
                    "Redis at %s refuses the producer (%s): check the password, ACL, db number or TLS in the URL;"
                    " chunks wait in the spool, counted in stats()",
                    redact(self.settings.broker_url),
                    why,
                )
            else:
                log.warning(
                    "Redis unreachable at %s or cannot take chunks now (%s); they wait in the spool",
                    redact(self.settings.broker_url),
                    why,
                )
        self.broker_error = why
        self.broker_up.clear()

    def _sent(self, entry: Entry) -> None:
        """Under the lock: remember the delivery tag of ``entry``'s last message (for the lease watch); a batch
        message's tag stands for all its chunks."""
        old = self._tag_of.get(entry.id)
        if old is not None:
            self._untag(old, entry.id)
        self._tag_of[entry.id] = entry.delivery_tag
        self._task_of.setdefault(entry.delivery_tag, []).append(entry.id)

    def _untag(self, tag: str, entry_id: str) -> None:
        ids = self._task_of.get(tag)
        if ids is not None:
            if len(ids) <= 1:
                del self._task_of[tag]
            elif entry_id in ids:
                ids.remove(entry_id)

    def _pop(self, entry_id: str) -> Future[Any] | None:
        """Under the lock: stop waiting for ``entry_id`` (answered, dropped, given up); its Future."""
        tag = self._tag_of.pop(entry_id, None)
        if tag is not None:
            self._untag(tag, entry_id)
        return self._futures.pop(entry_id, None)

    def _check_leases(self) -> None:
        """Send again at once the chunks whose worker's lease lapsed (it died holding them)."""
        assert self._leases is not None
        self._lease_check_at = time.monotonic() + self.settings.worker_lease / 3
        if not self._tag_of:
            return
        try:
            lost = self._leases.check(self._tag_of, self._task_of)
            if not lost:
                return
            self._leases.forget_delivery(sorted({tag for task_id, _ in lost if (tag := self._tag_of.get(task_id))}))
        except Exception as exc:  # a Redis blip: the next round, or resend_after, catches up
            log.debug("lease check failed: %s", exc)
            return
        with self._cond:
            found = [(entry, why) for task_id, why in lost if (entry := self.spool.get(task_id)) is not None]
            for entry, why in sorted(found, key=lambda pair: pair[0].meta.seq):  # in stream order
                if entry.id not in self._futures:
                    continue
                log.warning("chunk %s#%s: %s; sending it again", entry.meta.stream, entry.meta.seq, why)
                self.counts["resent"] += 1
                self.counts["recovered"] += 1
                self._queue.append(entry)
            self._cond.notify()

    def _check_restart(self, after_outage: bool) -> None:
        """On (re)connecting: if Redis is a new server (run_id changed), what was sent may be gone with the
        old one: send every unanswered chunk again now instead of after ``resend_after``."""
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
                redact(self.settings.broker_url),
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
                redact(self.settings.broker_url),
                pending,
            )
        return restarted

    def _drop_stale(self, batch: list[Entry]) -> list[Entry]:
        """Resolve as expired, without sending, the entries of ``batch`` already past their deadline."""
        now = time.time()
        stale = [e for e in batch if e.expires_at is not None and e.expires_at < now]
        if not stale:
            return batch
        for entry in stale:
            with self._cond:
                future = self._pop(entry.id)
                if future is None:
                    continue
                self._resolved[future] = entry
                self.counts["expired"] += 1
            future.set_exception(self._expired_error(entry, "expired before it could be sent"))
        return [e for e in batch if e not in stale]

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
                undelivered.append((entry, self._futures[entry_id]))
                self._pop(entry_id)
            else:
                self.counts["resent"] += 1
                self._queue.append(entry)
        return undelivered

    # ---- results ------------------------------------------------------------------------------------------

    def _on_reply(self, envelope: dict[str, Any]) -> bool:
        """Resolve the chunk the (sealed) reply is for; False when it is not one of this executor's.

        A reply whose MAC does not check out is ignored and counted (``counts["forged"]``). The chunk leaves
        the spool only once the emitter has handled its outcome (``settled()``, after its ``on_done`` ran): a
        producer killed in between sends it again when restarted, so ``on_done`` is never skipped.
        """
        entry_id = envelope.get("id")
        if not isinstance(entry_id, str) or (
            entry_id not in self._futures and entry_id not in self._task_of and self.spool.get(entry_id) is None
        ):
            return False
        try:
            record = unseal(envelope, self._mac_key)
        except Exception:  # a body that does not decode
            record = None
        if record is None:
            with self._cond:
                self.counts["forged"] += 1
                first = self.counts["forged"] == 1
            (log.error if first else log.debug)(
                "a reply for chunk %s failed authentication and was ignored (forged, or OCYCLE_REPLY_SECRET differs"
                " between producer and workers); counted",
                entry_id,
            )
            return True
        return self._resolve(entry_id, record)

    def _resolve(self, entry_id: str, record: dict[str, Any]) -> bool:
        """Resolve chunk ``entry_id`` (or a batch message's chunks) with an authenticated reply record."""
        if entry_id in self._task_of and self.spool.get(entry_id) is None:
            return self._on_batch_reply(entry_id, record)
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
            future = self._pop(entry_id)
        if future is None:
            return False  # another executor's, or a second reply: the listener counts it
        if entry is not None:
            with self._cond:
                self._resolved[future] = entry
        if not future.done():
            if record.get("ok"):
                future.set_result(record.get("result"))
            elif record.get("expired") is True:
                with self._cond:
                    self.counts["expired"] += 1
                future.set_exception(self._expired_error(entry, "its worker discarded it unstarted"))
            else:
                type_name, message = [*(record.get("error") or []), "Error", "unknown"][:2]
                future.set_exception(RemoteTaskError(str(type_name), str(message)))
        return True

    def _on_batch_reply(self, tag: str, record: dict[str, Any]) -> bool:
        """A reply for a batch message as a whole: from a worker that does not know the batch task (its chunks
        go again, one message each, from now on), or a failure of the whole batch (each chunk fails with it)."""
        error = [*(record.get("error") or []), "Error", "unknown"][:2]
        with self._cond:
            ids = [i for i in self._task_of.get(tag, ()) if i in self._futures]
            if error[0] == "NotRegistered":
                if self._batching:
                    log.warning(
                        "a worker of queue %r has no batch task (%s): sending one message per chunk from now on"
                        " (workers made with ocycle_dist.remote.worker.make_app() have it; OCYCLE_BATCH_MAX_CHUNKS=0"
                        " turns batching off)",
                        self.settings.queue,
                        error[1],
                    )
                self._batching = False
                for entry_id in ids:
                    entry = self.spool.get(entry_id)
                    if entry is not None:
                        self.counts["resent"] += 1
                        self._queue.append(entry)
                self._cond.notify()
                return True
        for entry_id in ids:
            self._resolve(entry_id, {"id": entry_id, "ok": False, "error": error})
        return True

    def _expired_error(self, entry: Entry | None, how: str) -> ExpiredError:
        what = f"chunk {entry.meta.stream}#{entry.meta.seq}" if entry is not None else "a chunk"
        return ExpiredError(
            f"{what} was not started within expires={self.expires:g} s ({how}): the workers of queue"
            f" {self.settings.queue!r} are behind"
        )

    def settled(self, future: Future[Any]) -> None:
        """The emitter has handled this chunk's outcome: forget it (spool, claimed chunk in Redis)."""
        with self._cond:
            entry = self._resolved.pop(future, None)
            if entry is None:
                return
            self.spool.remove(entry.id)
            self._cond.notify_all()  # room in the budget; the dispatcher may be done
        if is_claimed(entry, self.settings):
            try:
                self._client.delete(claim_key(entry.id))
            except Exception:  # it expires anyway
                log.debug("could not delete the claimed chunk of %s", entry.id)

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
