"""A stock Celery app (not ``make_app``): our serializer registered and ReplyBackend as its result backend, a
task of its own and a batched one, no batch task and no ChunkTask. ``celery -A tests.support.stock_app worker`` runs the
project's plain task messages; a batch message is a task it does not know."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from ocycle_dist.batched import batched
from ocycle_dist.remote import wire

wire.register()
app = Celery("stock", broker=os.environ.get("OCYCLE_BROKER_URL", "redis://localhost:6379/0"))
app.conf.update(
    task_serializer=wire.SERIALIZER,
    result_serializer=wire.SERIALIZER,
    accept_content=[wire.SERIALIZER],
    result_accept_content=[wire.SERIALIZER],
    result_backend="ocycle_dist.remote.backend:ReplyBackend",
    broker_connection_retry_on_startup=True,
)


@app.task(name="contract.reverse")
def reverse(value: bytes, t0: float) -> bytes:
    return value[::-1]


@app.task(name="contract.batch_reverse")
@batched
def batch_reverse(values: list[bytes], t0s: list[float]) -> list[Any]:
    """``tests.support.tasks.batch_reverse`` on a stock worker: called one chunk at a time."""
    assert len(values) == 1
    return [ValueError(f"chunk {v!r} starts with b") if v.startswith(b"b") else v[::-1] for v in values]
