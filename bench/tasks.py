"""The bench's own task on the ``workers`` app: ``bench.echo`` returns what it got.

Loaded by the bench's workers with ``celery -A workers worker --include bench.tasks``.
"""

from __future__ import annotations

from typing import Any

from workers import app


@app.task(name="bench.echo")
def echo(chunk: Any, t0: float) -> list[Any]:
    """Return ``[chunk, t0]`` unchanged, like ``bench.refapp``'s echo."""
    return [chunk, t0]
