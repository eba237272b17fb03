"""A batch message: the body of the batch task (:data:`.protocol.BATCH_TASK`).

A producer with several chunks of one task pending (a backlog after an outage, say) sends them as one message;
Celery's cost per message (a BRPOP, the request, the prefork pipe to the pool process and back, the ack, the
reply) is then paid once for them all. :func:`run_batch` runs its chunks (:func:`.runner.run_items`), each with
its own outcome, and sends their replies as it goes.
"""

from __future__ import annotations

import time
from typing import Any

from .events import for_run
from .intake import sealed_items
from .protocol import BATCH_TASK, SEALS_HEADER, is_reply_key
from .replies import ReplyWriter
from .runner import batch_spec, run_items
from .worker_metrics import count


def run_batch(task: Any, items: list[list[Any]], client: Any, settings: Any) -> None:
    """The body of the batch task: run its chunks, reply for each (in a pipeline every ~10 ms, and at the end)
    to the batch message's ``reply_to``. A reply that cannot be written is retried, then left to the producer's
    recovery: it never fails the batch (:mod:`.replies`)."""
    request = task.request
    replies = ReplyWriter(client, settings.result_ttl, settings.reply_secret)
    reply_to = request.reply_to if is_reply_key(request.reply_to) else None
    if settings.reply_secret and reply_to is not None:  # only the chunks whose seal checks out run
        seals = request.get(SEALS_HEADER) or []
        queue = (request.delivery_info or {}).get("routing_key")
        items = sealed_items(client, [[*item[:6], reply_to, seals[i] if i < len(seals) else None]
                                      for i, item in enumerate(items)], settings.reply_secret, queue)  # fmt: skip
    delivery_info = dict(request.delivery_info or {})
    events = for_run(task.app, request.hostname)
    flush_at = time.monotonic() + 0.01
    step = _run_size(task.app, items)
    for start in range(0, len(items), step):
        ran = run_items(task.app, client, items[start : start + step], replies, hostname=request.hostname,
                        delivery_info=delivery_info, reply_to=reply_to, events=events)  # fmt: skip
        count("chunks", ran, "batch")
        if time.monotonic() >= flush_at or start + step >= len(items):  # a long batch: the answers so far go now
            replies.send()
            if events is not None:
                events.flush()
            flush_at = time.monotonic() + 0.01


def _run_size(app: Any, items: list[list[Any]]) -> int:
    """How many of a batch message's chunks :func:`run_batch` runs before it sends their replies: 16, or a
    batched task's ``max_chunks`` (one call; a batch message holds chunks of one task)."""
    task = app.tasks.get(items[0][1]) if items and items[0][1] != BATCH_TASK else None
    spec = batch_spec(task) if task is not None else None
    return 16 if spec is None else spec.max_chunks
