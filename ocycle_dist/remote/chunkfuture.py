"""The Future of one chunk sent to workers: a ``concurrent.futures.Future`` in what the emitter uses of it, in one
object.

A stdlib Future carries a Condition, a lock, a dict and two lists: six objects for the garbage collector to visit
per chunk waiting for its result, which made its pauses grow with a long outage's backlog. This one has four
slots and shares one lock among all chunks; only a caller blocking in :meth:`ChunkFuture.result` waits on a
(shared) condition. Cancelling it (a drop by the emitter's policy) forgets the chunk at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pending import Entry

_PENDING, _CANCELLED, _DONE, _FAILED = 0, 1, 2, 3
_lock = threading.Lock()
_settled = threading.Condition(_lock)  # notified when a chunk a caller waits on settles
_waiting = [0]  # callers blocked in result()/exception()


class ChunkFuture(Future):  # type: ignore[type-arg]
    """See the module. Resolved once, by the hub (``set_result``/``set_exception``) or a cancel."""

    __slots__ = ("_callbacks", "_outcome", "_value", "entry")

    def __init__(self, entry: Entry | None = None) -> None:  # no Future.__init__: none of its members
        self._outcome = _PENDING
        self._value: Any = None
        self._callbacks: list[Callable[[Future[Any]], object]] | None = None
        self.entry = entry

    def _finish(self, outcome: int, value: Any) -> bool:
        with _lock:
            if self._outcome != _PENDING:
                return False
            self._outcome, self._value = outcome, value
            callbacks, self._callbacks = self._callbacks, None
            if _waiting[0]:
                _settled.notify_all()
        for fn in callbacks or ():
            fn(self)
        return True

    def set_result(self, result: Any) -> None:
        if not self._finish(_DONE, result):
            raise RuntimeError("the chunk's outcome is set already")

    def set_exception(self, exception: BaseException | None) -> None:
        if not self._finish(_FAILED, exception):
            raise RuntimeError("the chunk's outcome is set already")

    def cancel(self) -> bool:
        entry = self.entry
        if entry is not None and self._outcome == _PENDING:
            entry.owner.dropped(entry)  # out of the table first: no reply can resolve it meanwhile
        return self._finish(_CANCELLED, None) or self._outcome == _CANCELLED

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        with _lock:
            if self._outcome == _PENDING:
                self._callbacks = [*(self._callbacks or ()), fn]
                return
        fn(self)

    def cancelled(self) -> bool:
        return self._outcome == _CANCELLED

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return self._outcome != _PENDING

    def _wait(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with _lock:
            _waiting[0] += 1
            try:
                while self._outcome == _PENDING:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"the chunk's outcome did not come within {timeout} s")
                    _settled.wait(left)
            finally:
                _waiting[0] -= 1
        if self._outcome == _CANCELLED:
            raise CancelledError()

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._outcome == _FAILED:
            raise self._value
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._value if self._outcome == _FAILED else None  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        state = ("pending", "cancelled", "done", "failed")[self._outcome]
        return f"<ChunkFuture {state}>"
