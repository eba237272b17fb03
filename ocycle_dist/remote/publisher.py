"""Publishing: the task messages of many chunks, of every emitter of a process, to Redis in one round trip.

The messages are built by :mod:`.protocol` without Celery's per-message overhead, so what is pending goes out
as one pipeline: per queue, one LPUSH of the new messages (behind what waits) and one RPUSH of the messages
sent again by a recovery (ahead of what waits: the end the workers pop from), plus a SET for each claimed
(large) chunk. The reply list travels as the message's ``reply_to``, so a worker can answer even for a task
it does not know.

Consecutive pending chunks of the same emitter and task go as one batch message
(:func:`.protocol.batch_message`), up to ``batch_max_chunks`` chunks and ``batch_max_bytes`` bytes; a lone
chunk goes as a plain task message, so an idle stream's latency and what a worker without the batch task sees
are unchanged.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from typing import Any

from .pending import Entry
from .protocol import batch_message, claim_key, is_claimed, task_message
from .settings import Settings

# Messages built between two yields of the GIL. A writer thread waiting for the GIL would otherwise wait
# for the interpreter's switch interval (5 ms) while a batch of hundreds is built: write() p99 > 1 ms.
YIELD_EVERY = 8


def groups(entries: list[Entry], settings: Settings, *, batch: bool = True) -> list[list[Entry]]:
    """``entries`` (of one emitter) cut into messages: runs of the same task, at most ``batch_max_chunks``
    chunks and ``batch_max_bytes`` bytes each (a claimed chunk counts as its key); in order."""
    cap, budget = settings.batch_max_chunks, settings.batch_max_bytes
    if cap <= 1 or not batch:
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


def publish(client: Any, entries: list[Entry]) -> list[list[Entry]]:
    """Push the entries' messages to their queues in one round trip (their claimed chunks first), each with a
    new delivery tag (``entry.tag``). An entry sent before (it has a tag) goes ahead of what waits in its
    queue. Returns the groups sent as one message each."""
    old_tags = [entry.tag for entry in entries]
    try:
        return _publish(client, entries)
    except BaseException:  # nothing is known to be sent: the entries keep the tags of their last message
        for entry, tag in zip(entries, old_tags, strict=True):
            entry.tag = tag
        raise


def _publish(client: Any, entries: list[Entry]) -> list[list[Entry]]:
    pipe = client.pipeline(transaction=False)
    by_owner: dict[Any, list[Entry]] = defaultdict(list)
    for entry in entries:
        by_owner[entry.owner].append(entry)
    new: dict[str, list[bytes]] = defaultdict(list)
    again: dict[str, list[bytes]] = defaultdict(list)
    sent: list[list[Entry]] = []
    built = 0
    for owner, mine in by_owner.items():
        settings: Settings = owner.settings
        ttl = max(1, int(settings.result_ttl))
        for group in groups(mine, settings, batch=owner.batching):
            built += 1
            if built % YIELD_EVERY == 0:
                time.sleep(0)  # let the writer's thread run: a batch is built in Python, holding the GIL
            ahead = any(entry.tag for entry in group)  # sent before: interrupted by a fault, it goes first
            tag = str(uuid.uuid4())  # a new one per send: each message has its own
            for entry in group:
                entry.tag = tag
            if len(group) == 1:
                msg, claimed = task_message(group[0], settings, owner.token)
                if claimed is not None:
                    pipe.set(claim_key(group[0].id), claimed, ex=ttl)
            else:
                msg, big = batch_message(group, settings, tag, tag, owner.token)  # its task id is its tag
                for entry, value in big:
                    pipe.set(claim_key(entry.id), value, ex=ttl)
            (again if ahead else new)[settings.queue].append(msg)
            sent.append(group)
    for queue, messages in again.items():
        pipe.rpush(queue, *reversed(messages))  # the workers pop from the right: the first of these first
    for queue, messages in new.items():
        pipe.lpush(queue, *messages)
    pipe.execute()
    return sent
