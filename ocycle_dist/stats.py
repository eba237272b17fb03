"""Counters of one emitter."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Stats:
    """A snapshot of an emitter's counters.

    Chunks always add up: ``emitted == in_flight + done + failed + dropped + expired``.

    Attributes:
        written: elements accepted by ``write()``, including those the sampler skipped.
        skipped: elements ignored by the sampler (during a pause, and the clipped leftover before one).
        buffered: elements held, not yet part of an emitted chunk.
        emitted: chunks formed.
        in_flight: chunks handed to the executor, or waiting for it, not finished.
        done: chunks whose callback returned.
        failed: chunks whose callback raised.
        dropped: chunks dropped by a policy: the overload policy (``drop_oldest``/``drop_newest``) or a
            full spool's (``reject_newest``/``drop_oldest``).
        expired: chunks no worker started before their ``expires`` deadline (celery mode), discarded.
        spooled_bytes: bytes of chunks the executor keeps until their result is in (celery mode).
        callback_backlog: outcomes waiting for their ``on_done``/``on_error`` to run (a slow callback shows here).
        callback_p99: seconds ``on_done``/``on_error`` took, 99th percentile of the last 1000 calls.
        latency_p50: seconds from emit to result (``on_done``/``on_error``), median of the last 1000 chunks.
        latency_p99: the same, 99th percentile.
    """

    written: int = 0
    skipped: int = 0
    buffered: int = 0
    emitted: int = 0
    in_flight: int = 0
    done: int = 0
    failed: int = 0
    dropped: int = 0
    expired: int = 0
    spooled_bytes: int = 0
    callback_backlog: int = 0
    callback_p99: float = 0.0
    latency_p50: float = 0.0
    latency_p99: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """The counters as a dict."""
        return asdict(self)
