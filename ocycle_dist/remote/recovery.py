"""Recovery: the one owner of sending again what a fault lost, per process and broker.

It acts on what :mod:`.liveness` sees: a new server (everything sent and unanswered goes again), a dead worker
(what its lease named), a message gone (a chunk late by ``resend_after`` and found nowhere in Redis). Each time
the lost chunks are queued again ahead of the chunks that never went out, in stream order, and it never
counts as an attempt: only a chunk lost with no reason known (``lost``) counts, and ``max_attempts`` of those fail
it with a DeliveryError that says what happened. A chunk still queued (no worker consumes its queue yet) or held
by a live worker is never sent twice.

The timed checks run on the publisher's thread (:meth:`Recovery.check`), only while something is out: the
leases once a chunk has been out for a third of a lease, the late chunks once one is late. A process whose
chunks are answered within that reads nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import DeliveryError
from .liveness import LeaseWatch, locate
from .pending import Entry, Pending
from .redis_client import redact

log = logging.getLogger("ocycle_dist.celery")


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


class Recovery:
    """See the module.

    Args:
        table: the pending table.
        client: a ``redis.Redis`` (leases, looking for late chunks).
        url: the broker's URL (for messages).
        lease: the workers' lease time (0: no leases).
        soonest: the smallest ``resend_after`` of the executors, read at each check.
        fail: settles an entry with an error (:meth:`.outcomes.Outcomes.settle`).
    """

    def __init__(
        self,
        table: Pending,
        client: Any,
        url: str,
        lease: float,
        soonest: Callable[[], float],
        fail: Callable[[Entry, BaseException], object],
        drained_at: Callable[[], float],
    ) -> None:
        self.table, self.client, self.url = table, client, url
        self.leases = LeaseWatch(client, lease) if lease > 0 else None
        self._soonest, self._fail, self._drained_at = soonest, fail, drained_at
        self._lease_at = 0.0  # when the leases were last read
        self.adopted_at = float("-inf")  # when chunks of an earlier producer were last taken over
        self.counts = dict.fromkeys(("new_servers", "located"), 0)

    # ---- what was lost ----------------------------------------------------------------------------------------

    def requeue(self, entries: Iterable[Entry], why: str, *, lost: bool = False) -> None:
        """Queue ``entries`` again, first (a recovery: not an attempt), and say so once per call."""
        again = self.table.requeue(entries)
        if not again:
            return
        for entry in again:
            entry.owner.counts["resent"] += 1
            entry.owner.counts["lost" if lost else "recovered"] += 1
        log.warning("%d chunk(s) sent again (%s): %s", len(again), why, summary(again))

    def new_server(self, run_id: str) -> None:
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

    # ---- the timed checks (on the publisher's thread) ------------------------------------------------------------

    def next_check(self) -> float:
        """The monotonic time of the next check (inf: nothing is out)."""
        if self._drained_at() < self.adopted_at:
            return time.monotonic() + 0.05  # taken over: their replies first, then look for them
        oldest = self.table.oldest_sent()
        if oldest is None:
            return float("inf")
        soon = oldest + self._soonest()
        if self.leases is not None:
            soon = min(soon, max(oldest, self._lease_at) + self.leases.lease / 3)
        return soon

    def check(self) -> None:
        """The leases of the workers holding chunks out for a third of a lease, then the chunks out for longer
        than ``resend_after``."""
        now = time.monotonic()
        if self._drained_at() < self.adopted_at:
            return
        oldest = self.table.oldest_sent()
        if oldest is None:
            return
        if self.leases is not None and now - max(oldest, self._lease_at) >= self.leases.lease / 3:
            self._lease_at = now
            self._check_leases()
        if now - oldest >= self._soonest():
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
        self.requeue(entries, "the worker holding them died (its lease lapsed)")

    def _check_late(self, now: float) -> None:
        """Chunks unanswered after ``resend_after`` and named by no lease: looked for in Redis; those still
        there wait on, those gone are lost (sent again, counted; failed after ``max_attempts`` losses)."""
        named = self.leases.named if self.leases is not None else set()
        late = [e for e in self.table.due(now, self._soonest()) if e.id not in named]
        if not late:
            return
        queues: dict[str, set[str]] = {}
        for entry in late:
            queues.setdefault(entry.owner.settings.queue, set()).add(entry.tag)
        try:
            found = locate(self.client, queues)  # type: ignore[arg-type]
        except Exception as exc:
            log.debug("looking for late chunks failed: %s", exc)
            return
        self.counts["located"] += 1
        self.table.refresh([e for e in late if e.tag in found], now)  # still in Redis (queued, or held): wait on
        gone = [e for e in late if e.tag not in found]
        for entry in gone:
            entry.lost += 1
        failed = [e for e in gone if e.lost >= e.owner.settings.max_attempts]
        for entry in failed:
            owner = entry.owner
            owner.counts["undelivered"] += 1
            self._fail(
                entry,
                DeliveryError(
                    f"chunk {entry.meta.stream}#{entry.meta.seq} was sent {entry.sends} times and each time, after"
                    f" {owner.settings.resend_after:g} s without a result, it was neither in queue"
                    f" {owner.settings.queue!r}, nor held by a worker, nor answered (at {redact(self.url)}):"
                    " a purge, an evicting Redis, or a worker that takes it without replying?"
                ),
            )
        self.requeue([e for e in gone if e not in failed], "no result, not in Redis any more", lost=True)
