"""The executor contract: what ``BufferEmit`` needs of the thing that runs its callbacks.

Any object with the ``concurrent.futures`` shape (:class:`Executor`: ``submit`` and ``shutdown``) can be
given as ``mode``: the stdlib pools plug in unchanged. The emitter talks to a :class:`ChunkExecutor`, the
same shape plus optional members with defaults; a plain executor is wrapped in a :class:`PoolAdapter`
(:func:`as_chunk_executor`), so the emitter never probes for members.

The optional members, with their defaults:

- ``wants_meta`` (``False``): ``submit`` is given ``meta=Chunk(...)`` for every chunk (remote executors send
  it along with the task, whatever the callback's signature).
- ``inline`` (``False``): the executor runs a call at once in the caller's thread; the emitter then uses
  ``call(fn, *args, **kwargs)`` and takes the result or the exception directly, with no Future per chunk.
- ``adopt(stream)`` (``[]``): chunks of ``stream`` left pending by an earlier producer (a durable spool), as
  ``(Chunk, Future, emitted_at)`` triples (``emitted_at``: the wall-clock time of its first emit) that the
  emitter follows like its own.
- ``budget`` (``None``) and ``cost(value)``: an executor that keeps its chunks (the celery mode) names a budget
  in its own units (bytes) and what a chunk costs; the emitter's one bound (:mod:`ocycle_dist.inflight`) then
  holds ``spooled_bytes`` under the budget with its ``policy``, and ``max_inflight`` defaults to no count bound.
- ``spooled_bytes`` (``0``): what the executor keeps now, in the units of its budget.
- ``joins_later`` (``False``): ``submit`` may be given a :class:`~ocycle_dist.pieces.Pieces` instead of the
  chunk's value, and joins it (``Pieces.join()``) on a thread of its own, not the writer's.
- ``durable`` (``False``): chunks still pending at shutdown are kept for the next producer (a durable spool).
- ``settled(future)``: called once the emitter has handled a chunk's outcome (its ``on_done``/``on_error``
  has run); a durable executor forgets the chunk only then, so a crash in between loses no callback.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, runtime_checkable

from ..chunk import Chunk


@runtime_checkable
class Executor(Protocol):
    """The ``concurrent.futures`` shape: all an object given as ``mode`` must have."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]: ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...


class ChunkExecutor:
    """Base class of the project's executors: the :class:`Executor` shape plus the optional members."""

    wants_meta: bool = False
    inline: bool = False
    budget: int | None = None
    durable: bool = False
    joins_later: bool = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        raise NotImplementedError

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop; with ``wait``, once what was submitted has finished."""

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` now and return its result (inline executors only)."""
        raise NotImplementedError(f"{type(self).__name__} is not inline")

    def adopt(self, stream: str) -> list[tuple[Chunk, Future[Any], float]]:
        """Chunks of ``stream`` an earlier producer left pending: none by default."""
        return []

    def cost(self, value: Any) -> int:
        """What keeping ``value`` costs against :attr:`budget` (executors with a budget only)."""
        return 0

    @property
    def spooled_bytes(self) -> int:
        """Bytes of chunks kept until their result is in: none by default."""
        return 0

    def settled(self, future: Future[Any]) -> None:
        """The emitter has handled the outcome of ``future``'s chunk: nothing to do by default."""


class PoolAdapter(ChunkExecutor):
    """A plain ``concurrent.futures`` executor (a stdlib pool, or the caller's) as a :class:`ChunkExecutor`."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def is_executor(obj: Any) -> bool:
    """Whether ``obj`` has the executor shape (``submit`` and ``shutdown``)."""
    return callable(getattr(obj, "submit", None)) and callable(getattr(obj, "shutdown", None))


def as_chunk_executor(obj: Executor) -> ChunkExecutor:
    """``obj`` when it is a :class:`ChunkExecutor`, else ``obj`` behind a :class:`PoolAdapter`."""
    return obj if isinstance(obj, ChunkExecutor) else PoolAdapter(obj)
