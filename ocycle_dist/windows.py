"""Windows: cut a stream of frames into chunks of ``size`` elements, each with its t0.

Positions count elements from the stream's start. A *window* opens at a position (0, then every ``hop``),
gets its t0 from the write that reaches it, and is complete once the stream's end passes its start +
``size``: with ``clip`` it holds exactly ``size`` elements; without, everything up to the end of the write
that filled it (ocycle 0.1.0's default), and the next window opens after it. A sampler pauses the cutting
after each chunk: writes are skipped (and counted) until its delay has passed.

Two ways to hold the stream (:mod:`ocycle_dist.hotpath`, whose ``write()`` is the hot path):

- *filling* (:class:`~ocycle_dist.hotpath.Filler`), for windows back to back (``hop == size``, no sampler) of
  bytes (chunks up to 256 KiB), or of numpy arrays with ``clip``: each frame is copied, as it is written, into
  the chunk it belongs to; Python is called once per chunk, with the chunk.
- *keeping* (:class:`~ocycle_dist.hotpath.Appender`), for everything else: the frames are kept as they were
  written (``segs``, with their end positions in ``ends``) and copied once, when a chunk is taken; Python is
  called when a window may open or be complete.

Both cut the same chunks with the same t0s. Knows nothing of executors: complete chunks go to ``emit``.

A write's ``t0`` is None (now: ``time.time()``) or seconds: a real number, finite and >= 0 (``time.time()``,
``time.monotonic()`` or the time since the stream's start); anything else raises FrameError before the frame is
kept: the stream is exactly as before. A write without t0 is not compared with the previous write's. With
``rate``, a t0 earlier than the previous write's end (its t0 + its length / rate) but not than its t0 is
accepted as clock jitter and counted in ``t0_overlaps``.

A **clock step** (an edge device's clock set back by NTP, or a bad timestamp far ahead) is a discontinuity, not
an error: a t0 earlier than the previous write's, or more than :data:`STEP_AHEAD` seconds after its end. The
open windows end there as partial chunks (as at a gap), the stream goes on from the new clock, and the step is
counted in ``clock_steps`` and logged once per stream.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from typing import Any

from .checks import finite
from .chunk import Chunk
from .errors import ConfigError, FrameError
from .hotpath import MAX_T0, NEVER, appender_class, filler_class
from .kinds import Kind
from .pieces import Pieces

Emit = Callable[[Any, Chunk], None]
log = logging.getLogger("ocycle_dist.windows")
# A t0 this many seconds after the previous write's end is a clock step, not a gap nor a pause of the source: a
# clock set from nothing (1970) or a wrong timestamp. A day: a sensor silent for hours is not one.
STEP_AHEAD = 86400.0
_new_chunk = tuple.__new__  # Chunk(*fields) in a third of the time of Chunk.__new__ (a namedtuple's, in Python)


def _show(value: Any) -> str:
    """``repr(value)``, cut short (a t0 of 10**400 has 401 digits)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Windows:
    """The cutting of one stream.

    Args:
        kind: what the stream is made of (checks, freezes and joins frames).
        size: elements per chunk.
        hop: elements between window starts (``size``: back to back; less: overlapping).
        clip: chunks of exactly ``size`` elements.
        rate: elements per second, or None: a window's t0 is then its write's t0 + offset / rate.
        sampler: None, or a callable returning the seconds to pause after each chunk.
        stream: the stream id written into each chunk's metadata.
        emit: called as ``emit(value, meta)`` for every complete chunk, in order; ``value`` is a
            :class:`.Pieces` to join later while :attr:`lazy` is set (by the emitter, for executors that join).
        other: the hot path's fallback for a frame that is not of the kind's exact type (or while paused).
    """

    def __init__(
        self,
        kind: Kind,
        size: int,
        hop: int,
        clip: bool,
        rate: float | None,
        sampler: Callable[[], float] | None,
        stream: str,
        emit: Emit,
        other: Callable[[Any, Any], None],
        max_gap: float = 0.0,
    ) -> None:
        self.kind, self.size, self.hop, self.clip, self.rate = kind, size, hop, clip, rate
        self.sampler, self.stream, self.emit = sampler, stream, emit
        self.seq = 0  # the next chunk's sequence number
        self.lazy = False  # emit Pieces, not joined values
        self.skipped = 0  # elements the sampler skipped
        self.skipped_leftover = 0  # of those, elements that were written before a pause (already in `end`)
        self.segs: list[Any] = []  # frames kept, oldest first
        self.ends: list[int] = [0]  # ends[0]: position of segs[0]; ends[i + 1]: position after segs[i]
        self.starts: deque[tuple[int, float]] = deque()  # open windows: (start, t0)
        self.next_start = 0  # where the next window opens
        self.paused = False
        self.pause_until = 0.0
        self.t0_overlaps = 0  # writes whose t0 fell inside the previous write's span (rate set)
        self.gaps = 0  # writes whose t0 came later than the rate predicts by more than max_gap
        self.gap_seconds = 0.0  # the input those gaps skipped
        self.clock_steps = 0  # writes whose t0 went back, or jumped more than STEP_AHEAD ahead
        self.max_gap = max_gap if rate else 0.0  # gaps are seen against the rate's prediction (0: not seen)
        self.fill = hop == size and sampler is None and kind.fills(clip, size)  # see the module's docstring
        self._fast = None if self.fill else kind.fast_type  # the hot path's fast type, while accepting
        self._on = True
        if self.fill:
            self.hot = filler_class()(size, clip, float(rate or 0.0), None, self._chunk, other, kind.new_rows)
            self._arm()
        else:
            self.hot = appender_class()(self.segs, self.ends, self._fast, 1, self._advance, other)
        self.hot.inv_rate = 1.0 / rate if rate else 0.0
        # a fast t0 is at most the previous write's end + this; later ones are a gap or a step (push() tells)
        self.hot.max_gap = min(self.max_gap, STEP_AHEAD) if self.max_gap > 0.0 else STEP_AHEAD

    @property
    def end(self) -> int:
        """The stream's length so far, in elements."""
        return self.hot.end if self.fill else self.ends[-1]  # type: ignore[no-any-return]

    @property
    def buffered(self) -> int:
        """Elements held, not yet part of an emitted chunk."""
        if self.fill:
            return self.hot.end - self.hot.start if self.hot.start >= 0 else 0  # type: ignore[no-any-return]
        return self.end - (self.starts[0][0] if self.starts else min(self.next_start, self.end))

    def first_t0(self) -> float | None:
        """The t0 of the oldest open window (the chunk being collected), None when none is open."""
        if self.fill:
            return self.hot.chunk_t0 if self.hot.start >= 0 else None  # type: ignore[no-any-return]
        return self.starts[0][1] if self.starts else None

    def accepting(self, on: bool) -> None:
        """Let the hot path take frames of the fast type (or send every frame to ``other``)."""
        self._on = on
        self.hot.fast_type = self._fast if on and not self.paused else None

    def _arm(self) -> None:
        """Filling numpy arrays: once the stream's dtype and element shape are known (declared, or taken from the
        first frame), frames of exactly them take the fast path."""
        kind = self.kind
        if kind.new_rows is not None:
            dtype, shape = getattr(kind, "dtype", None), getattr(kind, "shape", None)
            if dtype is None or shape is None:
                return
            self.hot.dtype, self.hot.row_shape = dtype, shape
            self.hot.row_bytes = dtype.itemsize * math.prod(shape)
        self._armed = True
        self._fast = kind.fill_type
        self.accepting(self._on)

    _armed = False

    def reset(self, end: int) -> None:
        """Forget every frame and open window; the stream goes on from position ``end``."""
        if self.fill:
            self.hot.drop(end)
            return
        self.segs.clear()
        self.ends[:] = [end]
        self.next_start = end
        self.starts.clear()
        self.hot.threshold = end + 1  # _advance() is due when the stream's end reaches this

    def check_t0(self, t0: Any) -> tuple[float | None, bool]:
        """``t0`` as a float (None stays None), and whether it overlaps the previous write (rate set).

        Raises:
            FrameError: ``t0`` is not a finite number >= 0.
        """
        if t0 is None:
            return None, False
        if type(t0) is not float:
            if isinstance(t0, bool) or not isinstance(t0, numbers.Real):
                raise FrameError(f"t0={_show(t0)} is invalid: expected a number of seconds or None")
            try:
                t0 = float(t0)
            except (OverflowError, ValueError, TypeError):
                raise FrameError(f"t0={_show(t0)} is invalid: expected a finite number of seconds") from None
        if not math.isfinite(t0):
            raise FrameError(f"t0={t0!r} is invalid: expected a finite number of seconds")
        if t0 < 0.0:
            raise FrameError(f"t0={t0!r} is invalid: expected seconds >= 0 (time.time(), or since the stream began)")
        hot = self.hot
        return t0, hot.last_t0 <= t0 < hot.last_end

    def push(self, frozen: Any, n: int, t0: Any, *, compare: bool = True) -> None:
        """Append a checked, frozen frame of ``n`` elements (the slow path of ``write``).

        ``compare=False``: ``t0`` is "now" for a write that gave none (a Tap's), used but neither checked
        against nor remembered as the previous write's.

        Raises:
            FrameError: ``t0`` is invalid (see :meth:`check_t0`); nothing was kept.
        """
        t0, overlaps = self.check_t0(t0) if compare else (t0, False)
        if compare and t0 is not None:
            hot = self.hot
            if t0 < hot.last_t0 or (t0 > hot.max_t0 and t0 - hot.last_end > STEP_AHEAD):
                self._step(t0)
            elif t0 > hot.max_t0:  # later than the rate predicts: a gap
                self._gap(t0 - hot.last_end)
        if self.fill:
            if not self._armed:  # a numpy stream's first frame, checked by this kind, or a Tap's (checked by it too)
                self.kind.adopt(frozen)
                self._arm()
            self.hot.put(frozen, t0)
            self._written(t0 if compare else None, n, overlaps)
            return
        when, resumed = t0, self.paused
        if self.paused:
            when = time.time() if t0 is None else t0
            if when < self.pause_until:
                self.skipped += n
                self._written(t0 if compare else None, n, overlaps)
                return
            self._resume()
        before = self.end
        self.segs.append(frozen)
        self.ends.append(before + n)
        if self.ends[-1] >= self.hot.threshold:
            try:
                self._advance(n, when)
            except BaseException:
                if resumed and self.end == before:  # refused whole by the sampler: still paused, as before
                    self._stay_paused()
                raise
        self._written(t0 if compare else None, n, overlaps)

    def _resume(self) -> None:
        """End a sampler pause: collecting starts again at the stream's end."""
        self.paused = False
        self.hot.fast_type = self.kind.fast_type
        self.next_start = self.end
        self.hot.threshold = self.end + 1

    def _stay_paused(self) -> None:
        self.next_start = self.hot.threshold = NEVER
        self.paused = True
        self.hot.fast_type = None

    def _written(self, t0: float | None, n: int, overlaps: bool) -> None:
        """Remember an accepted write's t0 and end time, as the hot path does for its own."""
        if t0 is not None:
            hot = self.hot
            hot.last_t0 = t0
            hot.last_end = t0 + n * hot.inv_rate
            hot.max_t0 = hot.last_end + hot.max_gap if hot.max_gap > 0.0 else MAX_T0
            self.t0_overlaps += overlaps

    def _gap(self, seconds: float) -> None:
        """The input skipped ``seconds`` (an audio driver's overflow): the open windows end here, as partial
        chunks, and new ones open at the next frame, so that no chunk spans the gap."""
        self.gaps += 1
        self.gap_seconds += seconds
        self.flush()

    def _step(self, t0: float) -> None:
        """The clock stepped (see the module): the open windows end here, as partial chunks; a sampler pause keeps
        what is left of it, on the new clock."""
        hot = self.hot
        self.clock_steps += 1
        if self.clock_steps == 1:
            log.warning(
                "stream %s: the clock stepped from %r to t0=%r (%+.6g s): the open windows end as partial chunks and"
                " the stream goes on from the new clock; counted in stats().clock_steps (logged once per stream)",
                self.stream,
                hot.last_end,
                t0,
                t0 - hot.last_end,
            )
        if self.paused:
            self.pause_until += t0 - hot.last_end
        self.flush()

    def _advance(self, n: int, t0: float | None) -> None:
        """Open the windows the last write reached and emit those it completed."""
        end = self.ends[-1]
        if t0 is None:  # else checked: by the hot path, or by push()
            t0 = time.time()
        size, starts, rate, clip = self.size, self.starts, self.rate, self.clip
        delay = 0.0
        if self.sampler is not None and (starts[0][0] if starts else self.next_start) + size <= end:
            try:  # this write completes a chunk: ask for the pause first, so a failing sampler changes nothing
                delay = self._delay()
            except BaseException:
                self.segs.pop()  # the write is refused whole; retrying it cannot send the chunk twice
                self.ends.pop()
                raise
        s = self.next_start
        if s < end:  # windows open in this write: their t0 counts from the write's first element
            w0 = end - n
            if not clip:
                starts.append((s, t0 + (s - w0) / rate if rate else t0))
                s = NEVER
            while s < end:
                starts.append((s, t0 + (s - w0) / rate if rate else t0))
                s += self.hop
            self.next_start = s
        while starts and starts[0][0] + size <= end:
            s, t = starts.popleft()
            e = s + size if clip else end
            if not clip:
                self.next_start = e
            self._emit(s, e, t, False)
            if self.sampler is not None:
                self._pause(t0, end - e, delay)
                return
        self._trim()

    def _emit(self, s: int, e: int, t0: float, partial: bool) -> None:
        self.emit(self.take(s, e, self.lazy), Chunk(self.stream, self.seq, t0, e - s, s, partial))
        self.seq += 1

    def _chunk(self, value: Any, start: int, t0: float) -> None:
        """A complete chunk from the Filler (its Chunk made as ``Chunk(...)`` would, without its ``__new__``)."""
        self.emit(value, _new_chunk(Chunk, (self.stream, self.seq, t0, len(value), start, False)))
        self.seq += 1

    def take(self, s: int, e: int, lazy: bool = False) -> Any:
        """The elements ``s:e`` of the stream as one value (with ``lazy``, :class:`.Pieces` to join later)."""
        if self.fill:
            return self.hot.peek(s, e)
        ends, segs = self.ends, self.segs
        i = bisect_right(ends, s) - 1  # segs[i] holds element s
        j = bisect_left(ends, e, i) - 1  # segs[j] holds element e - 1
        if i == j:
            seg, a = segs[i], s - ends[i]
            pieces = [seg if a == 0 and e == ends[i + 1] else seg[a : e - ends[i]]]
        else:
            pieces = segs[i : j + 1]
            if s > ends[i]:
                pieces[0] = pieces[0][s - ends[i] :]
            if e < ends[j + 1]:
                pieces[-1] = pieces[-1][: e - ends[j]]
        return Pieces(pieces, self.kind) if lazy else self.kind.join(pieces)

    def _trim(self) -> None:
        """Forget the frames no open window needs; set the next threshold."""
        keep = self.starts[0][0] if self.starts else min(self.next_start, self.ends[-1])
        k = bisect_right(self.ends, keep) - 1  # segs[:k] end at or before keep
        if k > 0:
            del self.segs[:k]
            del self.ends[:k]
        due = self.starts[0][0] + self.size if self.starts else NEVER
        self.hot.threshold = min(self.next_start + 1, due, NEVER)

    def _delay(self) -> float:
        """The sampler's pause, in seconds.

        Raises:
            ConfigError: it returned something else than seconds >= 0 (or whatever it raised itself).
        """
        delay = self.sampler() if self.sampler else 0.0
        if not finite(delay):
            raise ConfigError("sampler", self.sampler, f"seconds >= 0 from the callable, it returned {delay!r}")
        return float(delay)

    def _pause(self, now: float, leftover: int, delay: float) -> None:
        """Start a sampler pause of ``delay`` s after an emit; the rest of the stream so far is skipped."""
        self.skipped_leftover += leftover
        self.skipped += leftover
        self.reset(self.end)
        self.pause_until = now + delay
        self._stay_paused()

    def flush(self) -> int:
        """Emit the open windows now, even if shorter than ``size`` (marked ``partial``); returns how many."""
        count = 0
        if self.fill:
            if self.hot.start >= 0 and self.hot.end > self.hot.start:
                self._emit(self.hot.start, self.hot.end, self.hot.chunk_t0, True)
                count = 1
            self.reset(self.end)
            return count
        if not self.starts and self.next_start < self.end:
            self.starts.append((self.next_start, time.time()))
        for s, t in list(self.starts):
            if s < self.end:
                self._emit(s, self.end, t, True)
                count += 1
        self.reset(self.end)
        return count
