"""The reference for ``bench/bench_celery.py``: a plain, stock Celery app (JSON, Redis broker and result backend).

Worker: ``BENCH_REF_URL=redis://127.0.0.1:6379/1 celery -A bench.refapp worker -c 1`` from the repository root.
Both the broker and the result backend are ``BENCH_REF_URL`` (default ``redis://localhost:6379/1``).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

URL = os.environ.get("BENCH_REF_URL", "redis://localhost:6379/1")

app = Celery("refapp", broker=URL, backend=URL)
app.conf.update(broker_connection_retry_on_startup=True)


@app.task(name="bench.refapp.echo")
def echo(chunk: Any, t0: float) -> list[Any]:
    """Return ``[chunk, t0]`` unchanged, like ``workers.tasks.echo``."""
    return [chunk, t0]
