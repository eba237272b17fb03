"""The write() hot path: append a frame, and call back only when there is work to do.

:class:`Appender` is the reference implementation; ``ocycle_dist/_speedups.c`` is the same logic in C
(built when a compiler is available at install), used unless ``OCYCLE_PURE_PYTHON=1``. Both are tested.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

NEVER = sys.maxsize  # a threshold never reached


class Appender:
    """Append frames of ``fast_type`` to ``segs`` (end positions to ``ends``); call back otherwise.

    Args:
        segs: the frames kept, oldest first (shared with the emitter).
        ends: ``ends[0]`` is the position of ``segs[0]``; ``ends[i + 1]`` the position after ``segs[i]``.
        fast_type: the exact type appended without a check (None: every frame goes to ``other``).
        threshold: ``due(n, t0)`` is called after a write that brings the end to at least this.
        due: the emitter's slow step (open windows, emit chunks).
        other: called as ``other(data, t0)`` for any frame not of ``fast_type``.
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
        self.segs, self.ends, self.fast_type = segs, ends, fast_type
        self.threshold, self.due, self.other = threshold, due, other

    def write(self, data: Any, t0: float | None = None) -> None:
        """Append ``data`` if it is of ``fast_type``, else hand it to ``other``."""
        if type(data) is self.fast_type:
            ends = self.ends
            end = ends[-1] + len(data)
            self.segs.append(data)
            ends.append(end)
            if end >= self.threshold:
                self.due(len(data), t0)
            return
        self.other(data, t0)


def appender_class() -> type:
    """The C Appender when built and not disabled by ``OCYCLE_PURE_PYTHON=1``, else the Python one."""
    if os.environ.get("OCYCLE_PURE_PYTHON") != "1":
        try:
            from ._speedups import Appender as CAppender

            return CAppender  # type: ignore[no-any-return]
        except ImportError:
            pass
    return Appender
