"""What a worker takes from a queue: a message it can hand on, or junk it refuses and keeps for inspection.

Anyone who can write to a queue can put anything there, and kombu's Redis transport decodes what a worker pops
before Celery sees it: one entry that is not a JSON object stopped the worker ("Unrecoverable error"). Every way a
worker takes a message goes through :func:`check` first: the BRPOP of Celery's consumer
(:class:`.transport.RedisChannel`), a pool process draining a queue (:func:`.drain.drain`), and kombu restoring an
unacknowledged delivery (:class:`.transport.RedisQoS`). A message that is not one (:data:`KINDS`: not JSON, not an
object, no headers, properties kombu cannot use, a body that is not base64, another content type) is refused
(:func:`refuse`): logged once per kind and process, counted (the worker metric
``ocycle_worker_junk_messages_total{kind}``), kept in the dead-letter list :data:`.protocol.DEAD_KEY` (the latest
:data:`.protocol.DEAD_MAX`, for :data:`.protocol.DEAD_TTL`; ``ocycle-dist status`` sums them up), and the worker
serves on. A task name the worker does not know is refused by the consumer the same way, and still answered
``NotRegistered`` (:meth:`.transport.Consumer.on_unknown_task`); a chunk whose seal fails is refused unrun
(:mod:`.seals`).
"""

from __future__ import annotations

import binascii
import hmac
import json
import logging
import os
import socket
import time
from typing import Any

from . import wire
from .protocol import DEAD_BYTES, DEAD_KEY, DEAD_MAX, DEAD_TTL, is_reply_key, message_key, message_seal
from .replies import bind

log = logging.getLogger("ocycle_dist.worker")

NOT_JSON, NOT_OBJECT, NO_HEADERS, BAD_PROPERTIES = "not-json", "not-an-object", "no-headers", "bad-properties"
BAD_BASE64, CONTENT_TYPE, UNKNOWN_TASK, FORGED = "bad-base64", "content-type", "unknown-task", "forged"
KINDS = (NOT_JSON, NOT_OBJECT, NO_HEADERS, BAD_PROPERTIES, BAD_BASE64, CONTENT_TYPE, UNKNOWN_TASK, FORGED)
_logged: set[str] = set()  # the kinds this process has logged


