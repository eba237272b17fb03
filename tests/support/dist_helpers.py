"""Helpers of the distributed path's unit tests (fakeredis broker): reading what the publisher queued,
answering as a worker would, collecting outcomes. The fixtures using them are in ``conftest.py``."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import ocycle_dist as ocycle
from ocycle_dist.chunk import Chunk
from ocycle_dist.remote import wire
from ocycle_dist.remote.pending import Entry
from ocycle_dist.remote.protocol import mac_key, reply_key, seal, token_of
from tests.support.helpers import wait_for


def decode(raw: bytes) -> tuple[dict[str, Any], Any]:
    """A message LPUSHed by the publisher: its kombu envelope and its decoded Celery body."""
    envelope = json.loads(raw)
    return envelope, wire.loads(base64.b64decode(envelope["body"]))


def queued(admin: Any, queue: str = "celery") -> list[dict[str, Any]]:
    """The envelopes on ``queue``, oldest first (the order a worker pops them in)."""
    return [json.loads(raw) for raw in reversed(admin.lrange(queue, 0, -1))]


def reply(
    admin: Any, stream: str, task_id: str, *, result: Any = None, error: list[str] | None = None, secret: str = ""
) -> None:
    """What a worker's ReplyBackend pushes when a task ends: sealed with the key of the message's token."""
    message = next(m for q in ("celery", *sorted(k.decode() for k in admin.keys("q*"))) for m in queued(admin, q)
                   if m["headers"]["id"] == task_id)  # fmt: skip
    answer(admin, stream, message, result=result, error=error, secret=secret)


def answer(
    admin: Any, stream: str, message: dict[str, Any], *, result: Any = None, error: list[str] | None = None,
    secret: str = "",
) -> None:  # fmt: skip
    """:func:`reply` to a message already read from its queue (an envelope of :func:`queued`)."""
    task_id = message["headers"]["id"]
    record = (
        {"id": task_id, "ok": True, "result": result} if error is None else {"id": task_id, "ok": False, "error": error}
    )
    reply_to = message["properties"]["reply_to"]
    token = token_of(reply_to)
    assert reply_to == reply_key(token)
    assert message["headers"]["ocycle"]["stream"] == stream
    admin.rpush(reply_to, seal(record, mac_key(secret, token)))


def settled(emitter: ocycle.BufferEmit) -> None:
    """Wait until the emitter's callback thread has run every on_done/on_error so far (outcomes counted)."""
    wait_for(lambda: emitter.stats().callback_backlog == 0, what="the emitter's callbacks run")


def spool_rows(directory: Path, stream: str) -> list[int]:
    """Sequence numbers of ``stream``'s chunks in the SQLite spool file, read with a connection of our own."""
    db = sqlite3.connect(directory / "spool.sqlite")
    try:
        return [seq for (seq,) in db.execute("SELECT seq FROM chunks WHERE stream = ? ORDER BY seq", (stream,))]
    finally:
        db.close()


class Collector:
    """on_done / on_error recording every call with its chunk's sequence number."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: list[tuple[int, Any]] = []
        self.errors: list[tuple[int, BaseException]] = []

    def on_done(self, result: Any, meta: Chunk) -> None:
        with self.lock:
            self.done.append((meta.seq, result))

    def on_error(self, exc: BaseException, meta: Chunk) -> None:
        with self.lock:
            self.errors.append((meta.seq, exc))

    @property
    def done_seqs(self) -> list[int]:
        with self.lock:
            return sorted(seq for seq, _ in self.done)


def assert_accounted(emitter: ocycle.BufferEmit, chunks: int) -> None:
    stats = emitter.stats()
    assert stats.in_flight == 0, stats
    assert stats.emitted == chunks == stats.done + stats.failed + stats.dropped, stats


def warnings_of(caplog: Any, text: str) -> list[str]:
    """The messages of the WARNING records captured that contain ``text``."""
    import logging

    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# ---- messages a publisher LPUSHes to fakeredis, for a worker's view ------------------------------------------

TOKEN = "unittoken0001"  # the producer token of these messages' reply list


def entry(value: Any, *, task: str = "tests.echo", stream: str = "s", seq: int = 0) -> Entry:
    """A pending chunk of ``value`` (encoded), as a producer's table holds it."""
    return Entry(str(uuid.uuid4()), task, Chunk(stream, seq, 10.0 + seq, 4, 4 * seq), wire.dumps(value))


def popped(admin: Any, queue: str = "celery") -> list[tuple[dict[str, Any], Any]]:
    """The messages on ``queue`` in the order a worker pops them: (envelope, decoded body)."""
    out = []
    while (raw := admin.rpop(queue)) is not None:
        envelope = json.loads(raw)
        out.append((envelope, wire.loads(base64.b64decode(envelope["body"]))))
    return out
