"""One thread per emitter that runs its ``on_done``/``on_error``, in the order the outcomes arrive.

Futures resolve on threads the emitter does not own: a pool's worker threads, or a listener shared by every
emitter of the process (the celery mode). Running user callbacks there would let one emitter's slow
``on_done`` delay every other emitter's results; here each emitter waits only on its own callbacks. The
backlog and the time callbacks take are visible in ``stats()``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ocycle_dist")
_STOP = object()


class CallbackThread:
    """Runs ``handle(*item)`` for each item put, on one daemon thread, in order.

    Args:
        handle: what to run for each item (exceptions are logged: handlers report their own errors).
        name: the thread's name.
    """

    def __init__(self, handle: Callable[..., None], name: str) -> None:
        self._handle = handle
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.backlog = 0  # items put and not yet handled
        self.durations: deque[float] = deque(maxlen=1000)  # seconds each handled item took

    def put(self, *item: Any) -> None:
        """Queue ``item``; starts the thread on first use."""
        with self._lock:
            self.backlog += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, args=(self._queue,), name=self._name, daemon=True)
                self._thread.start()
            self._queue.put(item)

    def stop(self) -> None:
        """Let the thread end once what is queued has been handled (a later put starts a new one)."""
        with self._lock:
            if self._thread is not None:
                self._queue.put(_STOP)
                self._queue = queue.SimpleQueue()
                self._thread = None

    def _run(self, items: queue.SimpleQueue[Any]) -> None:
        while True:
            item = items.get()
            if item is _STOP:
                return
            started = time.perf_counter()
            try:
                self._handle(*item)
            except Exception:  # a handler's own bug: never let it end the thread
                log.exception("callback handler failed")
            finally:
                self.durations.append(time.perf_counter() - started)
                with self._lock:
                    self.backlog -= 1
