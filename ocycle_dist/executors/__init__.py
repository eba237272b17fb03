"""Executors: where callbacks run. Each has the ``concurrent.futures`` shape.

``submit(fn, *args, **kwargs) -> Future`` and ``shutdown(wait=True)``. The stdlib pools plug in unchanged;
``mode`` picks one by name from :data:`EXECUTORS`, or is an executor object itself.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from ..errors import ConfigError
from .serial import SerialExecutor


def _celery(max_workers: int, **options: Any) -> Any:
    from .celery import CeleryExecutor  # imports celery: only when asked for

    return CeleryExecutor(max_workers=max_workers, **options)


def _local(cls: Callable[..., Any]) -> Callable[..., Any]:
    def make(max_workers: int, **options: Any) -> Any:
        if options:
            name = next(iter(options))
            raise ConfigError(name, options[name], f"no such option for a local mode ({', '.join(LOCAL_MODES)})")
        return cls(max_workers=max_workers)

    return make


LOCAL_MODES = ("serial", "thread", "process")
REMOTE_MODES = ("celery",)  # callbacks may be names; values, not buffer objects, travel

EXECUTORS: dict[str, Callable[..., Any]] = {
    "serial": _local(SerialExecutor),
    "thread": _local(ThreadPoolExecutor),
    "process": _local(ProcessPoolExecutor),
    "celery": _celery,
}


def is_executor(obj: Any) -> bool:
    """Whether ``obj`` has the executor shape."""
    return callable(getattr(obj, "submit", None)) and callable(getattr(obj, "shutdown", None))


def check_mode(mode: Any) -> None:
    """Raise ConfigError unless ``mode`` names an executor or is one."""
    if not (mode in EXECUTORS if isinstance(mode, str) else is_executor(mode)):
        raise ConfigError("mode", mode, f"one of {', '.join(map(repr, EXECUTORS))} or an executor object")


def make_executor(mode: str, npool: int, **options: Any) -> Executor:
    """A new executor for ``mode`` with ``npool`` workers; ``options`` go to the executor."""
    check_mode(mode)
    return EXECUTORS[mode](npool, **options)  # type: ignore[no-any-return]


__all__ = ["EXECUTORS", "LOCAL_MODES", "REMOTE_MODES", "SerialExecutor", "check_mode", "is_executor", "make_executor"]
