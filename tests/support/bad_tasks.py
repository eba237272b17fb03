"""Tasks for the bad-input tests (loaded by their own worker with -I)."""

from __future__ import annotations

from typing import Any

from workers import app


@app.task(name="bad.unencodable")
def unencodable(chunk: Any, t0: float) -> object:
    return object()
