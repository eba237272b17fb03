"""Each chunk's outcome, once: from its worker's (sealed) reply, or from the producer itself.

:class:`Outcomes` is the listener's handler (:mod:`.listener`): a reply whose MAC does not check out is ignored
and counted, and so is a result computed on another chunk than the one sent (with a reply secret: the reply
carries the digest of the chunk its worker ran); a worker that lost Redis mid-task has its chunk sent again (a
recovery, not an attempt), and so has one whose claimed chunk was gone from Redis (a loss: it counts against
``max_attempts``); a chunk discarded unstarted past its ``expires`` fails with ExpiredError; a reply for a
batch message as a whole (a worker without the batch task, or a failed batch) is spread over its chunks.
:meth:`Outcomes.settle` is the one place a chunk leaves the pending table with an outcome: the publisher (expired
before sending, cannot be encoded) and the recovery (lost too often) settle through it too. Futures are resolved
outside the table's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..errors import ExpiredError, RemoteTaskError
from .pending import SENT, Entry, Pending
from .protocol import chunk_digest, unseal

log = logging.getLogger("ocycle_dist.celery")
_TRANSIENT = ("ConnectionError", "TimeoutError", "BusyLoadingError", "ReadOnlyError")  # redis-py's, on a worker
Recover = Callable[[list[Entry], str], None]


def transient(record: dict[str, Any]) -> bool:
    """Whether a reply says the worker's Redis connection failed, rather than the task."""
    return not record.get("ok") and bool(record.get("error")) and record["error"][0] in _TRANSIENT


def error_of(record: dict[str, Any]) -> tuple[str, str]:
    """A failure reply's ``(type name, message)``."""
    type_name, message = [*(record.get("error") or []), "Error", "unknown"][:2]
    return str(type_name), str(message)


def expired_text(entry: Entry, how: str) -> str:
    """What an ExpiredError of ``entry`` says."""
    owner = entry.owner
    return (
        f"chunk {entry.meta.stream}#{entry.meta.seq} was not started within expires={owner.expires:g} s ({how}):"
        f" the workers of queue {owner.settings.queue!r} are behind"
    )


class Outcomes:
    """Resolves the chunks of a pending table; see the module.

    Args:
        table: the pending table.
        recover: queues entries again, first (a recovery), with the reason.
        lose: the same for entries lost with no reason known (a loss counts against ``max_attempts``).
    """

    def __init__(self, table: Pending, recover: Recover, lose: Recover | None = None) -> None:
        self.table, self.recover, self.lose = table, recover, lose

    def on_reply(self, key: str, envelope: dict[str, Any]) -> bool:
        """A reply from the listener; False when no chunk waits for it (the listener counts it)."""
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
        if record is None or not self._bound(entry, record):
            return True
        if transient(record):  # the worker lost Redis mid-task: not the chunk's fault, send it again
            self.recover([entry], f"its worker lost Redis: {error_of(record)[0]}")
            return True
        if error_of(record)[0] == "ClaimGoneError" and self.lose is not None:  # evicted, or past result_ttl
            self.lose([entry], "its claimed chunk was gone from Redis when its worker fetched it")
            return True
        if record.get("ok"):
            return self.settle(entry, None, record.get("result"))
        if record.get("expired") is True:
            return self.settle(entry, ExpiredError(expired_text(entry, "its worker discarded it unstarted")))
        return self.settle(entry, RemoteTaskError(*error_of(record)))

    def settle(self, entry: Entry, error: BaseException | None, result: Any = None) -> bool:
        """Take ``entry`` out of the table and resolve its Future with ``error`` or ``result``, once."""
        if self.table.pop(entry.id) is None:
            return False  # resolved already: a second reply, or dropped meanwhile
        future = entry.future
        entry.future = None
        if isinstance(error, ExpiredError):
            entry.owner.counts["expired"] += 1
        if future is not None and not future.done():
            _resolve(future, error, result)
        return True

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

    def _bound(self, entry: Entry, record: dict[str, Any]) -> bool:
        """With a reply secret, whether a result answers the chunk sent: its worker ran a chunk of the same
        digest (:mod:`.protocol`); else it is ignored, counted as forged, logged once. Failures need no digest."""
        owner = entry.owner
        if not record.get("ok") or not owner.settings.reply_secret:
            return True
        if record.get("digest") == chunk_digest(entry):
            return True
        owner.counts["forged"] += 1
        (log.error if owner.counts["forged"] == 1 else log.debug)(
            "a result for chunk %s was computed on another chunk than the one sent (%s) and was ignored; counted as"
            " forged",
            entry.id,
            "no digest: a worker older than this producer?" if "digest" not in record else "another digest",
        )
        return False

    def _on_batch_reply(self, entries: list[Entry], record: dict[str, Any]) -> None:
        """A reply for a batch message as a whole: from a worker that does not know the batch task (its chunks
        go again, one message each, from now on), or a failure of the whole batch (each chunk fails with it)."""
        type_name, message = error_of(record)
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
            self.recover(entries, "a worker has no batch task")
        elif transient(record):
            self.recover(entries, f"its worker lost Redis: {type_name}")
        else:
            for entry in entries:
                if entry.state == SENT:
                    self.settle(entry, RemoteTaskError(type_name, message))


def _resolve(future: Future[Any], error: BaseException | None, result: Any) -> None:
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except Exception:  # cancelled (dropped) meanwhile: its outcome is counted there
        log.debug("a chunk's Future was resolved elsewhere", exc_info=True)
