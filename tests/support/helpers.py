"""Small helpers shared by the test modules."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str | Callable[[], str] = "condition") -> Any:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds (``what`` may be a callable)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what if isinstance(what, str) else what()}")
        time.sleep(0.02)


def footprint(directory: Path) -> int:
    """Bytes of every file in a spool's directory (database, WAL, shared-memory index)."""
    return sum(f.stat().st_size for f in Path(directory).iterdir() if f.is_file())


class Owner:
    """What the publisher reads of the executor that keeps an entry: its settings, its token, whether it batches."""

    def __init__(self, settings: Any, token: str) -> None:
        self.settings, self.token, self.batching = settings, token, True


def owned(entries: list[Any], settings: Any, token: str) -> list[Any]:
    """``entries`` as kept by one executor with ``settings`` and ``token`` (for publishing them directly)."""
    owner = Owner(settings, token)
    for entry in entries:
        entry.owner = owner
    return entries
