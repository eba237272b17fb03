"""Tap: one input feeding several emitters (e.g. 0.5 s, 2 s and 10 s windows of one microphone)."""

from __future__ import annotations

import time
from typing import Any

from .emit import BufferEmit
from .errors import ClosedError, ConfigError
from .stats import Stats


class Tap:
    """Write each frame once; every emitter gets it.

    The frame is checked and frozen once and the same object is kept by every emitter: the input is not
    copied per consumer. Each emitter cuts its own chunks, with its own size, executor and policy.

    >>> import ocycle_dist as ocycle
    >>> got = {}
    >>> short = ocycle.BufferEmit(lambda v, t0: got.setdefault("short", []).append(v), 2, clip=True)
    >>> long = ocycle.BufferEmit(lambda v, t0: got.setdefault("long", []).append(v), 4, clip=True)
    >>> with ocycle.Tap(short, long) as tap:
    ...     tap.write(b"abcd")
    >>> got
    {'short': [b'ab', b'cd'], 'long': [b'abcd']}
    """

    def __init__(self, *emitters: BufferEmit) -> None:
        if not emitters:
            raise ConfigError("emitters", emitters, "at least one BufferEmit")
        for e in emitters:
            if not isinstance(e, BufferEmit):
                raise ConfigError("emitters", e, "BufferEmit instances")
            if not emitters[0].kind.compatible(e.kind):
                raise ConfigError("emitters", e, f"emitters of one kind ({emitters[0].kind.name})")
        self.emitters = emitters
        # the frames are checked once, by the strictest kind: a remote emitter's refuses what the wire cannot carry,
        # one with a declared dtype refuses any other
        self._kind = next((e.kind for e in emitters if e.kind.wire), None) or next(
            (e.kind for e in emitters if getattr(e.kind, "dtype", None) is not None), emitters[0].kind
        )
        self._unsure = self._kinds_to_check()
        self._closed = False

    def _kinds_to_check(self) -> list[Any]:
        """The emitters' kinds that may not take every frame the checking kind takes, as they are now (a numpy
        stream whose dtype or shape is not yet that kind's): a frame is checked by them too, before any emitter
        gets it (and teaches them the dtype and shape). Soon none: then a frame is checked once."""
        return [e.kind for e in self.emitters if e.kind is not self._kind and not e.kind.same_as(self._kind)]

    def write(self, data: Any, t0: float | None = None) -> None:
        """Write one frame to every emitter; ``t0`` is ``time.time()`` when None, the same for all.

        Raises:
            FrameError: ``data`` or ``t0`` does not fit (checked for every emitter first: none gets it).
        """
        if self._closed:
            raise ClosedError("write() on a closed Tap")
        frozen, n = self._kind.accept(data)
        if self._unsure:
            for kind in self._unsure:
                kind.adopt(frozen)
            self._unsure = self._kinds_to_check()
        if t0 is None:  # now, for all; like BufferEmit.write(t0=None), not compared with the previous write's
            now = time.time()
            for e in self.emitters:
                e.feed(frozen, n, now, compare=False)
            return
        for e in self.emitters:
            e.windows.check_t0(t0)
        for e in self.emitters:
            e.feed(frozen, n, t0)

    def open(self) -> Tap:
        """Open every emitter."""
        for e in self.emitters:
            e.open()
        self._closed = False
        return self

    def close(self, wait: bool = True, flush: bool = False, timeout: float | None = None) -> int:
        """Close every emitter (see ``BufferEmit.close``); ``timeout`` bounds the whole close.

        Returns:
            The number of chunks still in flight, over all emitters.
        """
        self._closed = True
        if flush:  # every emitter's last chunk goes out before any close waits
            for e in self.emitters:
                if not e.closed:
                    e.flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = 0
        for e in self.emitters:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            pending += e.close(wait=wait, timeout=left)
        return pending

    def stats(self) -> dict[str, Stats]:
        """Each emitter's counters, by stream id."""
        return {e.stream: e.stats() for e in self.emitters}

    def __enter__(self) -> Tap:
        return self.open()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
