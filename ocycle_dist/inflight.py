"""In-flight accounting: which chunks are out, the one bound on them and its overload policy, the counters.

Every chunk emitted ends in exactly one outcome, so that
``emitted == in_flight + done + failed + dropped + expired`` at any moment.

The bound is the only one of an emitter: ``admit()`` applies the policy when the backlog is full, by count
(``max_inflight`` chunks out) or by cost (``max_cost``: a budget in the executor's units, measured by its
``meter``; the celery mode's is bytes of chunks kept until their result is in). When full: ``block`` the
writer until a chunk settles, ``drop_newest`` (the new chunk) or ``drop_oldest`` (cancel the oldest chunk
whose Future can still be cancelled). Drops are counted; a full episode is logged once, and at most once every
:data:`SAY_FULL_EVERY` seconds (a producer paced by ``block`` fills its bound at every chunk). Thread-safe: chunks
settle on executor and callback threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

POLICIES = ("block", "drop_oldest", "drop_newest")
OUTCOMES = ("done", "failed", "dropped", "expired")
SAY_FULL_EVERY = 60.0  # seconds: episodes of a full bound sooner than this after the last one said are counted
log = logging.getLogger("ocycle_dist")


def p50_p99(values: deque[float] | list[float]) -> tuple[float, float]:
    """Median and 99th percentile (0.0 when empty)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0, 0.0
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class InFlight:
    """The chunks of one emitter between emit and outcome, and the bound on them.

    Args:
        max_inflight: chunks out at most, or None for no count bound.
        policy: one of :data:`POLICIES`.
        max_cost: the most ``meter()`` may reach with a new chunk's cost added, or None.
        meter: the cost of what is kept now (e.g. bytes waiting for results); read under the lock.
        name: how the bound is named in the log line of a full episode.
    """

    def __init__(
        self,
        max_inflight: int | None,
        policy: str,
        *,
        max_cost: int | None = None,
        meter: Callable[[], int] | None = None,
        name: str = "",
    ) -> None:
        self.max_inflight, self.policy = max_inflight, policy
        self.max_cost, self.meter = max_cost, meter
        self.name = name
        self.lock = threading.RLock()
        self._idle = threading.Condition(self.lock)
        self._futures: dict[int, Future[Any] | None] = {}  # seq -> its Future (None until submitted), emit order
        self._emitted_at: dict[int, float] = {}  # seq -> monotonic time of emit, until the chunk settles
        self._full = False  # an episode of a full bound: logged once
        self._said_at = float("-inf")  # when a full episode was last logged
        self._unsaid = 0  # full episodes since, not logged
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

    def admit(self, seq: int, cost: int = 0) -> bool:
        """Make room for chunk ``seq`` (of ``cost``) under the policy; False when it is dropped (and counted)."""
        with self.lock:
            if self.max_cost is not None and cost > self.max_cost:
                self._episode(f"a chunk of cost {cost} is over the whole bound of {self.max_cost}: dropped")
                self._count(seq, "dropped")
                return False
            while self._over(cost):
                self._episode(f"policy {self.policy!r} acts")
                if self.policy == "block":
                    self._idle.wait(1.0)  # woken by a settled chunk; the timeout only re-reads the meter
                elif self.policy == "drop_newest" or not self._cancel_oldest():
                    self._count(seq, "dropped")
                    return False
            if self._full and not self._over(cost, slack=0.75):
                self._full = False
                if not self._unsaid:  # the episode was said
                    log.info("the backlog bound of %s has room again", self.name or "an emitter")
            self._futures[seq] = None
            return True

    def _over(self, cost: int, slack: float = 1.0) -> bool:
        """Under the lock: whether a new chunk of ``cost`` would pass the bound (scaled by ``slack``)."""
        if self.max_inflight is not None and len(self._futures) >= self.max_inflight * slack:
            return True
        return self.max_cost is not None and self.meter is not None and self.meter() + cost > self.max_cost * slack

    def _episode(self, what: str) -> None:
        if self._full:
            return
        self._full = True
        now = time.monotonic()
        if now - self._said_at < SAY_FULL_EVERY:
            self._unsaid += 1
            return
        bound = []
        if self.max_inflight is not None:
            bound.append(f"max_inflight={self.max_inflight}")
        if self.max_cost is not None:
            bound.append(f"a budget of {self.max_cost} bytes")
        more = f"; full {self._unsaid} more time(s) since the last such line" if self._unsaid else ""
        log.warning(
            "the backlog of %s is full (%s): %s%s; drops are counted in stats().dropped (logged once until it has"
            " room again, at most once every %g s)",
            self.name or "an emitter",
            " and ".join(bound),
            what,
            more,
            SAY_FULL_EVERY,
        )
        self._said_at, self._unsaid = now, 0

    def _cancel_oldest(self) -> bool:
        """Cancel the oldest chunk whose Future is still pending; it is counted as dropped at once."""
        for seq, future in list(self._futures.items()):
            if future is not None and future.cancel():
                if seq in self._futures:  # not yet counted by a done-callback of the cancel
                    del self._futures[seq]
                    self._count(seq, "dropped")
                return True
        return False

    def track(self, seq: int) -> None:
        """Follow chunk ``seq`` without applying the bound (its outcome is already known: a failure)."""
        with self.lock:
            self._futures[seq] = None

    def waiting_before(self, seq: int, arrived: set[int]) -> bool:
        """Whether a chunk emitted before ``seq`` is still in flight and not in ``arrived`` (its outcome has not
        reached the callbacks yet)."""
        with self.lock:
            for earlier in self._futures:  # in emit order
                if earlier >= seq:
                    return False
                if earlier not in arrived:
                    return True
        return False

    def submitted(self, seq: int, future: Future[Any]) -> None:
        """Record the Future of an admitted chunk (unless it has already settled)."""
        with self.lock:
            if seq in self._futures:
                self._futures[seq] = future

    def adopt(self, seq: int, future: Future[Any], age: float = 0.0) -> None:
        """Follow a chunk emitted ``age`` seconds ago by an earlier producer of the stream (taken over from a
        durable spool): its latency counts from then."""
        with self.lock:
            self._futures[seq] = future
            self._emitted_at[seq] = time.monotonic() - max(0.0, age)
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
