"""Publishing: many task messages to Redis in one round trip.

The messages are built by :func:`.protocol.task_message` without Celery's per-message overhead, so a batch
of pending chunks goes out as one pipeline: one LPUSH of many messages, plus a SET for each claimed (large)
chunk. The reply list travels as the message's ``reply_to``, so a worker can answer even for a task it does
not know.
"""

from __future__ import annotations

import uuid
from typing import Any

from .protocol import claim_key, task_message
from .settings import Settings
from .spool import Entry


def publish(client: Any, entries: list[Entry], settings: Settings, token: str) -> None:
    """Push the entries' task messages to the queue in one round trip (their claimed chunks first); the
    replies go to the producer with ``token``."""
    pipe = client.pipeline(transaction=False)
    ttl = max(1, int(settings.result_ttl))
    messages = []
    for entry in entries:
        entry.delivery_tag = str(uuid.uuid4())  # a new one per send: each message has its own
        msg, claimed = task_message(entry, settings, token)
        if claimed is not None:
            pipe.set(claim_key(entry.id), claimed, ex=ttl)
        messages.append(msg)
    pipe.lpush(settings.queue, *messages)
    pipe.execute()
