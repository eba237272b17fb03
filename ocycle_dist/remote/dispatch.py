"""The Celery executor's publisher thread: sending what is pending, sending again what went unanswered.

One thread per executor (:meth:`Dispatch._dispatch`) publishes the queued chunks in batches
(:mod:`.publisher`), encoding those left to it (:meth:`~.executor.CeleryExecutor.submit`); sends a chunk
again when its result has not come back after ``resend_after`` seconds (at-least-once), at once when the
worker holding it died (its lease lapsed, :mod:`.lease`) or when Redis is a new server (restarted empty,
failed over); fails a chunk nobody answered after ``max_attempts`` sends (DeliveryError) and expires those
past ``expires``. A publish that fails (Redis away, or an error reply) is retried with back-off, counted,
and logged once per episode; the chunks wait in the spool meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

from ..errors import DeliveryError, EncodeError
from .ledger import Ledger
from .protocol import is_claimed
from .publisher import YIELD_EVERY, publish
from .redis_client import CONFIG, classify, reason, redact
from .spool import Entry

log = logging.getLogger("ocycle_dist.celery")


class Dispatch(Ledger):
    """The publisher thread's part of :class:`~.executor.CeleryExecutor`."""

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
