"""Stock Celery's tasks of ``bench/bench_live.py`` (``celery -A bench.refapp worker --include ...``).

The three consumers for the plain Celery app of ``bench/refapp.py`` (JSON, so a chunk travels as float32
bytes): the same functions as ``workers.tasks.spl``, ``archive_flac`` and the bench's lagging ``classify``
(``BENCH_MODEL_SECONDS`` per chunk). Archives go to ``BENCH_ARCHIVE_DIR``.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

import numpy as np

from bench.refapp import RATE, _vad, app

MODEL_SECONDS = float(os.environ.get("BENCH_MODEL_SECONDS", "0"))


def _audio() -> Any:
    _vad()  # sets up the stand-in package of workers/ (without ocycle_dist's app)
    return importlib.import_module("bench_ref_workers.audio")


def _samples(chunk: bytes) -> np.ndarray:
    return np.frombuffer(chunk, dtype="<f4")


@app.task(name="bench.live.ref_spl")
def spl(chunk: bytes, t0: float) -> dict[str, Any]:
    return {"t0": t0, **_audio().spl(_samples(chunk))}


@app.task(name="bench.live.ref_classify")
def classify(chunk: bytes, t0: float) -> dict[str, Any]:
    start = time.perf_counter()
    result = {"t0": t0, **_vad().classify(_samples(chunk), rate=RATE)}
    time.sleep(max(0.0, MODEL_SECONDS - (time.perf_counter() - start)))
    return result


@app.task(name="bench.live.ref_archive_flac")
def archive_flac(chunk: bytes, t0: float) -> dict[str, Any]:
    directory = os.environ.get("BENCH_ARCHIVE_DIR", "archive")
    keys = [os.environ["BENCH_ARCHIVE_RECIPIENTS"]]  # encrypted as ocycle_dist's workers do
    samples = _samples(chunk)
    result = _audio().archive_flac(samples, rate=RATE, directory=directory, stream="ref", t0=t0, recipients=keys)
    return {"t0": t0, **result}
