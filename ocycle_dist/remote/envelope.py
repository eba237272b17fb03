"""A message taken from a queue by the worker itself (a drain, a purge): kombu's envelope and its items."""

from __future__ import annotations

import json
from typing import Any

from . import wire
from .intake import body_bytes, check, check_envelope
from .protocol import BATCH_TASK, META_HEADER, SEAL_HEADER, SEALS_HEADER, is_reply_key

_BODY_FIRST = b'{"body": "'


def envelope_of(raw: bytes) -> tuple[dict[str, Any], Any]:
    """kombu's JSON envelope of a message and its body (a str, or the body's bytes in ``raw``).

    The producers' envelopes (and kombu's) begin with the body, base64 text: it is cut out of ``raw`` unread
    and the rest parsed alone (``json.loads`` would scan a batch message's whole body). Anything else (an escape
    in the body, a second "body" key...) is parsed whole."""
    if raw.startswith(_BODY_FIRST):
        start = len(_BODY_FIRST)
        end = raw.find(b'"', start)
        if end > 0 and raw.find(b"\\", start, end) < 0:
            envelope = json.loads(b'{"body": ""' + raw[end + 1 :])
            if isinstance(envelope, dict) and envelope.get("body") == "":
                return envelope, memoryview(raw)[start:end]
    envelope = json.loads(raw)
    return envelope, envelope["body"]


def decode_items(raw: bytes) -> list[list[Any]] | None:
    """The items of a message taken from the queue, or None when Celery must run it (not ours to run here).

    Raises:
        JunkError: no worker can take it (:mod:`.intake`): refused, not put back.
    """
    try:
        envelope, body = envelope_of(raw)
    except Exception:  # not JSON, not an object, no body: which of them, precisely
        check(raw)
        return None
    check_envelope(envelope)
    headers, props = envelope["headers"], envelope["properties"]
    if headers.get("eta") or headers.get("countdown") or props.get("body_encoding") != "base64":
        return None
    data = body_bytes(body)
    try:
        args, kwargs, embed = wire.loads(data)
        if kwargs or any((embed or {}).get(k) for k in ("callbacks", "errbacks", "chain", "chord")):
            return None
        if headers.get("task") == BATCH_TASK:  # each chunk replies to the batch's reply list
            reply_to = props.get("reply_to")
            if not is_reply_key(reply_to):
                return None
            seals = headers.get(SEALS_HEADER) or []
            return [[*item[:6], reply_to, seals[i] if i < len(seals) else None] for i, item in enumerate(args[0])]
        if len(args) != 2:
            return None
        meta = headers.get(META_HEADER) or {}
        return [[headers["id"], headers["task"], args[0], args[1], meta, headers.get("expires"), props.get("reply_to"),
                 headers.get(SEAL_HEADER)]]  # fmt: skip
    except Exception:  # anything unexpected: Celery's own path decides (and reports) what it is
        return None
