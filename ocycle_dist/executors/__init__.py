"""Executors: where callbacks run, chosen by name from :data:`EXECUTORS` or given as an object.

The contract is in :mod:`.base`. ``serial`` runs each chunk in the writer's thread, ``thread`` and
``process`` are the stdlib pools, ``celery`` is :class:`ocycle_dist.remote.executor.CeleryExecutor`
(imported only when asked for: the core never loads Celery, kombu or redis).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from ..errors import ConfigError
from .base import ChunkExecutor, Executor, PoolAdapter, as_chunk_executor, is_executor
from .serial import SerialExecutor


def _celery(max_workers: int, policy: str, **options: Any) -> ChunkExecutor:
    try:
        from ..remote.executor import CeleryExecutor  # imports redis and msgpack: only when asked for
        from ..remote.settings import Settings
    except ModuleNotFoundError as exc:  # a bare install: say which extra brings what is missing
        from ..extras import install_hint

        hint = install_hint(exc.name, "device")
        if hint is None:
            raise
        raise ModuleNotFoundError(f"mode='celery' needs it: {hint}", name=exc.name) from None

    del max_workers, policy  # one publisher per process and broker; the emitter applies the policy
    known = [name for name in inspect.signature(CeleryExecutor).parameters if name != "self"]
    for name, value in options.items():
        if name not in known:
            raise ConfigError(name, value, f"an option of mode='celery': one of {', '.join(known)}")
    checks = {
        "settings": (lambda v: isinstance(v, Settings), "an ocycle_dist.remote.settings.Settings"),
        "app": (lambda v: hasattr(v, "conf"), "a Celery app"),
        "broker": (lambda v: isinstance(v, str), "a Redis URL (str)"),
        "spool": (lambda v: isinstance(v, (str, os.PathLike)), "a directory (str or path)"),
        "batch": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    }
    for name, (ok, expected) in checks.items():
        value = options.get(name)
        if value is not None and not ok(value):
            raise ConfigError(name, value, f"{expected} or None")
    return CeleryExecutor(**options)


def _local(cls: Callable[..., Any]) -> Callable[..., ChunkExecutor]:
    def make(max_workers: int, policy: str, **options: Any) -> ChunkExecutor:
        del policy  # applied by the emitter's max_inflight
        if options:
            name = next(iter(options))
            raise ConfigError(name, options[name], f"no such option for a local mode ({', '.join(LOCAL_MODES)})")
        return as_chunk_executor(cls(max_workers=max_workers))

    return make


LOCAL_MODES = ("serial", "thread", "process")
REMOTE_MODES = ("celery",)  # callbacks may be names; values, not buffer objects, travel

EXECUTORS: dict[str, Callable[..., ChunkExecutor]] = {
    "serial": _local(SerialExecutor),
    "thread": _local(ThreadPoolExecutor),
    "process": _local(ProcessPoolExecutor),
    "celery": _celery,
}


def check_mode(mode: Any) -> None:
    """Raise ConfigError unless ``mode`` names an executor or is one."""
    if not (mode in EXECUTORS if isinstance(mode, str) else is_executor(mode)):
        raise ConfigError("mode", mode, f"one of {', '.join(map(repr, EXECUTORS))} or an executor object")


def make_executor(mode: str, npool: int, policy: str = "block", **options: Any) -> ChunkExecutor:
    """A new executor for ``mode``: ``npool`` workers (pools only), the emitter's overload ``policy`` (for
    executors that bound their own backlog) and ``options`` for the executor."""
    check_mode(mode)
    return EXECUTORS[mode](npool, policy, **options)


__all__ = [
    "EXECUTORS",
    "LOCAL_MODES",
    "REMOTE_MODES",
    "ChunkExecutor",
    "Executor",
    "PoolAdapter",
    "SerialExecutor",
    "as_chunk_executor",
    "check_mode",
    "is_executor",
    "make_executor",
]
