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
        failed: chunks whose callback raised, or that could not be handed over (EncodeError, SpoolError).
        dropped: chunks dropped by a policy: the overload policy (``drop_oldest``/``drop_newest``) or a
            full spool's (``reject_newest``/``drop_oldest``).
        expired: chunks no worker started before their ``expires`` deadline (celery mode), discarded.
        spooled_bytes: bytes of chunks the executor keeps until their result is in (celery mode); with a
            durable spool, the bytes they take on disk (its database pages in use).
        callback_backlog: outcomes waiting for their ``on_done``/``on_error`` to run (a slow callback shows here).
        callback_p99: seconds ``on_done``/``on_error`` took, 99th percentile of the last 1000 calls.
        out_of_order: with ``ordered``, outcomes handed to ``on_done``/``on_error`` before an earlier chunk's
            because that one did not come within the wait allowed.
        latency_p50: seconds from emit to result (``on_done``/``on_error``), median of the last 1000 chunks.
        latency_p99: the same, 99th percentile.
        t0_overlaps: writes (with ``rate``) whose t0 fell before the end of the previous write (its t0 + its
            length / rate) but not before its t0: accepted as clock jitter, counted.
        gaps: writes (with ``rate``) whose t0 came later than the previous write's end by more than
            ``max_gap``: the input skipped (an audio driver's overflow). The open windows were emitted there
            as partial chunks and new ones opened at the frame, so that no chunk spans a gap.
        gap_seconds: the input those gaps skipped, in seconds.
        clock_steps: writes whose t0 was earlier than the previous write's, or more than a day after its end
            (``windows.STEP_AHEAD``): the clock stepped (NTP setting a device's clock). The open windows were
            emitted there as partial chunks and the stream went on from the new clock; logged once.
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
    out_of_order: int = 0
    latency_p50: float = 0.0
    latency_p99: float = 0.0
    t0_overlaps: int = 0
    gaps: int = 0
    gap_seconds: float = 0.0
    clock_steps: int = 0

    def as_dict(self) -> dict[str, float]:
        """The counters as a dict."""
        return asdict(self)
