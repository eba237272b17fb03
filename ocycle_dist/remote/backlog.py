"""What waits on the task queues: per queue, the messages waiting and how long the oldest has waited.

The signal a fleet scales its workers on (KEDA's Redis list scaler reads the same ``LLEN``; the age, served as
``ocycle_queue_oldest_age_seconds``, suits a Prometheus-driven autoscaler): read by ``ocycle-dist status``
and served by the workers' metrics endpoint (:mod:`.worker_metrics`).

A queue is a Redis list that producers ``LPUSH`` to and workers pop from the other end, so its oldest message
is its last element; a producer's message carries the time it was sent in its header
:data:`.protocol.SENT_HEADER`. A batch message (many chunks of a backlog) counts once.

Which queues: :func:`known_queues`: those named by the caller (the settings' default queue, the deployment's
queues), every queue a worker ever declared on this broker (kombu's bindings, kept in Redis: a queue whose
workers are all down still shows), and those running workers consume.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .protocol import BINDING_PREFIX, BINDING_SEP, SENT_HEADER

_BODY_FIRST = b'{"body": "'


@dataclass(frozen=True)
class Backlog:
    """One queue's backlog.

    Attributes:
        queue: the queue's name (its Redis list).
        messages: messages waiting (``LLEN``); each is one chunk, or a batch of chunks.
        oldest_age: seconds since the oldest waiting message was sent (0.0 for an empty queue; None when that
            message carries no send time: not a producer's message).
    """

    queue: str
    messages: int
    oldest_age: float | None


def sent_at(raw: bytes | None) -> float | None:
    """The send time (epoch seconds) in a task message's header, or None.

    The producers' envelopes begin with the body (base64, no quote in it): it is skipped unread."""
    if not raw:
        return None
    try:
        if raw.startswith(_BODY_FIRST):
            end = raw.find(b'"', len(_BODY_FIRST))
            envelope = json.loads(b'{"body": ""' + raw[end + 1 :])
        else:
            envelope = json.loads(raw)
        value = envelope["headers"][SENT_HEADER]
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_backlog(client: Any, queues: Iterable[str], now: float | None = None) -> list[Backlog]:
    """Each queue's backlog, in one round trip (``LLEN`` and ``LINDEX -1`` per queue)."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
        pipe.lindex(name, -1)
    replies = pipe.execute()
    now = time.time() if now is None else now
    out = []
    for i, name in enumerate(names):
        length, oldest = replies[2 * i], replies[2 * i + 1]
        sent = sent_at(oldest)
        age = 0.0 if not length else (max(0.0, now - sent) if sent is not None else None)
        out.append(Backlog(name, int(length), age))
    return out


def declared_queues(client: Any) -> set[str]:
    """Every queue a consumer declared on this broker: kombu records its bindings in Redis, and they stay."""
    queues = set()
    for key in client.scan_iter(match=BINDING_PREFIX + "*"):
        for member in client.smembers(key):
            text = member.decode() if isinstance(member, bytes) else str(member)
            queue = text.split(BINDING_SEP)[-1]
            if queue:
                queues.add(queue)
    return queues


def known_queues(client: Any, named: Iterable[str] = (), app: Any = None) -> list[str]:
    """The queues to report: ``named``, those declared on the broker, and those ``app``'s running workers
    consume (asked with ``inspect active_queues``, 1 s)."""
    queues = set(named) | declared_queues(client)
    if app is not None:
        for worker_queues in (app.control.inspect(timeout=1.0).active_queues() or {}).values():
            queues.update(q["name"] for q in worker_queues)
    return sorted(queues)


class BacklogCollector:
    """A ``prometheus_client`` collector: ``ocycle_queue_messages`` and ``ocycle_queue_oldest_age_seconds``
    per queue, read from Redis at scrape time (``client_factory()`` gives the client)."""

    def __init__(self, client_factory: Any, queues: Iterable[str]) -> None:
        self.client_factory = client_factory
        self.queues = list(queues)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        messages = GaugeMetricFamily(
            "ocycle_queue_messages", "messages waiting in the queue (a batch message counts once)", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "ocycle_queue_oldest_age_seconds",
            "seconds the oldest waiting message of the queue has waited (0 when empty)",
            labels=["queue"],
        )
        try:
            backlog = read_backlog(self.client_factory(), self.queues)
        except Exception:  # Redis away: no sample rather than a failed scrape
            backlog = []
        for item in backlog:
            messages.add_metric([item.queue], item.messages)
            if item.oldest_age is not None:
                age.add_metric([item.queue], item.oldest_age)
        yield messages
        yield age
