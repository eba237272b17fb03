"""The hub: one per process and broker, shared by every celery-mode emitter of the process.

It holds the :class:`~.pending.Pending` table and the three parts that work on it, each whole in its module:

- one **publisher** thread (here, :meth:`Hub._publish_loop`): takes what is queued, encodes what the writers
  left to it, drops what expired, publishes (:mod:`.publisher`), and runs the timed checks of
  :mod:`.liveness`;
- one **listener** thread (:mod:`.listener`): pops the replies; :meth:`Hub._on_reply` resolves each chunk's
  Future, once;
- one owner of **liveness** (:mod:`.liveness`): a new server, a dead worker, a message gone; each queues the
  lost chunks again, first, without counting an attempt.

So a gateway process with hundreds of emitters runs two threads for them all (plus a small callback pool,
:mod:`ocycle_dist.callbacks`), and each emitter keeps its own spool, budget, settings and counters
(:class:`~.executor.CeleryExecutor`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any, ClassVar, Protocol

from ..errors import DeliveryError, EncodeError, ExpiredError, RemoteTaskError
from .listener import ReplyListener
from .liveness import LeaseWatch, ServerWatch, locate
from .pending import SENT, Entry, Owner, Pending
from .protocol import PREFIX, claim_key, is_claimed, unseal
from .publisher import YIELD_EVERY, publish
from .redis_client import CONFIG, classify, connect, reason, redact

log = logging.getLogger("ocycle_dist.celery")


class Executor(Owner, Protocol):
    """What the hub uses of an executor besides what entries need (:class:`.pending.Owner`)."""

    reply_key: str

    def bind(self, hub: Hub) -> None: ...


TAKE = 500  # chunks taken from the table per publish at most
_TRANSIENT = ("ConnectionError", "TimeoutError", "BusyLoadingError", "ReadOnlyError")  # redis-py's, on a worker


def _transient(record: dict[str, Any]) -> bool:
    """Whether a reply says the worker's Redis connection failed, rather than the task."""
    return not record.get("ok") and bool(record.get("error")) and record["error"][0] in _TRANSIENT


def _error_of(record: dict[str, Any]) -> tuple[str, str]:
    type_name, message = [*(record.get("error") or []), "Error", "unknown"][:2]
    return str(type_name), str(message)


