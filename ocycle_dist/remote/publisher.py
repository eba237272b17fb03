"""Publishing: the task messages of many chunks, of every emitter of a process, to Redis in one round trip.

:class:`Publisher` is the one thread per process and broker that does it: it takes what the pending table
queues, encodes what the writers left to it, drops what expired, publishes, and runs the recovery's timed
checks. A publish that fails (Redis away, or an error reply) is retried with back-off, counted, and logged once
per episode; the chunks wait in their spools meanwhile.

The messages are built by :mod:`.protocol` without Celery's per-message overhead, so what is pending goes out
as one pipeline: per queue, one LPUSH of the new messages (behind what waits) and one RPUSH of the messages
sent again by a recovery (ahead of what waits: the end the workers pop from), plus a SET for each claimed
(large) chunk. The reply list travels as the message's ``reply_to``, so a worker can answer even for a task
it does not know.

Consecutive pending chunks of the same emitter and task go as one batch message
(:func:`.protocol.batch_message`), up to ``batch_max_chunks`` chunks and ``batch_max_bytes`` bytes; a lone
chunk goes as a plain task message, so an idle stream's latency and what a worker without the batch task sees
are unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ..errors import EncodeError, ExpiredError
from .outcomes import expired_text
from .pending import Entry, Pending
from .protocol import batch_message, claim_key, is_claimed, task_message
from .redis_client import CONFIG, classify, reason, redact
from .settings import Settings

log = logging.getLogger("ocycle_dist.celery")
TAKE = 500  # chunks taken from the table per publish at most
# ... and about this many bytes of chunks: redis-py packs a pipeline's commands in one C call, holding the GIL
# (a writer's thread waits meanwhile): a gateway's whole backlog in one pipeline would hold it far too long.
TAKE_BYTES = 1 << 20

# Messages built between two yields of the GIL. A writer thread waiting for the GIL would otherwise wait
# for the interpreter's switch interval (5 ms) while a batch of hundreds is built: write() would miss its goal.
YIELD_EVERY = 8


def groups(entries: list[Entry], settings: Settings, *, batch: bool = True) -> list[list[Entry]]:
    """``entries`` (of one emitter) cut into messages: runs of the same task, at most ``batch_max_chunks``
    chunks and ``batch_max_bytes`` bytes each (a claimed chunk counts as its key); in order."""
    cap, budget = settings.batch_max_chunks, settings.batch_max_bytes
    if cap <= 1 or not batch:
        return [[entry] for entry in entries]
    out: list[list[Entry]] = []
    current: list[Entry] = []
    nbytes = 0
    for entry in entries:
        size = 64 if is_claimed(entry, settings, batch=True) else entry.size
        if current and (entry.task != current[0].task or len(current) >= cap or nbytes + size > budget):
            out.append(current)
            current, nbytes = [], 0
        current.append(entry)
        nbytes += size
    if current:
        out.append(current)
    return out


def publish(client: Any, entries: list[Entry]) -> list[list[Entry]]:
    """Push the entries' messages to their queues in one round trip (their claimed chunks first), each with a
    new delivery tag (``entry.tag``). An entry sent before (it has a tag) goes ahead of what waits in its
    queue. Returns the groups sent as one message each."""
    old_tags = [entry.tag for entry in entries]
    try:
        return _publish(client, entries)
    except BaseException:  # nothing is known to be sent: the entries keep the tags of their last message
        for entry, tag in zip(entries, old_tags, strict=True):
            entry.tag = tag
        raise


def _publish(client: Any, entries: list[Entry]) -> list[list[Entry]]:
    pipe = client.pipeline(transaction=False)
    by_owner: dict[Any, list[Entry]] = defaultdict(list)
    for entry in entries:
        by_owner[entry.owner].append(entry)
    new: dict[str, list[bytes]] = defaultdict(list)
    again: dict[str, list[bytes]] = defaultdict(list)
    sent: list[list[Entry]] = []
    built = 0
    for owner, mine in by_owner.items():
        settings: Settings = owner.settings
        ttl = max(1, int(settings.result_ttl))
        for group in groups(mine, settings, batch=owner.batching):
            built += 1
            if built % YIELD_EVERY == 0:
                time.sleep(0)  # let the writer's thread run: a batch is built in Python, holding the GIL
            ahead = any(entry.tag for entry in group)  # sent before: interrupted by a fault, it goes first
            tag = str(uuid.uuid4())  # a new one per send: each message has its own
            for entry in group:
                entry.tag = tag
            if len(group) == 1:
                msg, claimed = task_message(group[0], settings, owner.token)
                if claimed is not None:
                    pipe.set(claim_key(group[0].id), claimed, ex=ttl)
            else:
                msg, big = batch_message(group, settings, tag, tag, owner.token)  # its task id is its tag
                for entry, value in big:
                    pipe.set(claim_key(entry.id), value, ex=ttl)
            (again if ahead else new)[settings.queue].append(msg)
            sent.append(group)
    for queue, messages in again.items():
        pipe.rpush(queue, *reversed(messages))  # the workers pop from the right: the first of these first
    for queue, messages in new.items():
        pipe.lpush(queue, *messages)
    pipe.execute()
    return sent


class Publisher:
    """The publisher thread of a process and broker; see the module.

    Args:
        table: the pending table.
        client: its ``redis.Redis``.
        url: the broker's URL (for messages).
        settle: settles an entry with an error (:meth:`.outcomes.Outcomes.settle`).
        recovery: its timed checks (:class:`.recovery.Recovery`).
    """

    def __init__(self, table: Pending, client: Any, url: str, settle: Callable[[Entry, BaseException], object],
                 recovery: Any) -> None:  # fmt: skip
        self.table, self.client, self.url = table, client, url
        self._settle, self._recovery = settle, recovery
        self._claims: list[str] = []  # claim keys of settled chunks, deleted with the next pipeline
        self._claims_at = 0.0  # when the first of them was added: they are deleted a second later at the latest
        self._stopping = False
        self.broker_up = threading.Event()
        self.broker_error: str | None = None
        self.counts = dict.fromkeys(("broker_errors", "thread_errors"), 0)
        self._thread = threading.Thread(target=self._run, name="ocycle-publisher", daemon=True)
        self._thread.start()

    def forget_claim(self, entry_id: str) -> None:
        """Delete the claimed chunk of ``entry_id`` with the next pipeline (it expires anyway)."""
        with self.table.lock:
            if not self._claims:
                self._claims_at = time.monotonic()
            self._claims.append(claim_key(entry_id))

    def wake(self) -> None:
        """Look at the table (and the checks' timers) again now."""
        with self.table.lock:
            self.table.changed.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current publish (the claims to delete are deleted first)."""
        with self.table.lock:
            self._stopping = True
            self.table.changed.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        """Never dies of an error it did not expect: it logs it and goes on."""
        while True:
            try:
                self._loop()
                break
            except Exception:
                self.counts["thread_errors"] += 1
                log.exception("the publisher of %s hit an unexpected error; it goes on", redact(self.url))
                time.sleep(1.0)
        try:
            self.client.close()
        except Exception:
            log.debug("closing the publisher's client", exc_info=True)

    def _loop(self) -> None:
        backoff = 0.05
        while True:
            with self.table.lock:
                while not self.table.has_queued() and not self._stopping:
                    due = self._recovery.next_check()  # the recovery's checks run while claims wait, too
                    if self._claims:
                        due = min(due, self._claims_at + 1.0)
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    self.table.changed.wait(None if wait == float("inf") else wait)
                claims, self._claims = self._claims, []
                if self._stopping:
                    self._delete(claims)
                    return
            self._recovery.check()
            batch = self._prepare(self.table.take(TAKE, TAKE_BYTES))
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
                self._failed(exc, first=self.broker_up.is_set() or backoff == 0.05)
                with self.table.lock:
                    if not self._stopping:
                        self.table.changed.wait(backoff)
                backoff = min(backoff * 2, 0.5)  # a promoted master or a restarted Redis is seen within 0.5 s
                continue
            if not self.broker_up.is_set() and backoff > 0.05:
                log.warning("Redis reachable again at %s: sending the chunks kept meanwhile", redact(self.url))
            self.broker_up.set()
            self.broker_error = None
            backoff = 0.05
            self.table.sent(batch, time.monotonic())
            _count_sent(sent)

    def _delete(self, claims: list[str]) -> None:
        if claims:
            try:
                self.client.delete(*claims)
            except Exception as exc:  # they expire anyway
                log.debug("could not delete %d claimed chunks: %s", len(claims), exc)

    def _prepare(self, batch: list[Entry]) -> list[Entry]:
        """Of the entries taken: settle as expired those past their deadline; encode those the writers left to
        this thread (a claimed chunk is only joined: its raw bytes go to Redis). One that cannot be encoded fails
        alone."""
        now = time.time()
        ok = []
        for i, entry in enumerate(batch):
            if entry.expires_at is not None and entry.expires_at < now:
                self._settle(entry, ExpiredError(expired_text(entry, "expired before it could be sent")))
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

    def _failed(self, exc: Exception, *, first: bool) -> None:
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


def _count_sent(sent: list[list[Entry]]) -> None:
    """Count the messages and chunks sent per executor; a durable spool records their delivery tags."""
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
