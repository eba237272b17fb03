"""The write() hot path: append a frame, and call back only when there is work to do.

Two ways to hold a stream between chunks, each in Python here (the reference) and the same in C
(``ocycle_dist/_speedups.c``, built when a compiler is available at install, used unless
``OCYCLE_PURE_PYTHON=1``; both are tested against each other):

- :class:`Appender` keeps the frames as they were written (``segs``, their end positions in ``ends``) and calls
  back into Python when a window may open or be complete: any stream, overlapping windows, a sampler.
- :class:`Filler`, for windows back to back (``hop == size``) of bytes (chunks up to 256 KiB), or of numpy
  arrays with ``clip``, copies each frame's elements straight into the chunk they belong to, and calls back once
  per chunk, with the chunk: a frame is copied once, when it is written, never kept nor joined. A ``bytes``
  chunk that lies within one frame is cut from it directly (the frame itself when it is the whole chunk).

Only a frame whose ``t0`` is plainly good takes the fast path: None, or an exact ``float``/``int`` that is
finite, not before ``last_end`` (the end time of the previous write) and not after ``max_t0`` (with a rate,
``last_end + max_gap``: later is a gap in the input). Anything else (a NaN, inf, a negative or backwards t0,
a gap, a t0 of another type) goes to ``other``, which checks it before anything is kept
(:meth:`ocycle_dist.windows.Windows.check_t0`). So a rejected t0 never leaves its frame behind.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

NEVER = sys.maxsize  # a threshold never reached
MAX_T0 = sys.float_info.max  # a finite t0 is at most this


class Clock:
    """The t0 checks of a hot path (base of :class:`Appender` and :class:`Filler`).

    Attributes:
        last_t0: the t0 of the last write that gave one (0.0 before any).
        last_end: the time that write ended: ``last_t0 + n * inv_rate``; a fast t0 is at least this.
        inv_rate: ``1 / rate``, or 0.0 without a rate.
        max_gap: seconds after ``last_end`` a fast t0 may be (0.0: any).
        max_t0: a fast t0 is at most this: ``last_end + max_gap`` once a write gave a t0 (with ``max_gap``).
    """

    __slots__ = ("inv_rate", "last_end", "last_t0", "max_gap", "max_t0")

    def __init__(self) -> None:
        self.last_t0 = self.last_end = self.inv_rate = self.max_gap = 0.0
        self.max_t0 = MAX_T0

    def plain(self, t0: Any) -> bool:
        """Whether ``t0`` may take the fast path: None, or an exact float/int in ``[last_end, max_t0]``."""
        return t0 is None or ((type(t0) is float or type(t0) is int) and self.last_end <= t0 <= self.max_t0)

    def wrote(self, t0: Any, n: int) -> None:
        """A fast write of ``n`` elements at ``t0`` went in (called after it, so one that raised changes none)."""
        if t0 is not None:
            self.last_t0 = float(t0)
            self.last_end = t0 + n * self.inv_rate
            self.max_t0 = self.last_end + self.max_gap if self.max_gap > 0.0 else MAX_T0


class Appender(Clock):
    """Append frames of ``fast_type`` to ``segs`` (end positions to ``ends``); call back otherwise.

    Args:
        segs: the frames kept, oldest first (shared with the emitter).
        ends: ``ends[0]`` is the position of ``segs[0]``; ``ends[i + 1]`` the position after ``segs[i]``.
        fast_type: the exact type appended without a check (None: every frame goes to ``other``).
        threshold: ``due(n, t0)`` is called after a write that brings the end to at least this.
        due: the emitter's slow step (open windows, emit chunks).
        other: called as ``other(data, t0)`` for any frame not of ``fast_type``, or whose t0 needs a check.

    Attributes:
        last_t0, last_end, inv_rate, max_gap, max_t0: the t0 checks (:class:`Clock`).
    """

    __slots__ = ("due", "ends", "fast_type", "other", "segs", "threshold")
    fast_type: Any

    def __init__(
        self,
        segs: list[Any],
        ends: list[int],
        fast_type: type | None,
        threshold: int,
        due: Callable[[int, Any], None],
        other: Callable[[Any, Any], None],
    ) -> None:
        super().__init__()
        self.segs, self.ends, self.fast_type = segs, ends, fast_type
        self.threshold, self.due, self.other = threshold, due, other

    def write(self, data: Any, t0: float | None = None) -> None:
        """Append ``data`` if it is of ``fast_type`` and ``t0`` plainly good, else hand both to ``other``."""
        if type(data) is self.fast_type and self.plain(t0):
            ends = self.ends
            n = len(data)
            end = ends[-1] + n
            self.segs.append(data)
            ends.append(end)
            if end >= self.threshold:
                self.due(n, t0)
            self.wrote(t0, n)
            return
        self.other(data, t0)


class Filler(Clock):
    """Copy each frame into the chunk it belongs to; call ``emit(chunk, start, t0)`` for each complete one.

    Windows back to back: a chunk opens at the element after the previous one (at the stream's start, or where
    :meth:`drop` left it) when an element reaches it, its t0 the t0 of the write holding that element (``None``:
    ``time.time()``) plus its offset in the write over ``rate``. With ``clip`` a chunk is complete at ``size``
    elements; without, at the end of the write that brings it to ``size`` or more.

    Args:
        size: elements per chunk.
        clip: chunks of exactly ``size`` elements.
        rate: elements per second, or 0.0 (none).
        fast_type: the exact frame type taken without a check (None: every frame goes to ``other``).
        emit: called as ``emit(chunk, start, t0)`` for each complete chunk.
        other: called as ``other(data, t0)`` for any frame not taken by the fast path.
        new_buffer: None for bytes; for numpy arrays ``new_buffer(rows)``, a new C-contiguous array of ``rows``
            elements of the stream's dtype and element shape (a chunk is filled in one).

    Attributes:
        dtype, row_shape: numpy arrays: a fast frame has exactly this dtype (``is``), this element shape and is
            C-contiguous (set once the stream's dtype is known).
        row_bytes: bytes per element (the C version copies raw bytes).
        end: the stream's length so far, in elements.
        start: where the chunk being filled starts (-1: none is open).
        chunk_t0: its t0.
        last_t0, last_end, inv_rate, max_gap, max_t0: the t0 checks (:class:`Clock`).
    """

    __slots__ = (
        "buf",
        "chunk_t0",
        "clip",
        "dtype",
        "emit",
        "end",
        "fast_type",
        "filled",
        "new_buffer",
        "other",
        "rate",
        "row_bytes",
        "row_shape",
        "size",
        "start",
    )
    fast_type: Any

    def __init__(
        self,
        size: int,
        clip: bool,
        rate: float,
        fast_type: type | None,
        emit: Callable[[Any, int, Any], None],
        other: Callable[[Any, Any], None],
        new_buffer: Callable[[int], Any] | None = None,
    ) -> None:
        if new_buffer is not None and not clip:
            raise ValueError("a Filler of arrays cuts clipped chunks only")
        self.size, self.clip, self.rate = size, bool(clip), float(rate)
        self.fast_type, self.emit, self.other, self.new_buffer = fast_type, emit, other, new_buffer
        self.dtype: Any = None
        self.row_shape: tuple[int, ...] | None = None
        self.row_bytes = 1
        self.end, self.start, self.chunk_t0 = 0, -1, None
        self.buf: Any = None
        self.filled = 0
        super().__init__()
        self.inv_rate = 1.0 / rate if rate else 0.0

    def write(self, data: Any, t0: float | None = None) -> None:
        """Take ``data`` if it is of ``fast_type`` and ``t0`` plainly good, else hand both to ``other``."""
        if type(data) is self.fast_type and self.plain(t0) and (self.new_buffer is None or self._fits(data)):
            n = len(data)
            self.put(data, t0)
            self.wrote(t0, n)
            return
        self.other(data, t0)

    def _fits(self, data: Any) -> bool:
        """An array frame of the stream's exact dtype and element shape, C-contiguous."""
        shape = self.row_shape
        return (
            shape is not None
            and data.dtype is self.dtype
            and data.ndim == len(shape) + 1
            and data.shape[1:] == shape
            and data.flags.c_contiguous
        )

    def put(self, data: Any, t0: Any) -> None:
        """Copy the frame ``data`` (checked) into its chunks, emitting every chunk it completes."""
        n, pos, now = len(data), 0, t0
        while pos < n:
            if self.start < 0:  # the next chunk opens at this element
                if now is None:
                    now = time.time()
                self.start, self.filled = self.end, 0
                self.chunk_t0 = now + pos / self.rate if self.rate else now
                self.buf = bytearray() if self.new_buffer is None else self.new_buffer(self.size)
            k = min(self.size - self.filled, n - pos) if self.clip else n - pos
            if self.new_buffer is None:
                self.buf += data[pos : pos + k]
            else:
                self.buf[self.filled : self.filled + k] = data[pos : pos + k]
            pos += k
            self.filled += k
            self.end += k
            if self.filled >= self.size:
                chunk, start = self.buf, self.start
                self.buf, self.start, self.filled = None, -1, 0
                self.emit(bytes(chunk) if self.new_buffer is None else chunk, start, self.chunk_t0)

    def peek(self, s: int, e: int) -> Any:
        """A copy of the elements ``s:e`` (stream positions) of the chunk being filled."""
        a, b = s - self.start, e - self.start
        if self.start < 0 or not 0 <= a <= b <= self.filled:
            raise IndexError(f"elements {s}:{e} are not in the chunk being filled")
        return bytes(self.buf[a:b]) if self.new_buffer is None else self.buf[a:b].copy()

    def drop(self, end: int) -> None:
        """Forget the chunk being filled; the stream goes on from position ``end``."""
        self.buf, self.start, self.filled, self.end = None, -1, 0, end


def appender_class() -> type:
    """The C Appender when built and not disabled by ``OCYCLE_PURE_PYTHON=1``, else the Python one.

    A C module built from an older ``_speedups.c`` (without the t0 checks: no ``last_end``) is not used.
    """
    if os.environ.get("OCYCLE_PURE_PYTHON") != "1":
        try:
            from ._speedups import Appender as CAppender
        except ImportError:
            return Appender
        if all(hasattr(CAppender, name) for name in ("last_t0", "last_end", "inv_rate", "max_t0")):
            return CAppender  # type: ignore[no-any-return]
    return Appender


def filler_class() -> type:
    """The C Filler when built and not disabled by ``OCYCLE_PURE_PYTHON=1``, else the Python one."""
    if os.environ.get("OCYCLE_PURE_PYTHON") != "1":
        try:
            from ._speedups import Filler as CFiller
        except ImportError:
            return Filler
        return CFiller  # type: ignore[no-any-return]
    return Filler
