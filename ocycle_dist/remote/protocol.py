"""What producer and workers share: every Redis key name, the task message and the reply record.

Keys (all under :data:`PREFIX`):

- ``ocycle:reply:<producer token>``: a list; workers RPUSH each task's reply, the producer's listener pops it.
  The token is the producer process's own (a durable spool keeps one in its directory, so a producer restarted
  on it takes over its replies): two producers, even with the same stream ids, each get exactly their own.
- ``ocycle:chunk:<task id>``: a claimed (large) chunk, SET by the producer, read by the worker's task.
- ``ocycle:lease:<worker hostname>``: a worker's lease (msgpack ``{"worker", "tasks": [ids held]}``, a short
  time to live), and ``ocycle:workers``, the set of hostnames that keep one (:mod:`.lease`).
- ``ocycle:dead``: the dead-letter list, where workers keep what they refused from a queue (:mod:`.intake`): JSON
  records, the latest :data:`DEAD_MAX`, each with at most :data:`DEAD_BYTES` of the message, for :data:`DEAD_TTL`.
- the Celery queues themselves (``settings.queue``, ``celery`` by default) and kombu's ``unacked`` hash and
  ``unacked_index`` sorted set (delivered, not yet acknowledged, by delivery tag) belong to kombu's Redis
  transport; the producer reads the index to find deliveries a dead worker held.

A task message is what ``app.send_task`` would put on kombu's Redis transport: Celery protocol 2 in kombu's
JSON envelope, the body msgpack (:mod:`.wire`): ``[[chunk, t0], {}, embed]``. The chunk's metadata rides in
the header :data:`META_HEADER`, the reply list in ``reply_to``.

A batch message (:func:`batch_message`) is a task message of :data:`BATCH_TASK` whose one argument is the
list of its chunks, each ``[task id, task name, chunk, t0, metadata, expires at (epoch seconds or None)]``;
its header :data:`BATCH_HEADER` names them (``[[task id, stream], ...]``) for the workers' leases; each
chunk's outcome goes to the message's ``reply_to``. Its task id (its delivery tag) is only for a worker that
does not know the batch task: its NotRegistered reply for the batch tells the producer to send those chunks
again one message each.

A reply record is a msgpack map
``{"id": task id, "ok": True, "result": ...}`` or ``{"id": ..., "ok": False, "error": [type name, message]}``,
plus ``"expired": True`` for a task its worker discarded unstarted because its ``expires`` header had passed.
It travels sealed (:func:`seal`): ``{"id", "mac", "body"}``, ``body`` the record's msgpack and ``mac`` an
HMAC-SHA256 of it keyed by the deployment's ``reply_secret`` and the producer's token (the last part of the
reply list's name, :func:`token_of`). A reply forged by someone who can write to Redis but does not know
the secret fails the check and is ignored (counted); without a secret, the token alone keys it (it travels
in the message: proof against writers who cannot read the queue, not against readers).

With a ``reply_secret``, messages are sealed too, chunk by chunk (:func:`message_seal`): an HMAC-SHA256, keyed
by :func:`message_key`, of the task id, the task name, the reply list, the chunk's :func:`.wire.digest` (of the
value a claim check stands for, carried in the claim: :attr:`.wire.Claim.digest`), its t0 and its metadata; in the
header :data:`SEAL_HEADER` of a plain message, :data:`SEALS_HEADER` (one per chunk, in order) of a batch message.
A worker runs a chunk only if its seal checks out (:mod:`.intake`), and a successful reply then carries the digest
of the chunk it ran (``"digest"``), which the producer compares with the chunk it sent: a queue reader who
copies a message and swaps its chunk gets nothing run, and no result it could cause is believed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import msgpack

from ..chunk import Chunk
from ..errors import EncodeError
from . import wire
from .pending import Entry
from .settings import Settings

PREFIX = "ocycle:"
REPLY_PREFIX = PREFIX + "reply:"
CHUNK_PREFIX = PREFIX + "chunk:"
LEASE_PREFIX = PREFIX + "lease:"
WORKERS_KEY = PREFIX + "workers"
UNACKED_KEY = "unacked"  # kombu's Redis transport defaults (transport options unacked_key, unacked_index_key)
UNACKED_INDEX_KEY = "unacked_index"
BINDING_PREFIX = "_kombu.binding."  # kombu's: a set per exchange of "routing key\x06\x16pattern\x06\x16queue"
BINDING_SEP = "\x06\x16"
META_HEADER = "ocycle"  # the task message header carrying the chunk's metadata (Chunk._asdict())
BATCH_TASK = "ocycle.batch"  # the task of a batch message (registered by make_app)
BATCH_HEADER = "ocycle_batch"  # a batch message's header: [[task id, stream], ...] of its chunks
SENT_HEADER = "ocycle_sent"  # every message's header: when it was sent (epoch seconds), for the queue's backlog age
SEAL_HEADER = "ocycle_seal"  # a plain message's header with a reply secret: its chunk's seal (hex)
SEALS_HEADER = "ocycle_seals"  # a batch message's: its chunks' seals, in order
DEAD_KEY = PREFIX + "dead"  # the workers' dead-letter list (refused messages, for inspection)
DEAD_MAX = 1000  # entries kept
DEAD_BYTES = 4096  # of each refused message
DEAD_TTL = 7 * 24 * 3600  # seconds the list lives after its last entry

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = wire.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def reply_key(token: str) -> str:
    """The Redis list where the results come back to the producer with ``token``."""
    return f"{REPLY_PREFIX}{token}"


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


def is_claimed(entry: Entry, settings: Settings, *, batch: bool = False) -> bool:
    """Whether ``entry``'s chunk travels by claim check (stored under :func:`claim_key`) rather than inline, in
    a task message of its own or (``batch``) in a batch message."""
    threshold = min(settings.claim_threshold, settings.batch_claim_threshold) if batch else settings.claim_threshold
    return entry.size > threshold


def encode_chunk(value: Any, settings: Settings) -> bytes:
    """A chunk's value on the wire; raises EncodeError when it cannot be sent or is over the limit."""
    chunk = wire.dumps(value)
    check_size(len(chunk), settings)
    return chunk


