"""ocycle 0.1.0's BufferEmit API that the emitter's own design does not need, kept for drop-in use.

Every public attribute and method of ocycle 0.1.0's ``BufferEmit`` (``pool``, ``t0``, ``current``, ``reset()``,
``truncate()``...), with its meaning where ocycle works and this package's fixes where it does not
(``tests/unit/test_compat.py`` runs both packages side by side). :class:`~ocycle_dist.emit.BufferEmit`
inherits it; nothing else uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .windows import Windows


class OcycleCompat:
    """Mixin of :class:`~ocycle_dist.emit.BufferEmit`: ocycle 0.1.0's attributes and methods."""

    if TYPE_CHECKING:  # provided by BufferEmit
        windows: Windows
        size: int
        clip: bool
        _free_buffers: list[Any]
        _new_buffer: Any

        def _release(self, buffer: Any) -> None: ...
        def write(self, data: Any, t0: float | None = None) -> None: ...
        def close(self, wait: bool = True, flush: bool = False, timeout: float | None = None) -> int: ...

    _CURRENT_READERS = frozenset({"getvalue", "tell", "read", "buffer", "getbuffer"})  # see __getattr__

    @property
    def pool(self) -> Any:
        """The pool running the callbacks (a ``ThreadPoolExecutor``, ``ProcessPoolExecutor``, the serial or
        the celery executor, or the executor given as ``mode``); None once closed, as in ocycle."""
        from .executors import PoolAdapter

        executor = self.__dict__.get("_executor")
        return executor.pool if isinstance(executor, PoolAdapter) else executor

    @property
    def clip_value(self) -> bool:
        """ocycle's name of ``clip``."""
        return self.clip

    @property
    def t0(self) -> float:
        """The time of the first element of the chunk being collected; 0 when none is collected.

        ocycle gave the time of the write that emitted the previous chunk (its chunks' t0 defect).
        """
        t0 = self.windows.first_t0()
        return t0 if t0 is not None and self.windows.buffered else 0

    @property
    def pause_until(self) -> float:
        """With a sampler: the time until which writes are skipped (0 before the first pause)."""
        return self.windows.pause_until

    @property
    def is_pausing(self) -> bool:
        """Whether the sampler is pausing the collection now."""
        import time

        return self.windows.paused and time.time() < self.windows.pause_until

    @property
    def full(self) -> bool:
        """Whether a whole chunk is collected and not yet emitted (never, between writes: it is emitted)."""
        return self.windows.buffered >= self.size

    @property
    def items(self) -> list[Any]:
        """The spare buffers, recycled for ``asbuffer=True`` callbacks."""
        return self._free_buffers

    @property
    def current(self) -> Any:
        """A buffer (``io.BytesIO``, ``NumpyIO``...) holding the elements collected and not yet emitted.

        A copy, its cursor at the end, as ocycle's current buffer: writing to it does not change the stream.
        """
        windows, buffer = self.windows, self._new_buffer()
        if windows.buffered:
            buffer.write(windows.take(windows.end - windows.buffered, windows.end))
        return buffer

    @property
    def last(self) -> Any:
        """None before the first chunk, then :attr:`current`: in ocycle the emitted buffer is recycled as the
        current one."""
        return self.current if self.windows.seq else None

    def __getattr__(self, name: str) -> Any:
        """ocycle delegated unknown attributes to its current buffer: ``getvalue()``, ``tell()``, ``read()``,
        ``buffer`` (numpy, list) read the elements collected and not yet emitted."""
        if name in OcycleCompat._CURRENT_READERS:
            return getattr(self.current, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def reset(self) -> Any:
        """Discard the elements collected and not yet emitted (counted in ``stats().skipped``); returns the
        now empty :attr:`current`."""
        windows = self.windows
        dropped = windows.buffered
        if dropped:
            windows.skipped += dropped
            windows.skipped_leftover += dropped
            windows.reset(windows.end)
        return self.current

    def next(self, content: Any = None) -> None:
        """Start a new chunk: discard what is collected (:meth:`reset`), then write ``content`` if given."""
        self.reset()
        if content is not None and len(content):
            self.write(content)

    def truncate(self, size: int | None = None) -> Any:
        """Keep the first ``size`` (default and when 0: ``self.size``) elements collected; return the others.

        The elements cut are counted in ``stats().skipped``; writing goes on after the elements kept (ocycle
        left its cursor at 0, so the next write overwrote them).
        """
        windows = self.windows
        keep = int(size or self.size)
        begin, end = windows.end - windows.buffered, windows.end
        t0 = windows.first_t0()
        if begin + keep >= end or t0 is None:
            return self._new_buffer().getvalue()
        kept = windows.take(begin, begin + keep) if keep > 0 else None
        overhang = windows.take(begin + keep, end)
        windows.skipped += end - begin - max(keep, 0)
        windows.reset(begin)
        if kept is not None:
            windows.push(kept, keep, t0)
        return overhang

    def reuse(self, item: Any) -> None:
        """Empty ``item`` and keep it as a spare buffer (:attr:`items`)."""
        self._release(item)

    def __del__(self) -> None:
        """Close without waiting, as ocycle did: :attr:`pool` is None afterwards."""
        try:
            if self.__dict__.get("_executor") is not None:
                self.close(wait=False)
        except Exception:  # at interpreter exit, half-built instances: nothing to report to
            pass
