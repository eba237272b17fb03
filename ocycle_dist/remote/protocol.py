"""What producer and workers share: every Redis key name, the task message and the reply record.

Keys (all under :data:`PREFIX`):

- ``ocycle:reply:<stream>:<producer token>``: a list; workers RPUSH each task's reply, the producer's listener
  pops it. The token is the producer's own (kept in a durable spool's directory, so a restarted producer
  takes over its replies): two producers with the same stream id each get exactly their own results.
- ``ocycle:chunk:<task id>``: a claimed (large) chunk, SET by the producer, read by the worker's task.
- ``ocycle:lease:<worker hostname>``: a worker's lease (msgpack ``{"worker", "tasks": [ids held]}``, a short
  time to live), and ``ocycle:workers``, the set of hostnames that keep one (:mod:`.lease`).
- the Celery queues themselves (``settings.queue``, ``celery`` by default) and kombu's ``unacked`` hash and
  ``unacked_index`` sorted set (delivered, not yet acknowledged, by delivery tag) belong to kombu's Redis
  transport; the producer reads the index to find deliveries a dead worker held.

A task message is what ``app.send_task`` would put on kombu's Redis transport: Celery protocol 2 in kombu's
JSON envelope, the body msgpack (:mod:`.wire`): ``[[chunk, t0], {}, embed]``. The chunk's metadata rides in
the header :data:`META_HEADER`, the reply list in ``reply_to``. A reply record is a msgpack map
``{"id": task id, "ok": True, "result": ...}`` or ``{"id": ..., "ok": False, "error": [type name, message]}``,
plus ``"expired": True`` for a task its worker discarded unstarted because its ``expires`` header had passed.
It travels sealed (:func:`seal`): ``{"id", "mac", "body"}``, ``body`` the record's msgpack and ``mac`` an
HMAC-SHA256 of it keyed by the deployment's ``reply_secret`` and the producer's token (the last part of the
reply list's name, :func:`token_of`). A reply forged by someone who can write to Redis but does not know
the secret fails the check and is ignored (counted); without a secret, the token alone keys it (it travels
in the message: proof against writers who cannot read the queue, not against readers).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import uuid
from datetime import datetime, timezone
from typing import Any

from ..errors import EncodeError
from . import wire
from .settings import Settings
from .spool import Entry

PREFIX = "ocycle:"
REPLY_PREFIX = PREFIX + "reply:"
CHUNK_PREFIX = PREFIX + "chunk:"
LEASE_PREFIX = PREFIX + "lease:"
WORKERS_KEY = PREFIX + "workers"
UNACKED_KEY = "unacked"  # kombu's Redis transport defaults (transport options unacked_key, unacked_index_key)
UNACKED_INDEX_KEY = "unacked_index"
META_HEADER = "ocycle"  # the task message header carrying the chunk's metadata (Chunk._asdict())

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = wire.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def reply_key(stream: str, token: str) -> str:
    """The Redis list where the results of ``stream``'s chunks come back to the producer with ``token``."""
    return f"{REPLY_PREFIX}{stream}:{token}"


def token_of(reply_to: str) -> str:
    """The producer token in a reply list's name (what keys the MAC of the replies sent there)."""
    return reply_to.rsplit(":", 1)[-1]


def is_reply_key(key: Any) -> bool:
    """Whether ``key`` (a message's ``reply_to``) names one of the project's reply lists."""
    return isinstance(key, str) and key.startswith(REPLY_PREFIX)


def claim_key(task_id: str) -> str:
    """The Redis key of the claimed chunk of task ``task_id``."""
    return CHUNK_PREFIX + task_id


def lease_key(hostname: str) -> str:
    """The Redis key of worker ``hostname``'s lease."""
    return LEASE_PREFIX + hostname


def is_claimed(entry: Entry, settings: Settings) -> bool:
    """Whether ``entry``'s chunk travels by claim check (stored under :func:`claim_key`) rather than inline."""
    return len(entry.chunk) > settings.claim_threshold


def encode_chunk(value: Any, settings: Settings) -> bytes:
    """A chunk's value on the wire; raises EncodeError when it cannot be sent or is over the limit."""
    chunk = wire.dumps(value)
    if len(chunk) > settings.max_chunk_bytes:
        raise EncodeError(f"chunk of {len(chunk)} bytes exceeds max_chunk_bytes={settings.max_chunk_bytes}")
    return chunk


def task_message(entry: Entry, settings: Settings, token: str) -> tuple[bytes, bytes | None]:
    """The task message of ``entry`` (replies to the producer with ``token``), and its chunk when it travels
    by claim check instead of inline."""
    meta, t0 = entry.meta, wire.dumps(entry.meta.t0)
    if is_claimed(entry, settings):
        claimed: bytes | None = entry.chunk
        args = wire.dumps(wire.Claim(claim_key(entry.id)))
    else:
        claimed, args = None, entry.chunk
    body = b"".join((b"\x93\x92", args, t0, b"\x80", _EMBED))  # [[chunk, t0], {}, embed] in msgpack
    headers = {
        "lang": "py",
        "task": entry.task,
        "id": entry.id,
        "shadow": None,
        "eta": None,
        "expires": None
        if entry.expires_at is None
        else datetime.fromtimestamp(entry.expires_at, timezone.utc).isoformat(),
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
        META_HEADER: meta._asdict(),
    }
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "binary",
        "content-type": wire.CONTENT_TYPE,
        "headers": headers,
        "properties": {
            "correlation_id": entry.id,
            "reply_to": reply_key(meta.stream, token),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": settings.queue},  # the emitter's queue
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": entry.delivery_tag or str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode("ascii"), claimed


def reply_ok(task_id: str, result: Any) -> dict[str, Any]:
    """The reply record of a task that returned ``result``."""
    return {"id": task_id, "ok": True, "result": result}


def reply_error(task_id: str, type_name: str, message: str) -> dict[str, Any]:
    """The reply record of a task that failed with ``type_name: message``."""
    return {"id": task_id, "ok": False, "error": [type_name, message]}


def mac_key(secret: str, token: str) -> bytes:
    """The key of the replies' MAC for a producer's ``token`` in a deployment with ``secret``."""
    return hashlib.sha256(secret.encode() + b"\0" + token.encode()).digest()


def seal(record: dict[str, Any], key: bytes) -> bytes:
    """A reply record as it travels: its msgpack and an HMAC of it (:func:`mac_key`)."""
    body = wire.dumps(record)
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return wire.dumps({"id": record["id"], "mac": mac, "body": body})


def unseal(envelope: dict[str, Any], key: bytes) -> dict[str, Any] | None:
    """The record of a sealed reply, or None when its MAC does not check out (forged, or another secret)."""
    body, mac = envelope.get("body"), envelope.get("mac")
    if not isinstance(body, bytes) or not isinstance(mac, bytes):
        return None
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        return None
    record = wire.loads(body)
    if not isinstance(record, dict) or record.get("id") != envelope.get("id"):
        return None
    return record


def reply_expired(task_id: str) -> dict[str, Any]:
    """The reply record of a task discarded by its worker because its ``expires`` deadline had passed."""
    return {**reply_error(task_id, "TaskRevokedError", "expired"), "expired": True}
