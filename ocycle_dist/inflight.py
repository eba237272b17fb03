"""In-flight accounting: which chunks are out, the overload policy that bounds them, and the counters.

Every chunk emitted ends in exactly one outcome, so that
``emitted == in_flight + done + failed + dropped + expired`` at any moment. ``admit()`` applies the policy
when ``max_inflight`` chunks are out: ``block`` the writer until one settles, ``drop_newest`` (the new
chunk) or ``drop_oldest`` (cancel the oldest chunk whose Future can still be cancelled). With
``max_inflight=None`` nothing is bounded here (an executor that bounds its own backlog, e.g. by bytes).
Thread-safe: chunks settle on executor and callback threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

POLICIES = ("block", "drop_oldest", "drop_newest")
OUTCOMES = ("done", "failed", "dropped", "expired")


def p50_p99(values: deque[float] | list[float]) -> tuple[float, float]:
    """Median and 99th percentile (0.0 when empty)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0, 0.0
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class InFlight:
    """The chunks of one emitter between emit and outcome.

    Args:
        max_inflight: chunks out at most, or None for no bound.
        policy: one of :data:`POLICIES`.
    """

    def __init__(self, max_inflight: int | None, policy: str) -> None:
        self.max_inflight, self.policy = max_inflight, policy
        self.lock = threading.RLock()
        self._idle = threading.Condition(self.lock)
        self._futures: dict[int, Future[Any] | None] = {}  # seq -> its Future (None until submitted)
        self._emitted_at: dict[int, float] = {}  # seq -> monotonic time of emit, until the chunk settles
        self.latencies: deque[float] = deque(maxlen=1000)  # emit-to-outcome seconds of the last chunks
        self.counts = dict.fromkeys(("emitted", *OUTCOMES), 0)

    def __len__(self) -> int:
        return len(self._futures)

    def emitted(self, seq: int) -> float:
        """Count a new chunk, before it is admitted."""
        with self.lock:
            self.counts["emitted"] += 1
            self._emitted_at[seq] = now = time.monotonic()
        return now

    def started_inline(self) -> float:
        """Count a chunk run at once in the writer's thread (the serial executor): nothing else touches it, so
        no lock and no entry in flight; :meth:`finished_inline` counts its outcome. Returns its start time."""
        self.counts["emitted"] += 1  # one statement: atomic for a reader on another thread (stats())
        return time.monotonic()

    def finished_inline(self, outcome: str, started: float) -> None:
        """Count the outcome of a chunk started with :meth:`started_inline`."""
        self.latencies.append(time.monotonic() - started)
        self.counts[outcome] += 1

    def unemit(self, seq: int) -> None:
        """Take back ``emitted(seq)``: the chunk could not be handed over and its write raised."""
        with self.lock:
            self.counts["emitted"] -= 1
            self._emitted_at.pop(seq, None)
            self._futures.pop(seq, None)
            self._idle.notify_all()

    def admit(self, seq: int) -> bool:
        """Make room for chunk ``seq`` under the policy; False when it is dropped (and counted)."""
        with self.lock:
            while self.max_inflight is not None and len(self._futures) >= self.max_inflight:
                if self.policy == "block":
                    self._idle.wait()
                elif self.policy == "drop_newest" or not self._cancel_oldest():
                    self._count(seq, "dropped")
                    return False
            self._futures[seq] = None
            return True

    def _cancel_oldest(self) -> bool:
        """Cancel the oldest chunk whose Future is still pending; it is counted as dropped at once."""
        for seq, future in list(self._futures.items()):
            if future is not None and future.cancel():
                if seq in self._futures:  # not yet counted by a done-callback of the cancel
                    del self._futures[seq]
                    self._count(seq, "dropped")
                return True
        return False

    def submitted(self, seq: int, future: Future[Any]) -> None:
        """Record the Future of an admitted chunk (unless it has already settled)."""
        with self.lock:
            if seq in self._futures:
                self._futures[seq] = future

    def adopt(self, seq: int, future: Future[Any]) -> None:
        """Follow a chunk emitted by an earlier producer of the stream (taken over from a durable spool)."""
        with self.lock:
            self._futures[seq] = future
            self.counts["emitted"] += 1

    def settle(self, seq: int, outcome: str) -> None:
        """Count chunk ``seq``'s outcome (one of :data:`OUTCOMES`), once; wake a blocked writer or waiter."""
        with self.lock:
            if seq in self._futures:
                del self._futures[seq]
                self._count(seq, outcome)
            self._idle.notify_all()

    def _count(self, seq: int, outcome: str) -> None:
        started = self._emitted_at.pop(seq, None)
        if started is not None and outcome in ("done", "failed"):
            self.latencies.append(time.monotonic() - started)
        self.counts[outcome] += 1

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no chunk is in flight. Returns False on timeout."""
        with self.lock:
            return self._idle.wait_for(lambda: not self._futures, timeout)

    def percentiles(self) -> tuple[float, float]:
        """Median and 99th percentile of the recent emit-to-outcome latencies."""
        with self.lock:
            return p50_p99(self.latencies)
