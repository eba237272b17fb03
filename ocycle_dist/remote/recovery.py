"""Recovery: the one owner of sending again what a fault lost, per process and broker.

It acts on what :mod:`.liveness` sees: a new server (what it lacks and what workers had taken goes again), a dead
worker (what its lease named, and a message it had taken but not yet recorded: found nowhere, twice), keys evicted
by Redis (what is found nowhere in Redis any more), a message gone (a chunk late by ``resend_after`` and found
nowhere in Redis). Each time the lost chunks are queued again ahead of the chunks that never went out, in stream
order, and it never counts as an attempt: only a chunk lost with no reason known (``lost``: late and gone, or its
claimed chunk gone when its worker fetched it) counts, and ``max_attempts`` of those fail it with a DeliveryError
that says what happened. A chunk still queued (no worker consumes its queue yet) or held by a live worker is never
sent twice.

The timed checks run on the publisher's thread (:meth:`Recovery.check`), only while something is out: the
leases once a chunk has been out for a third of a lease, Redis's ``evicted_keys`` every :data:`EVICTION_POLL`
seconds when its ``maxmemory-policy`` lets it evict, the late chunks once one is late. A process whose chunks are
answered within that reads nothing.

**Evicted keys.** When ``evicted_keys`` has grown, every chunk sent and not answered, named by no lease, is looked
for in its queue and in kombu's unacknowledged set (:func:`.liveness.locate`); those found nowhere are sent again
once the reply lists have been read past that moment (a chunk answered meanwhile had its reply waiting there),
or :data:`EVICTION_SETTLE` seconds later; a claimed chunk whose message is still there but whose key was evicted
is stored again. Counted ``evicted``, logged once per episode (then at INFO).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..errors import DeliveryError
from .lease import read_leases
from .liveness import LeaseWatch, ServerWatch, forget_delivery, locate, where
from .pending import SENT, Entry, Pending
from .protocol import claim_key, claim_value
from .redis_client import redact

log = logging.getLogger("ocycle_dist.celery")
EVICTION_POLL = 1.0  # seconds between two reads of evicted_keys, while chunks are out and Redis may evict
SAY_EVERY = 1.0  # seconds: chunks sent again for one reason are said in one line at most this often
EVICTION_SETTLE = 1.0  # seconds after looking for evicted chunks, at most, before those not found go again


def summary(entries: Iterable[Entry], most: int = 12) -> str:
    """The chunks of ``entries`` as ``stream#4-9,12; other#3`` (runs of sequence numbers), ``most`` runs at most."""
    by_stream: dict[str, list[int]] = {}
    for entry in entries:
        by_stream.setdefault(entry.meta.stream, []).append(entry.meta.seq)
    parts, runs = [], 0
    for stream, seqs in by_stream.items():
        seqs.sort()
        spans: list[str] = []
        start = prev = seqs[0]
        for seq in [*seqs[1:], None]:
            if seq is not None and seq == prev + 1:
                prev = seq
                continue
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
            if seq is not None:
                start = prev = seq
        runs += len(spans)
        parts.append(f"{stream}#{','.join(spans)}")
        if runs >= most:
            break
    more = len(by_stream) - len(parts)
    return "; ".join(parts) + (f"; and {more} more stream(s)" if more else "")


def find(client: Any, entries: Iterable[Entry], what: str) -> set[str] | None:
    """Of the entries' delivery tags, those whose message is still in Redis (:func:`.liveness.locate`); None when
    Redis could not be asked (logged at DEBUG, naming ``what`` was looked for)."""
    queues: dict[str, set[str]] = {}
    for entry in entries:
        queues.setdefault(entry.owner.settings.queue, set()).add(entry.tag)
    try:
        return locate(client, queues)
    except Exception as exc:
        log.debug("looking for %s failed: %s", what, exc)
        return None