def check_size(nbytes: int, settings: Settings) -> None:
    """EncodeError when an encoded chunk of ``nbytes`` is over ``settings.max_chunk_bytes``."""
    if nbytes > settings.max_chunk_bytes:
        raise EncodeError(f"chunk of {nbytes} bytes exceeds max_chunk_bytes={settings.max_chunk_bytes}")


def _claim_or_inline(entry: Entry, settings: Settings, *, batch: bool = False) -> tuple[bytes, Any]:
    """The chunk's msgpack as it goes in the message (inline, or a claim), and the claimed value to SET under
    :func:`claim_key` (None when inline): a chunk not encoded yet (:meth:`.spool.Entry.encode`) goes as its
    raw bytes, not copied (:func:`.wire.raw_form`); an encoded one as its encoding. With a reply secret the
    claim carries the value's digest (:func:`chunk_digest`)."""
    if not is_claimed(entry, settings, batch=batch):
        return entry.chunk, None
    entry.claimed = True
    sealed = chunk_digest(entry) if settings.reply_secret else None
    if entry.value is not None and (raw := wire.raw_form(entry.value)) is not None:
        form, data = raw
        return wire.dumps(wire.Claim(claim_key(entry.id), form, sealed)), data
    return wire.dumps(wire.Claim(claim_key(entry.id), None, sealed)), entry.chunk


def claim_value(entry: Entry) -> Any:
    """What is stored under a claimed ``entry``'s :func:`claim_key` (its raw bytes, or its encoding), to store it
    again (a Redis that evicted it)."""
    if entry.value is not None and (raw := wire.raw_form(entry.value)) is not None:
        return raw[1]
    return entry.chunk


def chunk_digest(entry: Entry) -> bytes:
    """The :func:`.wire.digest` of ``entry``'s chunk (of its value, or of its encoding: the same), once."""
    if entry.digest is None:
        value = entry.value
        entry.digest = wire.digest(value) if value is not None else hashlib.sha256(entry.chunk).digest()
    return entry.digest


@functools.lru_cache(maxsize=8)
def message_key(secret: str) -> bytes:
    """The key of the messages' seals in a deployment with ``secret`` (not the replies' key: :func:`mac_key`)."""
    return hashlib.sha256(b"ocycle message seal\0" + secret.encode()).digest()


def message_seal(
    key: bytes, task_id: Any, task: Any, reply_to: Any, digest: Any, t0: Any, meta: dict[str, Any] | None
) -> str:
    """The seal of one chunk of a message (see the module): 32 hex digits of an HMAC-SHA256."""
    fields = [meta.get(name) for name in Chunk._fields] if isinstance(meta, dict) else None
    text = wire.dumps([task_id, task, reply_to, digest, t0, fields])
    return hmac.new(key, text, hashlib.sha256).hexdigest()[:32]


