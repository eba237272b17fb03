"""Publishing: many task messages to Redis in one round trip.

The messages are built by :func:`.protocol.task_message` without Celery's per-message overhead, so a batch
of pending chunks goes out as one pipeline: one LPUSH of many messages, plus a SET for each claimed (large)
chunk. The reply list travels as the message's ``reply_to``, so a worker can answer even for a task it does
not know.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .protocol import claim_key, task_message
from .settings import Settings
from .spool import Entry

# Messages built between two yields of the GIL. A writer thread waiting for the GIL would otherwise wait
# for the interpreter's switch interval (5 ms) while a batch of hundreds is built: write() p99 > 1 ms.
YIELD_EVERY = 8


def publish(client: Any, entries: list[Entry], settings: Settings, token: str) -> None:
    """Push the entries' task messages to the queue in one round trip (their claimed chunks first); the
    replies go to the producer with ``token``."""
    pipe = client.pipeline(transaction=False)
    ttl = max(1, int(settings.result_ttl))
    messages = []
    for i, entry in enumerate(entries):
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            time.sleep(0)  # let the writer's thread run: a batch is built in Python, holding the GIL
        entry.delivery_tag = str(uuid.uuid4())  # a new one per send: each message has its own
        msg, claimed = task_message(entry, settings, token)
        if claimed is not None:
            pipe.set(claim_key(entry.id), claimed, ex=ttl)
        messages.append(msg)
    pipe.lpush(settings.queue, *messages)
    pipe.execute()
