"""The pending table alone: what the publisher takes and in what order, what a message carried, recovery."""

from __future__ import annotations

import uuid
from typing import Any

from ocycle_dist.chunk import Chunk
from ocycle_dist.remote.pending import QUEUED, SENT, Entry, Pending
from ocycle_dist.remote.settings import Settings


class Owner:
    settings = Settings(resend_after=10.0)


def entry(stream: str, seq: int, owner: Any = None) -> Entry:
    e = Entry(str(uuid.uuid4()), "t", Chunk(stream, seq, float(seq), 4, 4 * seq), b"\xc4\x04abcd")
    e.owner = owner or Owner()
    return e


def send(table: Pending, entries: list[Entry], tag: str, at: float = 100.0) -> None:
    """What the publisher does with taken entries: each gets its message's tag, then the table is told."""
    for e in entries:
        e.tag = tag
    table.sent(entries, at)


def test_new_chunks_are_taken_in_emit_order_and_chunks_sent_again_first_in_stream_order() -> None:
    table = Pending()
    a = [entry("a", i) for i in range(3)]
    b = [entry("b", i) for i in range(2)]
    for e in (a[0], b[0], a[1], b[1], a[2]):
        table.add(e)
    taken = table.take(3, 1 << 30)
    assert taken == [a[0], b[0], a[1]]
    send(table, taken, "m1")
    table.add(c := entry("c", 0))
    assert table.requeue([a[1], a[0]]) == [a[1], a[0]]  # a fault: their messages are lost
    assert table.take(10, 1 << 30) == [a[0], a[1], b[1], a[2], c]  # again first (stream order), then new (emit order)
    assert table.requeue([b[1]]) == []  # not sent: nothing to queue again


def test_every_chunk_of_a_message_is_found_by_its_tag_and_a_resend_moves_them() -> None:
    table = Pending()
    chunks = [entry("s", i) for i in range(4)]
    for e in chunks:
        table.add(e)
    send(table, table.take(4, 1 << 30), "batch-1")
    assert table.in_message("batch-1") == chunks
    tag_of, task_of = table.sent_tags()
    assert tag_of == {e.id: "batch-1" for e in chunks} and task_of == {"batch-1": [e.id for e in chunks]}
    table.requeue(chunks[1:3])
    assert table.in_message("batch-1") == [chunks[0], chunks[3]]
    send(table, table.take(4, 1 << 30), "batch-2")
    assert table.in_message("batch-2") == chunks[1:3]
    assert [e.sends for e in chunks] == [1, 2, 2, 1]  # sends are counted; a recovery is not an attempt
    assert all(e.lost == 0 for e in chunks)
    assert table.pop(chunks[0].id) is chunks[0] and table.pop(chunks[0].id) is None
    assert table.in_message("batch-1") == [chunks[3]] and len(table) == 3


def test_requeued_chunks_go_first_but_none_answered_or_queued() -> None:
    table = Pending()
    chunks = [entry("s", i) for i in range(4)]
    for e in chunks:
        table.add(e)
    send(table, table.take(3, 1 << 30), "m")
    table.pop(chunks[1].id)  # answered
    assert table.requeue(table.sent_before(float("inf"))) == [chunks[0], chunks[2]]
    assert [e.state for e in chunks] == [QUEUED, SENT, QUEUED, QUEUED]
    assert table.take(10, 1 << 30) == [chunks[0], chunks[2], chunks[3]]
    assert table.sent_tags() == ({}, {})


def test_late_chunks_are_due_oldest_first_and_a_refresh_starts_their_wait_again() -> None:
    table = Pending()
    chunks = [entry("s", i) for i in range(3)]
    for e in chunks:
        table.add(e)
    for at, e in zip((100.0, 101.0, 105.0), chunks, strict=True):
        send(table, table.take(1, 1 << 30), f"m{e.meta.seq}", at)
    assert table.oldest_sent() == 100.0
    assert table.due(109.9, 10.0) == []
    assert table.due(111.5, 10.0) == chunks[:2]
    table.refresh(chunks[:1], 111.5)  # found still queued: waits again from now
    assert table.oldest_sent() == 101.0 and table.due(111.5, 10.0) == [chunks[1]]
    assert chunks[0].sends == 1  # looking for it is not a send


def test_chunks_taken_over_from_an_earlier_producer_are_sent_ones_with_their_old_tags() -> None:
    table = Pending()
    old = entry("s", 7)
    old.tag = "their-message"
    table.add(old, sent=True)
    assert table.take(10, 1 << 30) == [] and table.in_message("their-message") == [old]
    assert table.due(1e9, 10.0) == [old]  # looked for at once
    table.requeue([old])  # gone from Redis: sent again, ahead
    assert table.take(10, 1 << 30) == [old] and table.in_message("their-message") == []
