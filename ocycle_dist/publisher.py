"""Celery task messages written straight to Redis, many per round trip.

The message is what ``app.send_task`` would put on the Redis transport (Celery protocol 2 inside kombu's
JSON envelope), built here without Celery's per-message overhead so that a batch of pending chunks goes
out as one pipeline: one LPUSH of many messages, plus a SET for each claimed (large) chunk. The reply list
travels as the message's ``reply_to``, so a worker can answer even for a task it does not know.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from . import wire
from .errors import EncodeError
from .settings import Settings
from .spool import Entry

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = wire.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})
REPLY_PREFIX = "ocycle:reply:"


def reply_key(stream: str) -> str:
    """The Redis list where the results of ``stream``'s chunks come back."""
    return REPLY_PREFIX + stream


def claim_key(entry: Entry) -> str:
    """The Redis key of a claimed chunk."""
    return f"ocycle:chunk:{entry.id}"


def is_claimed(entry: Entry, settings: Settings) -> bool:
    """Whether ``entry``'s chunk travels by claim check (stored under :func:`claim_key`) rather than inline."""
    return len(entry.chunk) > settings.claim_threshold


def encode_chunk(value: Any, settings: Settings) -> bytes:
    """A chunk's value on the wire; raises EncodeError when it cannot be sent or is over the limit."""
    chunk = wire.dumps(value)
    if len(chunk) > settings.max_chunk_bytes:
        raise EncodeError(f"chunk of {len(chunk)} bytes exceeds max_chunk_bytes={settings.max_chunk_bytes}")
    return chunk


def message(entry: Entry, settings: Settings) -> tuple[bytes, bytes | None]:
    """The task message of ``entry``, and its chunk when it travels by claim check instead of inline."""
    meta, t0 = entry.meta, wire.dumps(entry.meta.t0)
    if is_claimed(entry, settings):
        claimed: bytes | None = entry.chunk
        args = wire.dumps(wire.Claim(claim_key(entry)))
    else:
        claimed, args = None, entry.chunk
    body = b"".join((b"\x93\x92", args, t0, b"\x80", _EMBED))  # [[chunk, t0], {}, embed] in msgpack
    headers = {
        "lang": "py",
        "task": entry.task,
        "id": entry.id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": entry.attempts,
        "timelimit": [settings.task_time_limit or None, None],  # Celery's order: [hard, soft]
        "root_id": entry.id,
        "parent_id": None,
        "argsrepr": f"(<chunk {meta.stream}#{meta.seq} len={meta.length}>, {meta.t0!r})",
        "kwargsrepr": "{}",
        "origin": _ORIGIN,
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        "ocycle": meta._asdict(),
    }
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "binary",
        "content-type": wire.CONTENT_TYPE,
        "headers": headers,
        "properties": {
            "correlation_id": entry.id,
            "reply_to": reply_key(meta.stream),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": settings.queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode("ascii"), claimed


def publish(client: Any, entries: list[Entry], settings: Settings) -> None:
    """Push the entries' task messages to the queue in one round trip (their claimed chunks first)."""
    pipe = client.pipeline(transaction=False)
    ttl = max(1, int(settings.result_ttl))
    messages = []
    for entry in entries:
        msg, claimed = message(entry, settings)
        if claimed is not None:
            pipe.set(claim_key(entry), claimed, ex=ttl)
        messages.append(msg)
    pipe.lpush(settings.queue, *messages)
    pipe.execute()
