"""The Celery executor's results: each worker's (sealed) reply resolves its chunk's Future, once.

The shared listener (:mod:`.listener`) offers every reply to :meth:`Outcomes._on_reply`: a reply whose MAC
does not check out is ignored and counted; a worker that lost Redis mid-task gets its chunk sent again; a
chunk discarded unstarted past its ``expires`` fails with ExpiredError; a reply for a batch message as a
whole (a worker without the batch task, or a failed batch) is spread over its chunks. A chunk leaves the
spool only once the emitter has handled its outcome (:meth:`Outcomes.settled`).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

from ..errors import RemoteTaskError
from .ledger import Ledger
from .protocol import claim_key, is_claimed, unseal

log = logging.getLogger("ocycle_dist.celery")
_TRANSIENT = ("ConnectionError", "TimeoutError", "BusyLoadingError")  # redis-py's, raised on a worker


def _transient(record: dict[str, Any]) -> bool:
    """Whether a reply is a failure of the worker's Redis connection rather than of the task."""
    return not record.get("ok") and bool(record.get("error")) and record["error"][0] in _TRANSIENT


class Outcomes(Ledger):
    """The results' part of :class:`~.executor.CeleryExecutor`."""

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

    def settled(self, future: Future[Any]) -> None:
        """The emitter has handled this chunk's outcome: forget it (spool, claimed chunk in Redis)."""
        with self._cond:
            entry = self._resolved.pop(future, None)
            if entry is None:
                return
            self.spool.remove(entry.id)
            if self._closing or self._full:  # the publisher may be done; a writer may wait for room (block)
                self._cond.notify_all()  # (not on every chunk: it would wake the publisher thread for nothing)
        if entry.claimed or is_claimed(entry, self.settings):
            try:
                self._client.delete(claim_key(entry.id))
            except Exception:  # it expires anyway
                log.debug("could not delete the claimed chunk of %s", entry.id)
