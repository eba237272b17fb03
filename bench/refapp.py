"""The reference for ``bench/bench_celery.py``: a plain, stock Celery app (JSON, Redis broker and result backend).

Worker: ``BENCH_REF_URL=redis://127.0.0.1:6379/1 celery -A bench.refapp worker -c 1`` from the repository root.
Both the broker and the result backend are ``BENCH_REF_URL`` (default ``redis://localhost:6379/1``).
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from celery import Celery

URL = os.environ.get("BENCH_REF_URL", "redis://localhost:6379/1")
RATE = 16000

app = Celery("refapp", broker=URL, backend=URL)
app.conf.update(broker_connection_retry_on_startup=True)


@cache
def _vad() -> ModuleType:
    """``workers/vad.py`` (and the ``workers/audio.py`` it imports) loaded by path under a stand-in package.

    Importing the ``workers`` package would create ocycle_dist's app.
    """
    package = ModuleType("bench_ref_workers")
    package.__path__ = [str(Path(__file__).resolve().parent.parent / "workers")]
    sys.modules.setdefault(package.__name__, package)
    return importlib.import_module("bench_ref_workers.vad")


@cache
def _audio() -> ModuleType:
    """``workers/audio.py``, loaded like :func:`_vad`."""
    _vad()
    return importlib.import_module("bench_ref_workers.audio")


@app.task(name="bench.refapp.spl")
def spl(chunk: bytes, t0: float) -> dict[str, Any]:
    """``workers.tasks.spl`` for plain Celery: the chunk travels as int16 PCM bytes."""
    return {"t0": t0, **_audio().spl(chunk)}


@app.task(name="bench.refapp.echo")
def echo(chunk: Any, t0: float) -> list[Any]:
    """Return ``[chunk, t0]`` unchanged, like ``bench.tasks.echo``."""
    return [chunk, t0]


@app.task(name="bench.refapp.classify")
def classify(chunk: bytes, t0: float) -> dict[str, Any]:
    """``workers.tasks.classify`` for plain Celery: the chunk travels as float32 bytes (JSON has no arrays)."""
    import numpy as np

    return {"t0": t0, **_vad().classify(np.frombuffer(chunk, dtype="<f4"), rate=RATE)}
