"""Publishing: many task messages to Redis in one round trip.

The messages are built by :mod:`.protocol` without Celery's per-message overhead, so what is pending goes out
as one pipeline: one LPUSH of many messages, plus a SET for each claimed (large) chunk. The reply list travels
as the message's ``reply_to``, so a worker can answer even for a task it does not know.

Consecutive pending chunks of the same task go as one batch message (:func:`.protocol.batch_message`), up to
``batch_max_chunks`` chunks and ``batch_max_bytes`` bytes; a lone chunk goes as a plain task message, so an
idle stream's latency and what a worker without the batch task sees are unchanged.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .protocol import batch_message, claim_key, is_claimed, task_message
from .settings import Settings
from .spool import Entry

# Messages built between two yields of the GIL. A writer thread waiting for the GIL would otherwise wait
# for the interpreter's switch interval (5 ms) while a batch of hundreds is built: write() p99 > 1 ms.
YIELD_EVERY = 8


def groups(entries: list[Entry], settings: Settings) -> list[list[Entry]]:
    """``entries`` cut into messages: runs of the same task, at most ``batch_max_chunks`` chunks and
    ``batch_max_bytes`` bytes each (a claimed chunk counts as its key); in order."""
    cap, budget = settings.batch_max_chunks, settings.batch_max_bytes
    if cap <= 1:
        return [[entry] for entry in entries]
    out: list[list[Entry]] = []
    current: list[Entry] = []
    nbytes = 0
    for entry in entries:
        size = 64 if is_claimed(entry, settings, batch=True) else entry.size
        if current and (entry.task != current[0].task or len(current) >= cap or nbytes + size > budget):
            out.append(current)
            current, nbytes = [], 0
        current.append(entry)
        nbytes += size
    if current:
        out.append(current)
    return out


def publish(
    client: Any, entries: list[Entry], settings: Settings, token: str, *, batch: bool = True
) -> list[list[Entry]]:
    """Push the entries' messages to the queue in one round trip (their claimed chunks first); the replies go
    to the producer with ``token``. Returns the groups sent as one message each (see :func:`groups`)."""
    pipe = client.pipeline(transaction=False)
    ttl = max(1, int(settings.result_ttl))
    messages = []
    sent = groups(entries, settings) if batch else [[entry] for entry in entries]
    for i, group in enumerate(sent):
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            time.sleep(0)  # let the writer's thread run: a batch is built in Python, holding the GIL
        tag = str(uuid.uuid4())  # a new one per send: each message has its own
        for entry in group:
            entry.delivery_tag = tag
        if len(group) == 1:
            msg, claimed = task_message(group[0], settings, token)
            if claimed is not None:
                pipe.set(claim_key(group[0].id), claimed, ex=ttl)
        else:
            msg, big = batch_message(group, settings, tag, tag, token)  # its task id is its tag: replies name it
            for entry, value in big:
                pipe.set(claim_key(entry.id), value, ex=ttl)
        messages.append(msg)
    pipe.lpush(settings.queue, *messages)
    pipe.execute()
    return sent
