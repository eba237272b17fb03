"""The write() hot path: append a frame, and call back only when there is work to do.

:class:`Appender` is the reference implementation; ``ocycle_dist/_speedups.c`` is the same logic in C
(built when a compiler is available at install), used unless ``OCYCLE_PURE_PYTHON=1``. Both are tested.

Only a frame whose ``t0`` is plainly good takes the fast path: None, or an exact ``float``/``int`` that is
finite, not before ``last_end`` (the end time of the previous write) and not after ``max_t0`` (with a rate,
``last_end + max_gap``: later is a gap in the input). Anything else (a NaN, inf, a negative or backwards t0,
a gap, a t0 of another type) goes to ``other``, which checks it before anything is kept
(:meth:`ocycle_dist.windows.Windows.check_t0`). So a rejected t0 never leaves its frame behind.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

NEVER = sys.maxsize  # a threshold never reached
MAX_T0 = sys.float_info.max  # a finite t0 is at most this


class Appender:
    """Append frames of ``fast_type`` to ``segs`` (end positions to ``ends``); call back otherwise.

    Args:
        segs: the frames kept, oldest first (shared with the emitter).
        ends: ``ends[0]`` is the position of ``segs[0]``; ``ends[i + 1]`` the position after ``segs[i]``.
        fast_type: the exact type appended without a check (None: every frame goes to ``other``).
        threshold: ``due(n, t0)`` is called after a write that brings the end to at least this.
        due: the emitter's slow step (open windows, emit chunks).
        other: called as ``other(data, t0)`` for any frame not of ``fast_type``, or whose t0 needs a check.

    Attributes:
        last_t0: the t0 of the last write that gave one (0.0 before any).
        last_end: the time that write ended: ``last_t0 + n * inv_rate``; a fast t0 is at least this.
        inv_rate: ``1 / rate``, or 0.0 without a rate.
        max_gap: seconds after ``last_end`` a fast t0 may be (0.0: any).
        max_t0: a fast t0 is at most this: ``last_end + max_gap`` once a write gave a t0 (with ``max_gap``).
    """

    __slots__ = (
        "due",
        "ends",
        "fast_type",
        "inv_rate",
        "last_end",
        "last_t0",
        "max_gap",
        "max_t0",
        "other",
        "segs",
        "threshold",
    )
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
        self.segs, self.ends, self.fast_type = segs, ends, fast_type
        self.threshold, self.due, self.other = threshold, due, other
        self.last_t0 = self.last_end = self.inv_rate = self.max_gap = 0.0
        self.max_t0 = MAX_T0

    def write(self, data: Any, t0: float | None = None) -> None:
        """Append ``data`` if it is of ``fast_type`` and ``t0`` plainly good, else hand both to ``other``."""
        if type(data) is self.fast_type and (
            t0 is None or ((type(t0) is float or type(t0) is int) and self.last_end <= t0 <= self.max_t0)
        ):
            ends = self.ends
            n = len(data)
            end = ends[-1] + n
            self.segs.append(data)
            ends.append(end)
            if end >= self.threshold:
                self.due(n, t0)
            if t0 is not None:  # after due(): a write that raised there leaves them as they were
                self.last_t0 = float(t0)
                self.last_end = t0 + n * self.inv_rate
                self.max_t0 = self.last_end + self.max_gap if self.max_gap > 0.0 else MAX_T0
            return
        self.other(data, t0)


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
