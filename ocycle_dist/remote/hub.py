"""The hub: one per process and broker, shared by every celery-mode emitter of the process.

It holds the :class:`~.pending.Pending` table and the parts that work on it, each whole in its module and given
the table by composition:

- one **publisher** thread (:mod:`.publisher`): takes what is queued and publishes it; runs the recovery's timed
  checks;
- one **listener** thread (:mod:`.listener`): pops the replies; :mod:`.outcomes` resolves each chunk's Future,
  once;
- one owner of **recovery** (:mod:`.recovery`, on what :mod:`.liveness` sees: a new server, a dead worker, a
  message gone): the lost chunks go again, first, never counted as an attempt.

So a gateway process with hundreds of emitters runs two threads for them all (plus a small callback pool,
:mod:`ocycle_dist.callbacks`), and each emitter keeps its own spool, budget, settings and counters
(:class:`~.executor.CeleryExecutor`).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, ClassVar, Protocol

from .listener import ReplyListener
from .liveness import ServerWatch
from .outcomes import Outcomes
from .pending import Owner, Pending
from .protocol import PREFIX, reply_key
from .publisher import Publisher
from .recovery import Recovery
from .redis_client import connect


class Executor(Owner, Protocol):
    """What the hub uses of an executor besides what entries need (:class:`.pending.Owner`)."""

    reply_key: str

    @property
    def closing(self) -> bool: ...  # shut down: takes no more chunks

    def bind(self, hub: Hub) -> None: ...


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
            if hub is None or hub._stopped or all(e.closing for e in hub._executors):
                # a hub left only to executors shut down with chunks pending (results that may never come) is left
                # to them: a new producer gets a hub of its own (the URL may even name another server by now)
                hub = cls._hubs[key] = Hub(executor)
            hub._executors.append(executor)
            executor.bind(hub)
            if executor.reply_key == hub.reply_key:  # a durable spool's own list: once its chunks are taken over
                hub.listener.listen(executor.reply_key)
            return hub

    def __init__(self, first: Executor) -> None:
        s = first.settings
        self.url, self.master = s.broker_url, s.sentinel_master
        self.token = uuid.uuid4().hex[:16]  # the reply list of this process's emitters with a memory spool
        self.reply_key = reply_key(self.token)
        self._executors: list[Executor] = []
        self._stopped = False
        self.table = Pending()
        self.server = ServerWatch(self._new_server, s.broker_url, s.allow_eviction)
        client = self._connect(s.socket_timeout)
        wake = f"{PREFIX}wake:{self.token}"
        self.outcomes = Outcomes(
            self.table,
            lambda entries, why: self.recovery.requeue(entries, why),
            lambda entries, why: self.recovery.lose(entries, why),
        )
        self.listener = ReplyListener(
            self._connect(max(s.socket_timeout, 7.0)), self.outcomes.on_reply, wake, poll=min(5.0, s.socket_timeout / 2)
        )
        self.recovery = Recovery(
            self.table, client, self.url, s.worker_lease, self._soonest, self.outcomes.settle, self.listener,
            self.server,
        )  # fmt: skip
        self.publisher = Publisher(self.table, client, self.url, self.outcomes.settle, self.recovery)

    def _connect(self, socket_timeout: float) -> Any:
        return connect(
            self.url, socket_timeout=socket_timeout, master_name=self.master, on_connect=self.server.on_connect
        )

    def _new_server(self, run_id: str) -> None:
        self.recovery.new_server(run_id)
        self.publisher.wake()

    def _soonest(self) -> float:
        """The smallest ``resend_after`` of the executors attached."""
        return min((e.settings.resend_after for e in list(self._executors)), default=120.0)

    @property
    def broker_up(self) -> threading.Event:
        """Set while the last publish reached Redis."""
        return self.publisher.broker_up

    @property
    def counts(self) -> dict[str, int]:
        """The process's counters for this broker (publishes refused, errors survived, new servers seen...)."""
        return {**self.publisher.counts, **self.recovery.counts}

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
            if self._hubs.get((os.getpid(), self.url, self.master)) is self:  # (a newer hub may have taken its place)
                del self._hubs[(os.getpid(), self.url, self.master)]
        self.publisher.stop()
        self.listener.stop()

    def adopted(self) -> None:
        """Chunks an earlier producer sent were taken over (as sent, with their delivery tags): once the listener
        has popped the replies waiting for them, those still unanswered are looked for in Redis, and only
        those gone are sent again."""
        self.recovery.adopted_at = time.monotonic()
        self.publisher.wake()

    def forget_claim(self, entry_id: str) -> None:
        """Delete the claimed chunk of ``entry_id`` with the next pipeline (it expires anyway)."""
        self.publisher.forget_claim(entry_id)
