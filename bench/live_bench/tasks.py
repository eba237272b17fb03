"""ocycle_dist's worker tasks of ``bench/bench_live.py``, loaded with ``celery -A workers worker --include``.

``bench.live.classify`` is ``workers.tasks.classify`` (Silero VAD, or its fallback) padded with a sleep to
``BENCH_MODEL_SECONDS`` per chunk: a model slower than its chunks arrive at the bench's accelerated pace, so
that it lags for real while the sound level must stay live.
"""

from __future__ import annotations

import os
import time
from typing import Any

from workers import app, settings, vad

MODEL_SECONDS = float(os.environ.get("BENCH_MODEL_SECONDS", "0"))


@app.task(name="bench.live.classify")
def classify(chunk: Any, t0: float) -> dict[str, Any]:
    """``workers.tasks.classify``, taking ``BENCH_MODEL_SECONDS`` in all."""
    start = time.perf_counter()
    result = {"t0": t0, **vad.classify(chunk, rate=settings.sample_rate)}
    time.sleep(max(0.0, MODEL_SECONDS - (time.perf_counter() - start)))
    return result
