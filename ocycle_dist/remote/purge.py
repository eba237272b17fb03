"""Empty queues and tell every chunk's producer at once: ``ocycle-dist purge -Q model``.

``celery purge`` deletes the messages unread: their producers hear nothing, and count those chunks only once
``resend_after`` has passed without a result (and they are sent again, up to ``max_attempts``). Here each
message is taken from the queue and each chunk in it (a batch message holds many) answered to its producer's
reply list with the error ``Purged``, sealed with the deployment's reply secret as a worker's reply is: the
producer counts the chunk failed (``stats().failed``, ``on_error`` with ``RemoteTaskError("Purged", ...)``) as
soon as its listener reads it. A chunk stored apart (a claim check) is deleted with its message. Messages that
are not chunk messages (Celery's own, a stranger's) are deleted and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .envelope import decode_items
from .intake import JunkError
from .protocol import reply_error
from .replies import ReplyWriter
from .runner import own_claim

PURGED = "Purged"  # the error type name a purged chunk's producer gets
TAKE = 100  # messages popped per round trip


@dataclass(frozen=True)
class Purged:
    """What purging one queue did.

    Attributes:
        queue: the queue.
        messages: messages taken from it.
        chunks: chunks whose producers were told (a reply each).
        other: messages that were not chunk messages, deleted unanswered.
    """

    queue: str
    messages: int
    chunks: int
    other: int


def purge_queue(app: Any, client: Any, queue: str, settings: Any) -> Purged:
    """Take every message of ``queue`` (oldest first, :data:`TAKE` per round trip) and answer each chunk
    in it with a ``Purged`` error; messages pushed meanwhile are taken too."""
    messages = chunks = other = 0
    why = f"purged from queue {queue!r} by an operator (ocycle-dist purge) before any worker ran it"
    while True:
        taken = client.rpop(queue, TAKE)
        if not taken:
            break
        replies = ReplyWriter(client, settings.result_ttl, settings.reply_secret)
        claims: list[str] = []
        for raw in taken:
            messages += 1
            try:
                items = decode_items(raw)
            except JunkError:  # not a task message: deleted like any other
                items = None
            if not items:
                other += 1
                continue
            for item in items:
                replies.add(item[6] if len(item) > 6 else None, reply_error(str(item[0]), PURGED, why))
                if own_claim(item[0], item[2]):
                    claims.append(item[2].key)
                chunks += 1
        replies.send(also=(lambda pipe, keys=claims: pipe.delete(*keys)) if claims else None)
    return Purged(queue, messages, chunks, other)
