"""The test tasks, on the workers app: ``tests.echo``, ``tests.fail`` and the contract suite's callbacks.

Every worker a test starts loads them: ``celery -A workers worker --include tests.support.tasks``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from ocycle_dist.batched import batched
from workers import app


@app.task(name="tests.echo")
def echo(chunk: Any, t0: float) -> list[Any]:
    """Return ``[chunk, t0]`` unchanged."""
    return [chunk, t0]


@app.task(name="tests.fail")
def fail(chunk: Any, t0: float) -> None:
    """Raise ``ValueError`` (the error path)."""
    raise ValueError(f"failing on purpose on a chunk of {len(chunk)} elements at t0={t0}")


@app.task(name="contract.reverse")
def reverse(value: bytes, t0: float) -> bytes:
    return value[::-1]


@app.task(name="contract.echo_t0")
def echo_t0(value: bytes, t0: float) -> tuple[bytes, float]:
    return value, t0


@app.task(name="contract.length")
def length(value: bytes, t0: float) -> int:
    return len(value)


@app.task(name="contract.echo_meta")
def echo_meta(value: bytes, t0: float, meta: Any) -> tuple[bytes, float, Any]:
    return value, t0, meta


@app.task(name="contract.fail_on_b")
def fail_on_b(value: bytes, t0: float) -> bytes:
    if value.startswith(b"b"):
        raise ValueError(f"chunk {value!r} starts with b")
    return value


# ---- tasks of the fault tests (tests/test_faults.py) ------------------------------------------------------


def _redis() -> Any:
    from ocycle_dist.remote.runner import broker_client

    return broker_client(app)


@app.task(name="contract.slow_echo", bind=True)
def slow_echo(self: Any, value: bytes, t0: float, meta: Any) -> list[Any]:
    """Return ``[value, worker]`` after a short sleep; a chunk starting with ``b"slow"`` sleeps 2 s.

    While it runs, ``ocycle:test:running:<stream>:<seq>`` holds the worker's name: the fault tests wait on
    it to know a worker is inside a task.
    """
    key = f"ocycle:test:running:{meta.stream}:{meta.seq}"
    with contextlib.suppress(Exception):  # the marker is best effort: Redis may be down (test_faults)
        _redis().set(key, self.request.hostname, ex=60)
    time.sleep(2.0 if value.startswith(b"slow") else 0.002)
    with contextlib.suppress(Exception):
        _redis().delete(key)
    return [value, self.request.hostname]


@app.task(name="contract.sleep")
def sleep(value: bytes, t0: float) -> bytes:
    """Sleep ``float(value)`` seconds (for time limits), then return the value."""
    time.sleep(float(value))
    return value


# ---- tasks of the live-stream tests (tests/integration/test_live_stream.py) --------------------------------


@app.task(name="contract.slow_model")
def slow_model(value: Any, t0: float) -> dict[str, Any]:
    """A model 3x slower than real time for 2 s chunks streamed at 16x: 0.375 s per chunk."""
    time.sleep(0.375)
    return {"t0": t0, "n": len(value)}


@app.task(name="contract.counted_sleep")
def counted_sleep(value: bytes, t0: float, meta: Any) -> list[Any]:
    """Count the run in ``ocycle:test:runs:<stream>`` (a hash by seq), then sleep ``float(value)`` seconds."""
    _redis().hincrby(f"ocycle:test:runs:{meta.stream}", str(meta.seq), 1)
    time.sleep(float(value))
    return [meta.seq]


@app.task(name="contract.work", bind=True)
def work(self: Any, value: bytes, t0: float, meta: Any) -> list[Any]:
    """50 ms of work (a paced stream's task), counting its runs in ``ocycle:test:runs:<stream>`` when Redis is
    there; returns ``[len(value), worker]``."""
    with contextlib.suppress(Exception):  # best effort: Redis may be down (test_faults)
        _redis().hincrby(f"ocycle:test:runs:{meta.stream}", str(meta.seq), 1)
    time.sleep(0.05)
    return [len(value), self.request.hostname]


@app.task(name="contract.counted_echo")
def counted_echo(value: bytes, t0: float, meta: Any) -> list[Any]:
    """Count the run in ``ocycle:test:runs:<stream>``, then return ``[value]`` (for the producer-restart test)."""
    _redis().hincrby(f"ocycle:test:runs:{meta.stream}", str(meta.seq), 1)
    return [value]


# ---- a batched task (tests/integration/test_batched_tasks.py) ----------------------------------------------


@app.task(name="contract.batch_reverse")
@batched
def batch_reverse(values: list[bytes], t0s: list[float], metas: list[Any]) -> list[Any]:
    """Each value reversed (a value starting with ``b"b"`` fails alone); each call's size is noted in
    ``ocycle:test:calls:<stream>`` of its first chunk's stream."""
    stream = metas[0].stream if metas[0] is not None else "unknown"
    _redis().rpush(f"ocycle:test:calls:{stream}", len(values))
    return [ValueError(f"chunk {v!r} starts with b") if v.startswith(b"b") else v[::-1] for v in values]