def _seal_of(entry: Entry, settings: Settings, token: str) -> str:
    meta = entry.meta
    return message_seal(message_key(settings.reply_secret), entry.id, entry.task, reply_key(token),
                        chunk_digest(entry), meta.t0, meta._asdict())  # fmt: skip


def _envelope(
    task_id: str, task: str, body: bytes, headers: dict[str, Any], reply_to: str | None, tag: str, queue: str
) -> bytes:
    """Celery protocol 2 headers around ``headers`` (task-specific ones), in kombu's Redis JSON envelope."""
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "kwargsrepr": "{}",
        "origin": _ORIGIN,
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        SENT_HEADER: time.time(),
        **headers,
    }
    envelope = {
        "content-encoding": "binary",
        "content-type": wire.CONTENT_TYPE,
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},  # the emitter's queue
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    }
    # {"body": "<base64>", ...the rest}: base64 needs no JSON escaping, so it is spliced in as it is rather
    # than scanned and copied by json.dumps (the larger part of the message for an inline chunk)
    rest = json.dumps(envelope).encode("ascii")
    return b"".join((b'{"body": "', base64.b64encode(body), b'", ', rest[1:]))


def _expires_iso(expires_at: float | None) -> str | None:
    return None if expires_at is None else datetime.fromtimestamp(expires_at, timezone.utc).isoformat()


def task_message(entry: Entry, settings: Settings, token: str) -> tuple[bytes, Any]:
    """The task message of ``entry`` (replies to the producer with ``token``), and its chunk when it travels
    by claim check instead of inline."""
    meta = entry.meta
    args, claimed = _claim_or_inline(entry, settings)
    body = b"".join((b"\x93\x92", args, wire.dumps(meta.t0), b"\x80", _EMBED))  # [[chunk, t0], {}, embed]
    headers = {
        "expires": _expires_iso(entry.expires_at),
        "retries": entry.sends,
        "timelimit": [settings.task_time_limit or None, None],  # Celery's order: [hard, soft]
        "argsrepr": f"(<chunk {meta.stream}#{meta.seq} len={meta.length}>, {meta.t0!r})",
        META_HEADER: meta._asdict(),
    }
    if settings.reply_secret:
        headers[SEAL_HEADER] = _seal_of(entry, settings, token)
    tag = entry.tag or str(uuid.uuid4())
    message = _envelope(entry.id, entry.task, body, headers, reply_key(token), tag, settings.queue)
    return message, claimed


_PACKER = msgpack.Packer(use_bin_type=True)


def batch_message(
    entries: list[Entry], settings: Settings, batch_id: str, tag: str, token: str
) -> tuple[bytes, list[tuple[Entry, Any]]]:
    """One message of task :data:`BATCH_TASK` carrying ``entries`` (same task, same queue), and those of them
    whose chunk travels by claim check with the value to SET under :func:`claim_key` first.

    Its hard time limit is ``task_time_limit`` times the number of chunks (the limit is per chunk; a batch
    killed by it fails its chunks not yet answered). Each chunk's ``expires`` is checked by the worker.
    """
    parts = [b"\x93\x91", _PACKER.pack_array_header(len(entries))]  # [[items], {}, embed]
    claimed = []
    for entry in entries:
        chunk, raw = _claim_or_inline(entry, settings, batch=True)
        if raw is not None:
            claimed.append((entry, raw))
        parts += [b"\x96", wire.dumps(entry.id), wire.dumps(entry.task), chunk, wire.dumps(entry.meta.t0),
                  wire.dumps(entry.meta._asdict()), wire.dumps(entry.expires_at)]  # fmt: skip
    parts += [b"\x80", _EMBED]
    first, last = entries[0].meta, entries[-1].meta
    limit = settings.task_time_limit * len(entries) if settings.task_time_limit else None
    headers = {
        "timelimit": [limit, None],
        "argsrepr": f"(<batch of {len(entries)} chunks: {first.stream}#{first.seq}..{last.stream}#{last.seq}>,)",
        BATCH_HEADER: [[entry.id, entry.meta.stream] for entry in entries],
    }
    if settings.reply_secret:
        headers[SEALS_HEADER] = [_seal_of(entry, settings, token) for entry in entries]
    return _envelope(batch_id, BATCH_TASK, b"".join(parts), headers, reply_key(token), tag, settings.queue), claimed


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