class Hub:
    """See the module. Made and shared through :meth:`attach`; ends when its last executor detaches."""

    _hubs: ClassVar[dict[tuple[int, str, str], Hub]] = {}
    _hubs_lock = threading.Lock()

    @classmethod
    def attach(cls, executor: Executor) -> Hub:
        """The process's hub for ``executor``'s broker, with ``executor`` attached (made on first use)."""
        s = executor.settings
        key = (os.getpid(), s.broker_url, s.sentinel_master)
        with cls._hubs_lock:
            hub = cls._hubs.get(key)
            if hub is None or hub._stopped:
                hub = cls._hubs[key] = Hub(executor)
            hub._executors.append(executor)
            executor.bind(hub)
            hub.listener.listen(executor.reply_key)
            return hub

    def __init__(self, first: Executor) -> None:
        s = first.settings
        self.url, self.master = s.broker_url, s.sentinel_master
        self.token = uuid.uuid4().hex[:16]  # the reply list of this process's emitters with a memory spool
        self.table = Pending()
        self.server = ServerWatch(self._new_server)
        self.client = self._connect(s.socket_timeout)
        listener_client = self._connect(max(s.socket_timeout, 7.0))
        self.listener = ReplyListener(
            listener_client, self._on_reply, f"{PREFIX}wake:{self.token}", poll=min(5.0, s.socket_timeout / 2)
        )
        self.leases = LeaseWatch(self.client, s.worker_lease) if s.worker_lease > 0 else None
        self._executors: list[Executor] = []
        self._stopped = False
        self._stopping = False
        self._claims: list[str] = []  # claim keys of settled chunks, deleted with the next pipeline
        self._lease_at = 0.0  # when the leases were last read
        self._adopted_at = float("-inf")  # when chunks of an earlier producer were last taken over
        self.broker_up = threading.Event()
        self.broker_error: str | None = None
        self.counts = dict.fromkeys(("broker_errors", "thread_errors", "new_servers", "located"), 0)
        self._thread = threading.Thread(target=self._publisher, name="ocycle-publisher", daemon=True)
        self._thread.start()

    def _connect(self, socket_timeout: float) -> Any:
        return connect(
            self.url, socket_timeout=socket_timeout, master_name=self.master, on_connect=self.server.on_connect
        )

    # ---- executors come and go ------------------------------------------------------------------------------

    def detach(self, executor: Executor) -> None:
        """Forget ``executor`` (shut down, nothing of it pending); the last one out stops the hub."""
        with self._hubs_lock:
            if executor in self._executors:
                self._executors.remove(executor)
            if executor.reply_key != self.reply_key and all(e.reply_key != executor.reply_key for e in self._executors):
                self.listener.forget(executor.reply_key)
            if self._executors:
                return
            self._stopped = True
            if self._hubs.get((os.getpid(), self.url, self.master)) is self:
                del self._hubs[(os.getpid(), self.url, self.master)]
        with self.table.lock:
            self._stopping = True
            self.table.changed.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(10)
        self.listener.stop()

    @property
    def reply_key(self) -> str:
        from .protocol import reply_key

        return reply_key(self.token)

    def wake(self) -> None:
        """Wake the publisher (something to do that the table does not show: a claim to delete, closing)."""
        with self.table.lock:
            self.table.changed.notify()

    def adopted(self) -> None:
        """Chunks an earlier producer sent were taken over (as sent, with their delivery tags): once the listener
        has popped the replies waiting for them, those still unanswered are looked for in Redis, and only
        those gone are sent again."""
        with self.table.lock:
            self._adopted_at = time.monotonic()
            self.table.changed.notify()

    def forget_claim(self, entry_id: str) -> None:
        """Delete the claimed chunk of ``entry_id`` with the next pipeline (it expires anyway)."""
        with self.table.lock:
            self._claims.append(claim_key(entry_id))

    # ---- the publisher thread -------------------------------------------------------------------------------

    def _publisher(self) -> None:
        """Never dies of an error it did not expect: it logs it and goes on."""
        while True:
            try:
                self._publish_loop()
                break
            except Exception:
                self.counts["thread_errors"] += 1
                log.exception("the publisher of %s hit an unexpected error; it goes on", redact(self.url))
                time.sleep(1.0)
        try:
            self.client.close()
        except Exception:
            log.debug("closing the publisher's client", exc_info=True)

    def _publish_loop(self) -> None:
        backoff = 0.05
        while True:
            with self.table.lock:
                while not self.table.has_queued() and not self._stopping:
                    wait = self._next_check() - time.monotonic()
                    if wait <= 0:
                        break
                    self.table.changed.wait(None if wait == float("inf") else wait)
                claims, self._claims = self._claims, []
                if self._stopping:
                    self._delete_claims(claims)
                    return
            self._checks()
            batch = self._prepare(self.table.take(TAKE))
            if not batch and not claims:
                continue
            try:
                sent = publish(self.client, batch) if batch else []
                if claims:
                    self.client.delete(*claims)
            except Exception as exc:
                self.table.untake(batch)
                with self.table.lock:
                    self._claims[:0] = claims
                self._broker_failed(exc, first=self.broker_up.is_set() or backoff == 0.05)
                with self.table.lock:
                    if not self._stopping:
                        self.table.changed.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not self.broker_up.is_set() and backoff > 0.05:
                log.warning("Redis reachable again at %s: sending the chunks kept meanwhile", redact(self.url))
            self.broker_up.set()
            self.broker_error = None
            backoff = 0.05
            self.table.sent(batch, time.monotonic())
            self._count_sent(sent)

    def _delete_claims(self, claims: list[str]) -> None:
        """The last act of the publisher: delete the claimed chunks settled since its last pipeline."""
        if claims:
            try:
                self.client.delete(*claims)
            except Exception as exc:  # they expire anyway
                log.debug("could not delete %d claimed chunks: %s", len(claims), exc)

    def _count_sent(self, sent: list[list[Entry]]) -> None:
        by_owner: dict[Any, list[Entry]] = {}
        for group in sent:
            owner = group[0].owner
            by_owner.setdefault(owner, []).extend(group)
            owner.counts["messages"] += 1
            if len(group) > 1:
                owner.counts["batched"] += len(group)
        for owner, entries in by_owner.items():
            owner.counts["published"] += len(entries)
            owner.spool.mark_sent(entries)

    def _prepare(self, batch: list[Entry]) -> list[Entry]:
        """Of the entries taken: resolve as expired those past their deadline; encode those the writers left to
        this thread (a claimed chunk is only joined: its raw bytes go to Redis). One that cannot be encoded
        fails alone."""
        if not batch:
            return batch
        now = time.time()
        ok = []
        for i, entry in enumerate(batch):
            if entry.expires_at is not None and entry.expires_at < now:
                self._settle(entry, ExpiredError(self._expired_text(entry, "expired before it could be sent")))
                continue
            if entry.value is not None:
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    time.sleep(0)  # let the writer's thread run between chunks
                try:
                    if is_claimed(entry, entry.owner.settings):
                        entry.join()
                    else:
                        entry.encode()
                except EncodeError as exc:
                    self._settle(entry, exc)
                    continue
            ok.append(entry)
        return ok

    def _broker_failed(self, exc: Exception, *, first: bool) -> None:
        """A publish failed: count it, say why once per episode; the chunks wait in their spools meanwhile."""
        why = f"{type(exc).__name__}: {reason(exc)}"
        self.counts["broker_errors"] += 1
        if first or why != self.broker_error:
            if classify(exc) == CONFIG:
                log.error(
                    "Redis at %s refuses the producer (%s): check the password, ACL, db number or TLS in the URL;"
                    " chunks wait in the spool, counted in stats()",
                    redact(self.url),
                    why,
                )
            else:
                log.warning(
                    "Redis unreachable at %s or cannot take chunks now (%s); they wait in the spool",
                    redact(self.url),
                    why,
                )
        self.broker_error = why
        self.broker_up.clear()

    # ---- liveness: when to look, what to send again -----------------------------------------------------------

    def _soonest_resend(self) -> float:
        return min((e.settings.resend_after for e in list(self._executors)), default=120.0)

    def _next_check(self) -> float:
        """Under the table's lock: the monotonic time of the next timed check (leases, late chunks, claims)."""
        if self._claims:
            return time.monotonic() + 1.0
        if self.listener.drained_at < self._adopted_at:
            return time.monotonic() + 0.05  # taken over: their replies first, then look for them
        oldest = self.table.oldest_sent()
        if oldest is None:
            return float("inf")
        soon = oldest + self._soonest_resend()
        if self.leases is not None:
            soon = min(soon, max(oldest, self._lease_at) + self.leases.lease / 3)
        return soon

    def _checks(self) -> None:
        """The timed checks, on the publisher thread: the leases of the workers holding chunks out for a third of
        a lease, then the chunks out for longer than ``resend_after``."""
        now = time.monotonic()
        if self.listener.drained_at < self._adopted_at:
            return
        oldest = self.table.oldest_sent()
        if oldest is None:
            return
        if self.leases is not None and now - max(oldest, self._lease_at) >= self.leases.lease / 3:
            self._lease_at = now
            self._check_leases()
        if now - oldest >= self._soonest_resend():
            self._check_late(now)

    def _check_leases(self) -> None:
        assert self.leases is not None
        tag_of, task_of = self.table.sent_tags()
        try:
            lost = self.leases.check(tag_of, task_of)
            if lost:
                self.leases.forget_delivery(sorted({tag_of[t] for t, _ in lost if t in tag_of}))
        except Exception as exc:  # a Redis blip: the next round catches up
            log.debug("lease check failed: %s", exc)
            return
        entries = [e for task_id, _ in lost if (e := self.table.get(task_id)) is not None]
        self._recover(entries, "the worker holding them died (its lease lapsed)")

    def _check_late(self, now: float) -> None:
        """Chunks unanswered after ``resend_after`` and named by no lease: looked for in Redis; those still
        there wait on, those gone are lost (sent again, counted; failed after ``max_attempts`` losses)."""
        named = self.leases.named if self.leases is not None else set()
        late = [e for e in self.table.due(now, self._soonest_resend()) if e.id not in named]
        if not late:
            return
        queues: dict[str, Iterable[str]] = {}
        for entry in late:
            queues.setdefault(entry.owner.settings.queue, set()).add(entry.tag)  # type: ignore[attr-defined]
        try:
            found = locate(self.client, queues)
        except Exception as exc:
            log.debug("looking for late chunks failed: %s", exc)
            return
        self.counts["located"] += 1
        self.table.refresh([e for e in late if e.tag in found], now)  # still in Redis (queued, or held): wait on
        gone = [e for e in late if e.tag not in found]
        failed = []
        for entry in gone:
            entry.lost += 1
            if entry.lost >= entry.owner.settings.max_attempts:
                failed.append(entry)
        for entry in failed:
            owner = entry.owner
            owner.counts["undelivered"] += 1
            self._settle(
                entry,
                DeliveryError(
                    f"chunk {entry.meta.stream}#{entry.meta.seq} was sent {entry.sends} times and each time, after"
                    f" {owner.settings.resend_after:g} s without a result, it was neither in queue"
                    f" {owner.settings.queue!r}, nor held by a worker, nor answered (at {redact(self.url)}):"
                    " a purge, an evicting Redis, or a worker that takes it without replying?"
                ),
            )
        self._recover([e for e in gone if e not in failed], "no result, not in Redis any more", lost=True)

    def _new_server(self, run_id: str) -> None:
        """From :class:`.liveness.ServerWatch`, on the thread that reconnected: a new server lost what the old
        one held: everything sent and unanswered goes again, first."""
        self.counts["new_servers"] += 1
        if self.leases is not None:
            self.leases.forget()
        entries = self.table.requeue_all_sent()
        for entry in entries:
            entry.owner.counts["resent"] += 1
            entry.owner.counts["recovered"] += 1
        log.warning(
            "Redis at %s is a new server: sending the %d unanswered chunks again, first", redact(self.url), len(entries)
        )

    def _recover(self, entries: list[Entry], why: str, *, lost: bool = False) -> None:
        """Queue ``entries`` again, first (a recovery: not an attempt), and say so once per call."""
        again = self.table.requeue(entries)
        if not again:
            return
        for entry in again:
            owner = entry.owner
            owner.counts["resent"] += 1
            owner.counts["lost" if lost else "recovered"] += 1
        first = again[0].meta
        log.warning("%d chunk(s) sent again (%s), from %s#%d", len(again), why, first.stream, first.seq)

    # ---- the replies (on the listener's thread) ---------------------------------------------------------------

    def _on_reply(self, key: str, envelope: dict[str, Any]) -> bool:
        """Resolve the chunk a reply is for; False when no chunk waits for it (the listener counts it)."""
        entry_id = envelope.get("id")
        if not isinstance(entry_id, str):
            return False
        entry = self.table.get(entry_id)
        if entry is None:
            message = self.table.in_message(entry_id)  # a reply for a batch message as a whole
            if not message:
                return False
            record = self._unsealed(message[0], envelope)
            if record is not None:
                self._on_batch_reply(message, record)
            return True
        record = self._unsealed(entry, envelope)
        if record is None:
            return True
        if _transient(record):  # the worker lost Redis mid-task: not the chunk's fault, send it again
            self._recover([entry], f"its worker lost Redis: {_error_of(record)[0]}")
            return True
        if record.get("ok"):
            return self._settle(entry, None, record.get("result"))
        if record.get("expired") is True:
            return self._settle(entry, ExpiredError(self._expired_text(entry, "its worker discarded it unstarted")))
        return self._settle(entry, RemoteTaskError(*_error_of(record)))

    def _unsealed(self, entry: Entry, envelope: dict[str, Any]) -> dict[str, Any] | None:
        """The record of a reply for ``entry``; None when its MAC fails (ignored, counted, logged once)."""
        owner = entry.owner
        try:
            record = unseal(envelope, owner.mac_key)
        except Exception:  # a body that does not decode
            record = None
        if record is None:
            owner.counts["forged"] += 1
            (log.error if owner.counts["forged"] == 1 else log.debug)(
                "a reply for chunk %s failed authentication and was ignored (forged, or OCYCLE_REPLY_SECRET differs"
                " between producer and workers); counted",
                entry.id,
            )
        return record

    def _on_batch_reply(self, entries: list[Entry], record: dict[str, Any]) -> None:
        """A reply for a batch message as a whole: from a worker that does not know the batch task (its chunks
        go again, one message each, from now on), or a failure of the whole batch (each chunk fails with it)."""
        type_name, message = _error_of(record)
        owner = entries[0].owner
        if type_name == "NotRegistered":
            if owner.batching:
                log.warning(
                    "a worker of queue %r has no batch task (%s): sending one message per chunk from now on"
                    " (workers made with ocycle_dist.remote.worker.make_app() have it; OCYCLE_BATCH_MAX_CHUNKS=0"
                    " turns batching off)",
                    owner.settings.queue,
                    message,
                )
            owner.batching = False
            self._recover(entries, "a worker has no batch task")
            return
        if _transient(record):
            self._recover(entries, f"its worker lost Redis: {type_name}")
            return
        for entry in entries:
            if entry.state == SENT:
                self._settle(entry, RemoteTaskError(type_name, message))

    def _settle(self, entry: Entry, error: BaseException | None, result: Any = None) -> bool:
        """Take ``entry`` out of the table and resolve its Future (outside the table's lock), once."""
        if self.table.pop(entry.id) is None:
            return False  # resolved already: a second reply, or dropped meanwhile
        owner, future = entry.owner, entry.future
        assert future is not None
        entry.future = None
        if isinstance(error, ExpiredError):
            owner.counts["expired"] += 1
        if not future.done():
            _resolve(future, error, result)
        return True

    def _expired_text(self, entry: Entry, how: str) -> str:
        owner = entry.owner
        return (
            f"chunk {entry.meta.stream}#{entry.meta.seq} was not started within expires={owner.expires:g} s ({how}):"
            f" the workers of queue {owner.settings.queue!r} are behind"
        )


def _resolve(future: Future[Any], error: BaseException | None, result: Any) -> None:
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except Exception:  # cancelled (dropped) meanwhile: its outcome is counted there
        log.debug("a chunk's Future was resolved elsewhere", exc_info=True)
