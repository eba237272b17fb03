"""What the parts of the Celery executor share: its state, and the bookkeeping of the chunks sent.

:class:`~.executor.CeleryExecutor` is made of three parts, one module each: the executor itself (``submit``,
the spool's budget, shutdown), :class:`~.dispatch.Dispatch` (the publisher thread: sending, sending again,
watching the workers' leases and the server's restarts) and :class:`~.outcomes.Outcomes` (the workers'
replies resolving the chunks' Futures). This class declares the state they share, set by the executor's
``__init__``, and the small helpers they all use.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Any

from ..errors import ExpiredError
from .lease import LeaseWatch
from .settings import Settings
from .spool import Entry, MemorySpool


class Ledger:
    """The shared state of the Celery executor's parts (see the module); all of it guarded by ``_cond``."""

    settings: Settings
    expires: float | None  # seconds a chunk may wait for a worker to start it
    token: str  # this producer's: names its reply lists, keys their MAC
    spool: MemorySpool  # every chunk until its outcome is settled
    counts: dict[str, int]
    broker_up: threading.Event
    broker_error: str | None
    _client: Any  # redis.Redis
    _mac_key: bytes
    _cond: threading.Condition
    _closing: bool
    _full: bool  # the spool's budget is full (an episode, logged once)
    _batch: int  # the most messages in one publish
    _batching: bool  # batch messages, until a worker says it lacks the batch task
    _futures: dict[str, Future[Any]]  # task id -> Future, until answered or dropped
    _resolved: dict[Future[Any], Entry]  # answered, kept in the spool until settled()
    _queue: deque[Entry]  # to publish: new chunks, then chunks to send again
    _deadlines: deque[tuple[float, str, int]]  # (resend at, id, attempt), in send order
    _tag_of: dict[str, str]  # task id -> delivery tag of its last message, while unanswered
    _task_of: dict[str, list[str]]  # the reverse (a batch message's tag: all its chunks)
    _leases: LeaseWatch | None
    _lease_check_at: float
    _run_id: str | None  # the Redis server's, to tell a restart from a blip
    _has_info: bool

    def _finished(self) -> bool:
        """Under the lock: shut down and every chunk resolved and out of the spool."""
        return self._closing and not self._futures and not len(self.spool)

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

    def _expired_error(self, entry: Entry | None, how: str) -> ExpiredError:
        what = f"chunk {entry.meta.stream}#{entry.meta.seq}" if entry is not None else "a chunk"
        return ExpiredError(
            f"{what} was not started within expires={self.expires:g} s ({how}): the workers of queue"
            f" {self.settings.queue!r} are behind"
        )

    def _stop(self) -> None:
        """The publisher thread's last act (the executor's: detach from the listener, close the spool)."""
        raise NotImplementedError
