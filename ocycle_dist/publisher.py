"""Celery task messages written straight to Redis, many per round trip.

The message is what ``app.send_task`` would put on the Redis transport (Celery protocol 2 inside kombu's
JSON envelope), built here without Celery's per-message overhead so that a batch of pending chunks goes
out as one pipeline: one LPUSH of many messages, plus a SET for each claimed (large) chunk.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import wire
from .chunk import Chunk
from .errors import EncodeError
from .settings import Settings

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass
class Job:
    """One chunk to run as a task."""

    task: str
    value: Any
    t0: float
    meta: Chunk
    reply: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    claim: str | None = None  # the Redis key holding the chunk, when it is claimed


def claim_key(meta: Chunk) -> str:
    """The Redis key of a claimed chunk."""
    return f"ocycle:chunk:{meta.stream}:{meta.seq}"


def encode(job: Job, settings: Settings) -> tuple[bytes, bytes | None]:
    """The message for ``job``, and the claimed chunk's bytes when it is too large to travel inline."""
    chunk = wire.dumps(job.value)
    if len(chunk) > settings.max_chunk_bytes:
        raise EncodeError(f"chunk of {len(chunk)} bytes exceeds max_chunk_bytes={settings.max_chunk_bytes}")
    claimed = None
    if len(chunk) > settings.claim_threshold:
        job.claim, claimed = claim_key(job.meta), chunk
        body = wire.dumps([[wire.Claim(job.claim), job.t0], {}, _EMBED])
    else:
        body = b"".join((b"\x93\x92", chunk, wire.dumps(job.t0)[0:], b"\x80", wire.dumps(_EMBED)))
    headers = {
        "lang": "py",
        "task": job.task,
        "id": job.id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": job.id,
        "parent_id": None,
        "argsrepr": f"(<chunk {job.meta.stream}#{job.meta.seq} len={job.meta.length}>, {job.t0!r})",
        "kwargsrepr": "{}",
        "origin": _ORIGIN,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        "ocycle": {"reply": job.reply, **job.meta._asdict()},
    }
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "binary",
        "content-type": wire.CONTENT_TYPE,
        "headers": headers,
        "properties": {
            "correlation_id": job.id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": settings.queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode("ascii"), claimed


def publish(client: Any, jobs: list[tuple[Job, bytes, bytes | None]], settings: Settings) -> None:
    """Push encoded jobs to the task queue in one round trip (claimed chunks first)."""
    pipe = client.pipeline(transaction=False)
    ttl = max(1, int(settings.result_ttl))
    for job, _, claimed in jobs:
        if claimed is not None:
            pipe.set(job.claim, claimed, ex=ttl)
    pipe.lpush(settings.queue, *(message for _, message, _ in jobs))
    pipe.execute()
