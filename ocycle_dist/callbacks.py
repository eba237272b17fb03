"""Where ``on_done``/``on_error`` run: one small pool of threads shared by every emitter of the process.

Futures resolve on threads the emitter does not own: a pool's worker threads, or the listener shared by every
emitter of the process (the celery mode). Running user callbacks there would let one emitter's slow
``on_done`` delay every other emitter's results. Each emitter has a :class:`Mailbox`: its outcomes, handled
one at a time, in the order they arrive (or, with ``ordered``, in stream order). Mailboxes with work are run by
the threads of one :class:`CallbackPool`:

- a mailbox runs on one thread at a time, so an emitter's callbacks never overlap;
- a mailbox that has run for a while goes back behind the others (fairness);
- when every thread is busy (a slow callback) and a mailbox has waited longer than ``spawn_after``, the pool
  starts another thread, so a slow ``on_done`` delays only its own emitter; threads idle for ``idle_exit``
  end. A gateway of hundreds of emitters with quick callbacks runs them on one or two threads.

The backlog and the time callbacks take are visible in ``stats()``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ocycle_dist")


class CallbackPool:
    """Threads that run the mailboxes with work; see the module.

    Args:
        spawn_after: seconds a mailbox may wait while every thread is busy before another thread starts.
        idle_exit: seconds a thread waits for work before it ends.
        max_threads: threads at most.
    """

    def __init__(self, *, spawn_after: float = 0.05, idle_exit: float = 10.0, max_threads: int = 256) -> None:
        self.spawn_after, self.idle_exit, self.max_threads = spawn_after, idle_exit, max_threads
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # idle threads wait here
        self._watch = threading.Condition(self._lock)  # the watcher waits here
        self._ready: deque[tuple[float, Mailbox]] = deque()  # (queued at, mailbox), in order
        self._timers: list[tuple[float, int, Mailbox]] = []  # (at, tiebreak, mailbox): run again then
        self._ticket = itertools.count()
        self._threads = 0
        self._idle = 0  # threads waiting for work and not yet notified
        self._watcher: threading.Thread | None = None
        self._watching = False  # the watcher was told that a mailbox waits with no thread free
        self._spawned_at = float("-inf")  # the watcher's last start of a thread

    @property
    def threads(self) -> int:
        """Threads running mailboxes now (the watcher not counted)."""
        return self._threads

    def schedule(self, mailbox: Mailbox) -> None:
        """Queue ``mailbox`` to run; wake an idle thread, or start the first one."""
        with self._lock:
            self._ready.append((time.monotonic(), mailbox))
            self._dispatch()

    def later(self, mailbox: Mailbox, at: float) -> None:
        """Run ``mailbox`` again at monotonic time ``at`` (a held outcome's deadline)."""
        with self._lock:
            heapq.heappush(self._timers, (at, next(self._ticket), mailbox))
            self._start_watcher()
            self._watch.notify()

    def _dispatch(self) -> None:
        """Under the lock: get the ready mailboxes a thread."""
        if self._idle:
            self._idle -= 1
            self._work.notify()
        elif self._threads == 0:
            self._spawn()
        elif not self._watching:  # every thread is busy: the watcher starts another if this one waits too long
            self._watching = True
            self._start_watcher()
            self._watch.notify()

    def _spawn(self) -> None:
        self._threads += 1
        threading.Thread(target=self._run, name="ocycle-callbacks", daemon=True).start()

    def _start_watcher(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._watch_loop, name="ocycle-callbacks-watch", daemon=True)
            self._watcher.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._ready:
                    self._idle += 1
                    if not self._work.wait(self.idle_exit):
                        self._idle -= 1
                        if not self._ready:
                            self._threads -= 1
                            return
                _, mailbox = self._ready.popleft()
            try:
                mailbox.run()
            except Exception:  # a mailbox's own bug: never let it end the thread
                log.exception("running callbacks failed")

    def _watch_loop(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, mailbox = heapq.heappop(self._timers)
                    self._ready.append((now, mailbox))
                    if self._idle:
                        self._idle -= 1
                        self._work.notify()
                waits = []
                if self._ready and not self._idle:
                    starved = now - max(self._ready[0][0], self._spawned_at)
                    if starved >= self.spawn_after and self._threads < self.max_threads:
                        self._spawn()  # every thread is stuck in a callback: one more
                        self._spawned_at = now
                        continue
                    waits.append(self.spawn_after - starved)
                else:
                    self._watching = False
                if self._timers:
                    waits.append(self._timers[0][0] - now)
                self._watch.wait(max(0.001, min(waits)) if waits else None)


_pool: CallbackPool | None = None
_pool_lock = threading.Lock()


def shared_pool() -> CallbackPool:
    """The process's callback pool (made on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = CallbackPool()
        return _pool


class Mailbox:
    """The outcomes of one emitter, handled one at a time by ``handle(*item)`` on a :class:`CallbackPool`.

    Args:
        handle: what to run for each item (exceptions are logged: handlers report their own errors).
        pool: the pool that runs it (default: the process's).
        order: with ordering, ``order(item)`` is the item's sequence number and ``arrived_before(seq)`` says
            whether every chunk before ``seq`` still in flight has arrived here; an item then waits for those
            before it, up to ``hold`` seconds (after which it runs anyway, counted in ``out_of_order``).
    """

    def __init__(
        self,
        handle: Callable[..., None],
        pool: CallbackPool | None = None,
        *,
        order: Callable[[tuple[Any, ...]], int] | None = None,
        earlier_pending: Callable[[int, set[int]], bool] | None = None,
        hold: float = 0.0,
    ) -> None:
        self._handle = handle
        self._pool = pool or shared_pool()
        self._lock = threading.Lock()
        self._items: deque[tuple[Any, ...]] = deque()
        self._scheduled = False
        self._order, self._earlier_pending, self._hold = order, earlier_pending, hold
        self._held: list[tuple[int, float, tuple[Any, ...]]] = []  # (seq, arrived at, item): ordered mode
        self._arrived: set[int] = set()  # seqs put and not yet handled (ordered mode)
        self.backlog = 0  # items put and not yet handled
        self.out_of_order = 0  # items run before an earlier chunk's outcome because they waited ``hold``
        self.durations: deque[float] = deque(maxlen=1000)  # seconds each handled item took

    def put(self, *item: Any) -> None:
        """Queue ``item``; the mailbox is scheduled on the pool if it was not."""
        with self._lock:
            self.backlog += 1
            self._items.append(item)
            if self._order is not None:
                self._arrived.add(self._order(item))
            if self._scheduled:
                return
            self._scheduled = True
        self._pool.schedule(self)

    def run(self, slice_seconds: float = 0.05) -> None:
        """On a pool thread: handle what is queued, for about ``slice_seconds`` at most, then yield."""
        until = time.monotonic() + slice_seconds
        handled = 0
        while True:
            handled += 1
            if handled % 16 == 0:
                time.sleep(0)  # a writer's thread waiting for the GIL gets it between callbacks
            with self._lock:
                item = self._next()
                if item is None:
                    self._scheduled = False
                    return
            started = time.perf_counter()
            try:
                self._handle(*item)
            except Exception:  # a handler's own bug: never let it stop the others
                log.exception("callback handler failed")
            finally:
                self.durations.append(time.perf_counter() - started)
                with self._lock:
                    self.backlog -= 1
                    if self._order is not None:
                        self._arrived.discard(self._order(item))
            if time.monotonic() >= until:
                with self._lock:
                    if not self._items and not self._held:
                        self._scheduled = False
                        return
                self._pool.schedule(self)  # more to do (or a held item's timer to set): behind the other mailboxes
                return

    def _next(self) -> tuple[Any, ...] | None:
        """Under the lock: the next item to handle, or None (nothing, or every held item waits)."""
        if self._order is None:
            return self._items.popleft() if self._items else None
        now = time.monotonic()
        while self._items:
            item = self._items.popleft()
            heapq.heappush(self._held, (self._order(item), now, item))
        if not self._held:
            return None
        seq, arrived, item = self._held[0]
        assert self._earlier_pending is not None
        if not self._earlier_pending(seq, self._arrived):
            return heapq.heappop(self._held)[2]
        if now - arrived >= self._hold:
            self.out_of_order += 1
            return heapq.heappop(self._held)[2]
        self._pool.later(self, arrived + self._hold)  # run again then, unless an earlier outcome comes first
        return None

    def _releasable(self) -> bool:
        return (
            bool(self._held)
            and self._earlier_pending is not None
            and not self._earlier_pending(self._held[0][0], self._arrived)
        )
