"""Sealed messages (a deployment with a reply secret): each chunk's task bound to the producer's data, checked by
the worker before it runs, and its result bound to the chunk the producer sent."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import numpy as np
import pytest

from ocycle_dist.chunk import Chunk
from ocycle_dist.remote import replies, wire
from ocycle_dist.remote.intake import sealed_items
from ocycle_dist.remote.pending import Entry
from ocycle_dist.remote.protocol import (
    SEAL_HEADER,
    SEALS_HEADER,
    batch_message,
    chunk_digest,
    mac_key,
    reply_ok,
    task_message,
    unseal,
)
from ocycle_dist.remote.replies import ReplyWriter
from ocycle_dist.remote.settings import Settings

SECRET = "s3"
SEALED = Settings(reply_secret=SECRET)


def entry(value: Any, seq: int = 0, *, raw: bool = False) -> Entry:
    """An entry as the publisher sends it: encoded, or (``raw``: a claimed bytes or numpy chunk) its value as it is."""
    meta = Chunk("s", seq, 10.0 + seq, 4, 4 * seq)
    if raw:
        return Entry(f"id-{seq}", "t.echo", meta, b"", value=value, size=wire.encoded_size(value) or 0)
    return Entry(f"id-{seq}", "t.echo", meta, wire.dumps(value))


def items_of(message: bytes) -> list[list[Any]]:
    """The chunks of a message as a worker takes them: [id, task, chunk, t0, meta, expires, reply list, seal]."""
    envelope = json.loads(message)
    headers, props = envelope["headers"], envelope["properties"]
    args, _, _ = wire.loads(base64.b64decode(envelope["body"]))
    if SEALS_HEADER in headers:
        return [[*item[:6], props["reply_to"], seal] for item, seal in zip(args[0], headers[SEALS_HEADER], strict=True)]
    return [[headers["id"], headers["task"], args[0], args[1], headers["ocycle"], None, props["reply_to"],
             headers.get(SEAL_HEADER)]]  # fmt: skip


def test_without_a_secret_nothing_is_sealed_and_nothing_checked(admin: Any) -> None:
    message, _ = task_message(entry(b"abcd"), Settings(), "tok")
    [item] = items_of(message)
    assert item[7] is None and sealed_items(admin, [item], "", "celery") == [item]


@pytest.mark.parametrize("value", [b"abcd", np.arange(4, dtype="<f4"), ["a", 1, 2.5], "text"], ids=repr)
def test_a_sealed_chunk_checks_out_and_is_bound_to_its_digest_for_its_reply(admin: Any, value: Any) -> None:
    e = entry(value)
    message, _ = task_message(e, SEALED, "tok")
    [item] = items_of(message)
    assert sealed_items(admin, [item], SECRET, "celery") == [item]
    assert e.digest == hashlib.sha256(wire.dumps(value)).digest()
    writer = ReplyWriter(admin, 60, SECRET)
    writer.add(item[6], reply_ok(item[0], "done"))
    [(_, [raw])] = writer.by_key.items()
    record = unseal(wire.loads(raw), mac_key(SECRET, "tok"))
    assert record is not None and record["digest"] == e.digest and not replies.is_bound(item[0])


@pytest.mark.parametrize(
    ("index", "value"),
    [(2, b"evil"), (0, "other-id"), (1, "t.other"), (3, 99.0), (6, "ocycle:reply:thief"), (7, "0" * 32), (7, None)],
    ids=["chunk", "task id", "task", "t0", "reply list", "seal", "no seal"],
)
def test_a_chunk_whose_task_id_task_data_t0_or_reply_list_changed_is_refused(
    admin: Any, index: int, value: Any
) -> None:
    message, _ = task_message(entry(b"abcd"), SEALED, "tok")
    [item] = items_of(message)
    item[index] = value
    assert sealed_items(admin, [item], SECRET, "celery") == []
    [kept] = [json.loads(r) for r in admin.lrange("ocycle:dead", 0, -1)]
    assert kept["kind"] == "forged" and not replies.is_bound(item[0])


def test_metadata_is_sealed_too(admin: Any) -> None:
    message, _ = task_message(entry(b"abcd"), SEALED, "tok")
    [item] = items_of(message)
    item[4] = {**item[4], "stream": "another"}  # the archive names its files from it
    assert sealed_items(admin, [item], SECRET, "celery") == []


def test_another_secret_is_refused(admin: Any) -> None:
    message, _ = task_message(entry(b"abcd"), Settings(reply_secret="another"), "tok")
    assert sealed_items(admin, items_of(message), SECRET, "celery") == []


def test_each_chunk_of_a_batch_message_is_sealed_alone(admin: Any) -> None:
    entries = [entry(b"c%03d" % i, i) for i in range(5)]
    for e in entries:
        e.owner = None  # type: ignore[assignment]
    message, _ = batch_message(entries, SEALED, "batch-id", "tag", "tok")
    items = items_of(message)
    items[3][2] = b"evil"
    assert [i[0] for i in sealed_items(admin, items, SECRET, "celery")] == ["id-0", "id-1", "id-2", "id-4"]


def test_a_claimed_chunk_carries_its_digest_and_a_swapped_value_is_refused() -> None:
    big = np.arange(50_000, dtype="<i4")
    e = entry(big, raw=True)
    message, claimed = task_message(e, Settings(reply_secret=SECRET, claim_threshold=1024), "tok")
    [item] = items_of(message)
    claim = item[2]
    assert isinstance(claim, wire.Claim) and claim.digest == chunk_digest(e) == e.digest
    np.testing.assert_array_equal(wire.claimed(claim, bytes(claimed)), big)
    other = np.arange(50_000, dtype="<i4")[::-1].copy()
    with pytest.raises(wire.EncodeError, match="is not the one its message was sealed with"):
        wire.claimed(claim, other.tobytes())


def test_a_claim_without_a_digest_in_a_sealed_deployment_is_refused(admin: Any) -> None:
    message, _ = task_message(entry(b"x" * 2000), Settings(reply_secret=SECRET, claim_threshold=100), "tok")
    [item] = items_of(message)
    item[2] = wire.Claim(item[2].key, item[2].form)  # the digest stripped
    assert sealed_items(admin, [item], SECRET, "celery") == []


def test_a_chunk_that_names_no_reply_list_is_not_checked(admin: Any) -> None:
    item = ["id", "t.echo", b"x", 1.0, {}, None, None, None]  # plain apply_async: its result goes nowhere
    assert sealed_items(admin, [item], SECRET, "celery") == [item]
