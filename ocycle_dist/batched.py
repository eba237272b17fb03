"""Batched functions: a job that takes many chunks in one call, usable wherever a job of one chunk is.

A model runs many inputs at once far faster than one at a time (one ONNX call of 64 chunks instead of 64
calls). :func:`batched` turns ``fn(chunks, t0s)`` (lists in, a list of results out) into a function of one
chunk, ``(chunk, t0)``, that calls ``fn`` with lists of one: so it runs unchanged as a ``BufferEmit``
callback, as a Celery task on any worker, or called directly. Whoever has many chunks of it at hand (the
worker of an app made by :func:`ocycle_dist.remote.worker.make_app`, for the chunks of a batch message or a
drain) calls ``fn`` once for all of them instead, through :func:`batch_of` and :func:`call_batch`::

    @app.task(name="tasks.classify")
    @ocycle.batched(max_chunks=64)
    def classify(chunks, t0s):
        return [model(chunk) for chunk in chunks]

The results, one per chunk and in order, are each the outcome of their chunk: an exception *object* in the
list fails that chunk alone (a call of one chunk raises it). An exception raised by ``fn`` fails every chunk
of the call. With a ``metas`` parameter, ``fn`` is also given each chunk's :class:`~ocycle_dist.chunk.Chunk`
(None where the caller had none, e.g. ``classify(chunk, t0)`` called directly).

Knows nothing of Celery.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

BATCH_ATTRIBUTE = "__ocycle_batch__"
"""The attribute of a :func:`batched` function that holds its :class:`Batch`."""


@dataclass(frozen=True)
class Batch:
    """What :func:`batched` knows of a batch function.

    Attributes:
        fn: the function of lists, ``fn(chunks, t0s)`` or ``fn(chunks, t0s, metas)``.
        max_chunks: chunks per call at most.
        wants_metas: whether ``fn`` has a ``metas`` parameter.
    """

    fn: Callable[..., Any]
    max_chunks: int
    wants_metas: bool

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


MAX_CHUNKS = 64
"""Chunks per call of a batched function at most, unless it says otherwise (a batch message's most)."""


def batched(fn: Callable[..., Any] | None = None, *, max_chunks: int = MAX_CHUNKS) -> Any:
    """Declare ``fn(chunks, t0s[, metas]) -> list`` a function of many chunks; return it as a function of one.

    Usable bare (``@batched``) or with options (``@batched(max_chunks=64)``).

    Args:
        fn: called with a list of chunks, the list of their t0s and, when it has a ``metas`` parameter, the list
            of their :class:`~ocycle_dist.chunk.Chunk` (items None where unknown); returns a list of one result per
            chunk, in order, where an exception object fails that chunk alone.
        max_chunks: at most this many chunks per call (a caller with more splits them): the chunks held at once
            for a call.

    Returns:
        A function ``(chunk, t0)`` (``(chunk, t0, meta=None)`` when ``fn`` takes ``metas``) returning ``fn``'s
        result for that one chunk, or raising its exception. Its attribute ``__ocycle_batch__`` is a
        :class:`Batch`, read by :func:`batch_of`.

    Raises:
        ConfigError: ``fn`` is not callable or ``max_chunks`` is not a positive int.
    """
    if isinstance(max_chunks, bool) or not isinstance(max_chunks, int) or max_chunks < 1:
        raise ConfigError("max_chunks", max_chunks, "a positive int")
    if fn is None:
        return functools.partial(batched, max_chunks=max_chunks)
    if not callable(fn):
        raise ConfigError("fn", fn, "a function of (chunks, t0s) or (chunks, t0s, metas) returning a list")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    spec = Batch(fn, max_chunks, "metas" in params)

    if spec.wants_metas:

        def one(chunk: Any, t0: float, meta: Any = None) -> Any:
            return _single(call_batch(spec, [chunk], [t0], [meta])[0])

    else:

        def one(chunk: Any, t0: float) -> Any:  # type: ignore[misc]
            return _single(call_batch(spec, [chunk], [t0])[0])

    # its name, module and docs are fn's; not its signature nor annotations (Celery and ocycle_dist read them)
    functools.update_wrapper(one, fn, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
    del one.__wrapped__  # type: ignore[attr-defined]  # inspect.signature would follow it to fn's
    setattr(one, BATCH_ATTRIBUTE, spec)
    return one


def batch_of(fn: Any) -> Batch | None:
    """The :class:`Batch` of a function made by :func:`batched` (or of a Celery task of one), else None."""
    spec = getattr(fn, BATCH_ATTRIBUTE, None)
    if spec is None:
        spec = getattr(getattr(fn, "run", None), BATCH_ATTRIBUTE, None)
    return spec if isinstance(spec, Batch) else None


def call_batch(spec: Batch, chunks: list[Any], t0s: list[Any], metas: Sequence[Any] | None = None) -> list[Any]:
    """Call the batch function once on ``chunks``; its list of results (exception objects for failed chunks).

    Raises:
        Exception: whatever the function raised (every chunk of the call fails with it).
        TypeError: the function did not return a list of one result per chunk.
    """
    if spec.wants_metas:
        results = spec.fn(chunks, t0s, list(metas) if metas is not None else [None] * len(chunks))
    else:
        results = spec.fn(chunks, t0s)
    if not isinstance(results, (list, tuple)) or len(results) != len(chunks):
        got = f"{len(results)} results" if isinstance(results, (list, tuple)) else f"a {type(results).__name__}"
        raise TypeError(
            f"batched function {spec.name} returned {got} for {len(chunks)} chunks: expected a list of one result"
            " (or exception) per chunk"
        )
    return list(results)


def _single(result: Any) -> Any:
    if isinstance(result, BaseException):
        raise result
    return result


__all__ = ["BATCH_ATTRIBUTE", "MAX_CHUNKS", "Batch", "batch_of", "batched", "call_batch"]