def restore_claims(client: Any, entries: list[Entry]) -> int:
    """Of claimed chunks whose message is still in Redis, store again those whose key was evicted (the message
    then runs as it is); how many, counted ``evicted``."""
    if not entries:
        return 0
    try:
        pipe = client.pipeline(transaction=False)
        for entry in entries:
            pipe.exists(claim_key(entry.id))
        missing = [e for e, there in zip(entries, pipe.execute(), strict=True) if not there]
        if not missing:
            return 0
        pipe = client.pipeline(transaction=False)
        for entry in missing:
            pipe.set(claim_key(entry.id), claim_value(entry), ex=max(1, int(entry.owner.settings.result_ttl)))
        pipe.execute()
    except Exception as exc:  # out of memory, a blip: a worker that finds one gone says so (a loss)
        log.debug("storing evicted claimed chunks again failed: %s", exc)
        return 0
    for entry in missing:
        entry.owner.counts["evicted"] += 1
    return len(missing)


def sort_out(client: Any, entries: list[Entry]) -> tuple[list[Entry], list[Entry], list[Entry]]:
    """Where a new server has the messages of ``entries``, sent to the old one: ``(waiting, taken, gone)``.

    Waiting: in its queues (a promoted replica has them), or drained by a pool process whose lease names them (it
    runs what it drained, whatever its worker's connection did). Taken: delivered to a worker otherwise; every
    worker lost its connection, and Celery drops what it had prefetched then, so these go again and leave kombu's
    unacknowledged set (here), lest they run again after the visibility timeout. Gone: nowhere in it (an empty
    restart, what the replica had not received). Raises what Redis raised."""
    queues: dict[str, set[str]] = {}
    for entry in entries:
        queues.setdefault(entry.owner.settings.queue, set()).add(entry.tag)
    delivered, queued = where(client, queues)
    draining = {tag for _, tags in read_leases(client).held.values() for tag in tags}
    taken = [e for e in entries if e.tag in delivered and e.tag not in draining]
    forget_delivery(client, sorted({e.tag for e in taken}))
    waiting = [e for e in entries if e.tag in draining or (queued is not None and e.tag in queued - delivered)]
    held = delivered | draining
    gone = [e for e in entries if e.tag not in held and (queued is None or e.tag not in queued)]
    return waiting, taken, gone


def explain_late(entry: Entry, url: str) -> str:
    settings = entry.owner.settings
    return (
        f"chunk {entry.meta.stream}#{entry.meta.seq} was sent {entry.sends} times and each time, after"
        f" {settings.resend_after:g} s without a result, it was neither in queue {settings.queue!r}, nor held by a"
        f" worker, nor answered (at {redact(url)}): a purge, an evicting Redis, or a worker that takes it"
        " without replying?"
    )