class JunkError(Exception):
    """A message refused: ``kind`` (one of :data:`KINDS`) and why."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(f"{kind}: {why}")
        self.kind, self.why = kind, why


def _loads(text: str) -> Any:
    """JSON as kombu decodes it (its own hooks for dates and bytes)."""
    try:
        from kombu.utils.json import loads
    except ImportError:  # pragma: no cover - workers have kombu
        return json.loads(text)
    return loads(text)


def check(raw: bytes | str, *, task_queue: bool = True) -> dict[str, Any]:
    """The envelope of a message popped from a queue, checked so that kombu and Celery can take it.

    Args:
        raw: the entry as popped.
        task_queue: a task queue (every message a task message of this project's content type); False for
            kombu's own queues (the replies of remote-control commands), where only what kombu needs is checked.

    Raises:
        JunkError: what is wrong with it.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else str(raw)
        envelope = _loads(text)
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise JunkError(NOT_JSON, f"{type(exc).__name__}: {str(exc)[:120]}") from None
    check_envelope(envelope, task_queue=task_queue)
    body = envelope.get("body")
    if body and envelope["properties"].get("body_encoding") == "base64":
        body_bytes(body)
    return envelope


def check_envelope(envelope: Any, *, task_queue: bool = True) -> None:
    """:func:`check` of an envelope already parsed, but for its body's base64 (:func:`body_bytes`)."""
    if not isinstance(envelope, dict):
        raise JunkError(NOT_OBJECT, f"a JSON {type(envelope).__name__}, not an object")
    headers = envelope.get("headers")
    if not isinstance(headers, dict) and (task_queue or headers is not None):
        raise JunkError(NO_HEADERS, "no headers object")
    props = envelope.get("properties")
    if not isinstance(props, dict) or not isinstance(props.get("delivery_tag"), str):
        raise JunkError(BAD_PROPERTIES, "no properties object with a delivery_tag string")
    info = props.get("delivery_info")
    if not isinstance(info, dict) or not all(isinstance(info.get(k, ""), str) for k in ("exchange", "routing_key")):
        raise JunkError(BAD_PROPERTIES, "no delivery_info object")
    body, encoding = envelope.get("body"), props.get("body_encoding")
    if body is not None and not isinstance(body, (str, memoryview)):
        raise JunkError(BAD_BASE64, f"a body of type {type(body).__name__}")
    if encoding not in (None, "base64"):
        raise JunkError(BAD_BASE64, f"body_encoding {str(encoding)[:40]!r}")
    if task_queue and isinstance(headers, dict):
        if not isinstance(headers.get("task"), str) or not isinstance(headers.get("id"), str):
            raise JunkError(NO_HEADERS, "no task name or task id in the headers")
        if envelope.get("content-type") != wire.CONTENT_TYPE:
            kind = str(envelope.get("content-type"))[:60]
            raise JunkError(CONTENT_TYPE, f"content type {kind!r}, not {wire.CONTENT_TYPE}")


def body_bytes(body: str | bytes | memoryview) -> bytes:
    """A base64 body decoded as kombu decodes it; JunkError when it is not base64."""
    try:
        return binascii.a2b_base64(body.encode("ascii") if isinstance(body, str) else body)
    except (binascii.Error, ValueError) as exc:
        raise JunkError(BAD_BASE64, f"the body is not base64 ({exc})") from None


def refuse(client: Any, raw: Any, junk: JunkError, queue: str | None) -> None:
    """Refuse a message: log once per kind, count, and keep it in the dead-letter list (best effort: a Redis
    that is away loses the copy, not the worker)."""
    if junk.kind not in _logged:
        _logged.add(junk.kind)
        log.error(
            "refused a message from queue %r (%s): %s; kept in %s, counted (ocycle_worker_junk_messages_total); this"
            " worker serves on (logged once per kind)",
            queue,
            junk.kind,
            junk.why,
            DEAD_KEY,
        )
    else:
        log.debug("refused a message from queue %r (%s): %s", queue, junk.kind, junk.why)
    _count(junk.kind)
    keep(client, raw, junk, queue)


def keep(client: Any, raw: Any, junk: JunkError, queue: str | None) -> None:
    """Add a refused message to the dead-letter list, cut to :data:`.protocol.DEAD_BYTES`."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw or b"")
    record = {
        "kind": junk.kind,
        "why": junk.why,
        "queue": queue,
        "worker": f"{socket.gethostname()}/{os.getpid()}",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "size": len(data),
        "raw": data[:DEAD_BYTES].decode("utf-8", "backslashreplace"),
    }
    try:
        pipe = client.pipeline(transaction=False)
        pipe.lpush(DEAD_KEY, json.dumps(record))
        pipe.ltrim(DEAD_KEY, 0, DEAD_MAX - 1)
        pipe.expire(DEAD_KEY, DEAD_TTL)
        pipe.execute()
    except Exception as exc:  # Redis away or full: the count and the log line remain
        log.debug("could not keep a refused message in %s: %s", DEAD_KEY, exc)


def _count(kind: str) -> None:
    try:
        from .worker_metrics import count
    except ImportError:  # pragma: no cover - a worker has Celery
        return
    count("junk_messages", 1, kind)


def dead_letters(client: Any) -> list[dict[str, Any]]:
    """The dead-letter list, newest first (entries that do not parse are shown as they are)."""
    out = []
    for raw in client.lrange(DEAD_KEY, 0, DEAD_MAX - 1):
        try:
            record = json.loads(raw)
            out.append(record if isinstance(record, dict) else {"kind": "?", "raw": str(record)[:200]})
        except ValueError:
            out.append({"kind": "?", "raw": raw[:200].decode("utf-8", "backslashreplace")})
    return out


def sealed_items(client: Any, items: list[list[Any]], secret: str, queue: str | None) -> list[list[Any]]:
    """Of the chunks about to run, ``[task id, task name, chunk, t0, meta, expires, reply list, seal]`` each, those
    whose seal checks out (:func:`.protocol.message_seal`, keyed by ``secret``), bound to their digest for their
    reply (:func:`.replies.bind`); the others are refused (:data:`FORGED`): not run, nothing replied to the list
    they name, counted, logged once, kept. A chunk that names no reply list of the project is not checked: nothing
    it does reaches a producer. A claimed chunk's digest is the claim's; the value fetched is checked against it
    (:func:`.wire.claimed`).
    """
    if not secret:
        return items
    key = message_key(secret)
    out = []
    for item in items:
        task_id, name, chunk, t0, meta, _, reply_to, seal = [*item, None, None, None][:8]
        if not is_reply_key(reply_to):
            out.append(item)
            continue
        digest: bytes | None = None
        try:
            digest = chunk.digest if isinstance(chunk, wire.Claim) else wire.digest(chunk)
            expected = message_seal(key, task_id, name, reply_to, digest, t0, meta) if digest is not None else ""
        except Exception:  # a value that cannot be encoded again: not what a producer sent
            expected = ""
        if digest is None or not expected or not isinstance(seal, str) or not hmac.compare_digest(seal, expected):
            why = "no seal" if seal is None else "its seal does not check out (forged, or another OCYCLE_REPLY_SECRET)"
            summary = json.dumps({"id": task_id, "task": name, "reply_to": reply_to, "seal": seal}, default=repr)
            refuse(client, summary, JunkError(FORGED, f"chunk {str(task_id)[:64]} of task {str(name)[:80]!r}: {why}"),
                   queue)  # fmt: skip
            continue
        bind(task_id, digest)
        out.append(item)
    return out
