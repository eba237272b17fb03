"""The model one chunk at a time, as a task of the ``workers`` app, for ``bench/bench_workers.py``.

``bench.onechunk.classify`` is ``workers.tasks.classify`` without batching: every chunk runs through Silero VAD
alone (:func:`workers.vad.classify`), whatever reached the worker with it. Loaded by the bench's workers with
``celery -A workers worker --include bench.onechunk_tasks``.
"""

from __future__ import annotations

from typing import Any

from workers import app, settings, vad


@app.task(name="bench.onechunk.classify")
def classify(chunk: Any, t0: float) -> dict[str, Any]:
    """``workers.tasks.classify`` of one chunk, never batched."""
    return {"t0": t0, **vad.classify(chunk, rate=settings.sample_rate)}