class ResentLog:
    """Chunks sent again, said in one line per reason: at once, then at most once every :data:`SAY_EVERY` seconds
    for all since (a worker killed holding 1,749 chunks, or a Redis that evicts them one by one, is a line, not one
    per chunk). Thread-safe: replies, the server watch and the timed checks requeue from different threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unsaid: dict[str, list[Entry]] = {}  # reason -> the chunks sent again, not yet said
        self._said_at: dict[str, float] = {}  # reason -> when it was last said

    def say(self, why: str, again: list[Entry]) -> None:
        now = time.monotonic()
        with self._lock:
            unsaid = self._unsaid.setdefault(why, [])
            unsaid += again
            if now - self._said_at.get(why, float("-inf")) < SAY_EVERY:
                return  # said by a later call, or by the timed checks (due)
            del self._unsaid[why]
            self._said_at[why] = now
        log.warning("%d chunk(s) sent again (%s): %s", len(unsaid), why, summary(unsaid))

    def due(self) -> float:
        """When what :meth:`say` held back is to be said (inf: nothing held)."""
        with self._lock:
            return min((self._said_at.get(why, 0.0) + SAY_EVERY for why in self._unsaid), default=float("inf"))

    def say_the_rest(self, now: float) -> None:
        """Say what :meth:`say` held back, once its second has passed."""
        if not self._unsaid:
            return
        with self._lock:
            due = [why for why in self._unsaid if now - self._said_at.get(why, float("-inf")) >= SAY_EVERY]
            held = [(why, self._unsaid.pop(why)) for why in due]
            for why in due:
                self._said_at[why] = now
        for why, entries in held:
            log.warning("%d chunk(s) sent again (%s) in the last %g s: %s", len(entries), why, SAY_EVERY,
                        summary(entries))  # fmt: skip


class Replies(Protocol):
    """What the recovery uses of the reply listener (:class:`.listener.ReplyListener`)."""

    drained_at: float  # monotonic time it last found every reply list empty

    def wake(self) -> None: ...  # look at the reply lists again at once


class Recovery:
    """See the module.

    Args:
        table: the pending table.
        client: a ``redis.Redis`` (leases, looking for late chunks).
        url: the broker's URL (for messages).
        lease: the workers' lease time (0: no leases).
        soonest: the smallest ``resend_after`` of the executors, read at each check.
        fail: settles an entry with an error (:meth:`.outcomes.Outcomes.settle`).
        replies: the reply listener (when it last found its lists empty; woken to look again at once).
    """

    def __init__(
        self,
        table: Pending,
        client: Any,
        url: str,
        lease: float,
        soonest: Callable[[], float],
        fail: Callable[[Entry, BaseException], object],
        replies: Replies,
        server: ServerWatch | None = None,
    ) -> None:
        self.table, self.client, self.url = table, client, url
        self.leases = LeaseWatch(client, lease) if lease > 0 else None
        self._soonest, self._fail, self._replies = soonest, fail, replies
        self.server = server  # its maxmemory-policy says whether evicted_keys is watched
        self._lease_at = 0.0  # when the leases were last read
        self.adopted_at = float("-inf")  # when chunks of an earlier producer were last taken over
        self._evicted: int | None = None  # evicted_keys at the last read (None: not read on this server yet)
        self._evicted_at = 0.0  # when it was last read
        # chunks found nowhere after an eviction or a worker's death: (entry, its tag then, why, counted as)
        self._suspects: list[tuple[Entry, str, str, str]] = []
        self._suspects_at = 0.0  # when they were looked for
        self._moved: deque[tuple[Entry, str]] = deque()  # chunks out when a new server was seen, their tags then
        self.counts = dict.fromkeys(("new_servers", "located", "evictions"), 0)
        self.said = ResentLog()

    # ---- what was lost ----------------------------------------------------------------------------------------

    def requeue(self, entries: Iterable[Entry], why: str, *, lost: bool = False, count: str = "recovered") -> None:
        """Queue ``entries`` again, first (a recovery: not an attempt, counted as ``count``; ``lost``: counted as
        lost), and say so (:class:`ResentLog`: one line per reason and second)."""
        again = self.table.requeue(entries)
        if not again:
            return
        for entry in again:
            entry.owner.counts["resent"] += 1
            entry.owner.counts["lost" if lost else count] += 1
        self.said.say(why, again)

    def lose(self, entries: list[Entry], why: str, explain: Callable[[Entry], str] | None = None) -> None:
        """``entries`` were lost with no reason known (``why``): each loss counts against ``max_attempts``; those
        past it fail with a DeliveryError (``explain(entry)`` says what happened), the others go again."""
        for entry in entries:
            entry.lost += 1
        failed = [e for e in entries if e.lost >= e.owner.settings.max_attempts]
        for entry in failed:
            entry.owner.counts["undelivered"] += 1
            text = explain(entry) if explain is not None else (
                f"chunk {entry.meta.stream}#{entry.meta.seq} was sent {entry.sends} times and lost each time ({why},"
                f" at {redact(self.url)})"
            )  # fmt: skip
            self._fail(entry, DeliveryError(text))
        self.requeue([e for e in entries if e not in failed], why, lost=True)

    def new_server(self, run_id: str) -> None:
        """From :class:`.liveness.ServerWatch`, on the thread that reconnected: a new server (a restart, a Sentinel
        failover) may lack what the old one held. Every chunk sent and unanswered is looked for in it at the next
        check (:meth:`_relocate`, on the publisher's thread, woken by the hub)."""
        self.counts["new_servers"] += 1
        self._evicted = None  # a new server counts its evictions from 0
        if self.leases is not None:
            self.leases.forget()
        self._moved.extend((e, e.tag) for e in self.table.sent_before(float("inf")))  # deque: thread-safe

    def _relocate(self) -> None:
        """The chunks out when a new server was seen, looked for in it (:func:`sort_out`): those it holds wait on,
        those workers had taken go again at once, those it lacks are suspects (:meth:`_resend_suspects`)."""
        moved = [self._moved.popleft() for _ in range(len(self._moved))]
        left = [e for e, tag in moved if e.tag == tag and e.state == SENT and self.table.get(e.id) is e]
        try:
            waiting, taken, gone = sort_out(self.client, left)
        except Exception as exc:  # away again, or a blip: what it holds is unknown, so everything goes again
            log.debug("looking for the unanswered chunks in the new server failed: %s", exc)
            self.requeue(left, "Redis is a new server")
            return
        self.table.refresh(waiting, time.monotonic())
        restore_claims(self.client, [e for e in waiting if e.claimed])
        self.requeue(taken, "Redis is a new server: the workers dropped what they had taken")
        self._suspect(gone, "Redis is a new server without them", "recovered")
        log.warning("Redis at %s is a new server: of the %d unanswered chunks, %d wait in its queues or run in a pool"
                    " process, %d had been taken by workers (sent again, first), %d are not in it (sent again, first,"
                    " unless answered meanwhile)", redact(self.url), len(left), len(waiting), len(taken),
                    len(gone))  # fmt: skip

    # ---- the timed checks (on the publisher's thread) ------------------------------------------------------------

    def next_check(self) -> float:
        """The monotonic time of the next check (inf: nothing is out)."""
        if self._moved:
            return time.monotonic()
        if self._replies.drained_at < self.adopted_at:
            return time.monotonic() + 0.05  # taken over: their replies first, then look for them
        unsaid = self.said.due()
        oldest = self.table.oldest_sent()
        if oldest is None:
            return unsaid
        soon = min(oldest + self._soonest(), unsaid)
        if self.leases is not None:
            soon = min(soon, max(oldest, self._lease_at) + self.leases.lease / 3)
        if self._watch_evictions():
            soon = min(soon, self._evicted_at + EVICTION_POLL)
        if self._suspects:  # sent again once the replies of that moment were read: looked at every 50 ms
            soon = min(soon, self._suspects_at + EVICTION_SETTLE, time.monotonic() + 0.05)
        return soon

    def check(self) -> None:
        """The leases of the workers holding chunks out for a third of a lease, then the chunks out for longer
        than ``resend_after``."""
        now = time.monotonic()
        self.said.say_the_rest(now)
        if self._moved:
            self._relocate()
        if self._replies.drained_at < self.adopted_at:
            return
        oldest = self.table.oldest_sent()
        if oldest is None:
            return
        if self.leases is not None and now - max(oldest, self._lease_at) >= self.leases.lease / 3:
            self._lease_at = now
            self._check_leases()
        settled = self._replies.drained_at > self._suspects_at or now - self._suspects_at >= EVICTION_SETTLE
        if self._suspects and settled:
            self._resend_suspects()
        if self._watch_evictions() and now - self._evicted_at >= EVICTION_POLL:
            self._evicted_at = now
            self._check_evictions()
        if now - oldest >= self._soonest():
            self._check_late(now)

    # ---- evicted keys --------------------------------------------------------------------------------------------

    def _watch_evictions(self) -> bool:
        return self.server is not None and self.server.may_evict

    def _check_evictions(self) -> None:
        """Read ``evicted_keys``; when it grew, look for every chunk out (see the module)."""
        try:
            evicted = int(self.client.info("stats").get("evicted_keys", 0))
        except Exception as exc:  # a Redis blip, or an ACL without +info: the next round tries again
            log.debug("reading evicted_keys failed: %s", exc)
            return
        before, self._evicted = self._evicted, evicted
        if before is None or evicted <= before:
            return
        self.counts["evictions"] += 1
        named = self.leases.named if self.leases is not None else set()
        out = [e for e in self.table.sent_before(time.monotonic()) if e.id not in named]
        found = find(self.client, out, "evicted chunks")
        if found is None:
            self._evicted = before  # look again at the next round
            return
        policy = self.server.policy if self.server is not None else "?"
        gone = [e for e in out if e.tag not in found]
        claims = restore_claims(self.client, [e for e in out if e.tag in found and e.claimed])
        (log.warning if self.counts["evictions"] == 1 else log.info)(
            "Redis at %s evicted %d key(s) (maxmemory-policy %s): of the %d chunks out, %d are gone from it (they go"
            " again unless answered meanwhile) and %d claimed chunks of messages still there were stored again",
            redact(self.url), evicted - before, policy, len(out), len(gone), claims)  # fmt: skip
        self._suspect(gone, f"Redis evicted them: maxmemory-policy {policy}", "evicted")

    def _suspect(self, entries: list[Entry], why: str, count: str) -> None:
        """``entries`` were found nowhere in Redis: sent again (:meth:`_resend_suspects`, counted as ``count``) unless
        answered once the replies of this moment were read; the listener is woken to read them at once."""
        self._suspects.extend((e, e.tag, why, count) for e in entries)
        self._suspects_at = time.monotonic()
        if entries:
            self._replies.wake()

    def _resend_suspects(self) -> None:
        """The chunks found nowhere after an eviction or a worker's death, still unanswered once the replies of
        that moment were read: looked for once more (a live worker records what it takes within milliseconds),
        those still nowhere and named by no lease sent again."""
        suspects, self._suspects = self._suspects, []
        left = [(e, why, count) for e, tag, why, count in suspects if e.tag == tag and self.table.get(e.id) is e]
        if not left:
            return
        found = find(self.client, [e for e, _, _ in left], "suspected chunks")
        if found is None:  # a blip: look again at the next round
            self._suspects = [(e, e.tag, why, count) for e, why, count in left]
            return
        named = self.leases.named if self.leases is not None else set()
        by_reason: dict[tuple[str, str], list[Entry]] = {}
        for entry, why, count in left:
            if entry.tag not in found and entry.id not in named:
                by_reason.setdefault((why, count), []).append(entry)
        for (why, count), entries in by_reason.items():
            self.requeue(entries, why, count=count)

    def _sweep(self) -> None:
        """A worker's lease is gone: a message it had taken from its queue but not yet recorded (kombu's BRPOP
        reply read, its unacknowledged entry not yet written) died with it, named nowhere. Every chunk out that
        no lease names is looked for; those found nowhere are suspects (see :meth:`_resend_suspects`)."""
        named = self.leases.named if self.leases is not None else set()
        out = [e for e in self.table.sent_before(time.monotonic()) if e.id not in named]
        found = find(self.client, out, "what a dead worker took")
        if found is None:  # the late check still finds them
            return
        why = "taken from the queue by a worker that died before recording it"
        self._suspect([e for e in out if e.tag not in found], why, "recovered")

    def _check_leases(self) -> None:
        assert self.leases is not None
        tag_of, task_of = self.table.sent_tags()
        try:
            lost = self.leases.check(tag_of, task_of)
            # the deliveries of a dead worker: of chunks lost with it, and of chunks it answered and died before
            # acknowledging, which kombu would otherwise run again after the visibility timeout
            dead = {tag_of[t] for t, _ in lost if t in tag_of} | self.leases.take_released()
            if dead:
                forget_delivery(self.client, sorted(dead))
        except Exception as exc:  # a Redis blip: the next round catches up
            log.debug("lease check failed: %s", exc)
            return
        entries = [e for task_id, _ in lost if (e := self.table.get(task_id)) is not None]
        self.requeue(entries, "the worker holding them died (its lease lapsed)")
        if self.leases.departed:
            self._sweep()

    def _check_late(self, now: float) -> None:
        """Chunks unanswered after ``resend_after`` and named by no lease: looked for in Redis; those still
        there wait on, those gone are lost (sent again, counted; failed after ``max_attempts`` losses)."""
        named = self.leases.named if self.leases is not None else set()
        late = [e for e in self.table.due(now, self._soonest()) if e.id not in named]
        if not late:
            return
        found = find(self.client, late, "late chunks")
        if found is None:
            return
        self.counts["located"] += 1
        self.table.refresh([e for e in late if e.tag in found], now)  # still in Redis (queued, or held): wait on
        gone = [e for e in late if e.tag not in found]
        self.lose(gone, "no result, not in Redis any more", lambda e: explain_late(e, self.url))
