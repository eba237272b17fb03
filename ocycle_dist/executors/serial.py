"""The serial executor: runs each call at once, in the caller's thread."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .base import ChunkExecutor


class SerialExecutor(ChunkExecutor):
    """An inline executor: ``call()`` runs the function now; ``submit()`` does the same into a finished Future.

    ``BufferEmit(mode='serial')`` uses ``call()``: no Future per chunk.
    """

    inline = True

    def __init__(self, max_workers: int | None = None) -> None:
        del max_workers  # accepted for the shape of the stdlib pools

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` now and return its finished Future."""
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the Future carries it to on_error
            future.set_exception(exc)
        return future
