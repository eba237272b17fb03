"""Batching on the producer's side (publisher.groups, publish): how pending chunks are grouped into messages and
what a batch message carries. The worker's side: test_runner.py; real processes: tests/integration/test_batching.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from ocycle_dist.remote import wire
from ocycle_dist.remote.protocol import BATCH_HEADER, BATCH_TASK, claim_key, reply_key
from ocycle_dist.remote.publisher import groups, publish
from ocycle_dist.remote.settings import Settings
from tests.support.dist_helpers import TOKEN, entry, popped
from tests.support.helpers import owned


@pytest.fixture
def admin() -> Iterator[Any]:
    yield fakeredis.FakeRedis()


# ---- grouping --------------------------------------------------------------------------------------------


def test_consecutive_chunks_of_one_task_go_together_up_to_the_count_cap() -> None:
    entries = [entry(b"abcd", seq=i) for i in range(10)]
    got = groups(entries, Settings(batch_max_chunks=4))
    assert [len(g) for g in got] == [4, 4, 2]
    assert [e for g in got for e in g] == entries  # in order


def test_a_change_of_task_starts_a_new_message() -> None:
    a = [entry(b"a", task="t.a", seq=i) for i in range(3)]
    b = [entry(b"b", task="t.b", seq=i) for i in range(2)]
    got = groups([*a, *b, a[0]], Settings())
    assert [[e.task for e in g] for g in got] == [["t.a"] * 3, ["t.b"] * 2, ["t.a"]]


def test_the_byte_cap_splits_and_a_claimed_chunk_counts_as_its_key() -> None:
    s = Settings(batch_max_bytes=3000, claim_threshold=2000)
    small = [entry(b"x" * 1000, seq=i) for i in range(5)]  # ~1 KB each inline
    assert [len(g) for g in groups(small, s)] == [2, 2, 1]
    big = [entry(b"y" * 5000, seq=i) for i in range(5)]  # claimed: only the key rides in the message
    assert [len(g) for g in groups(big, s)] == [5]


@pytest.mark.parametrize("cap", [0, 1])
def test_batching_off_sends_a_message_per_chunk(cap: int) -> None:
    entries = [entry(b"abcd", seq=i) for i in range(3)]
    assert groups(entries, Settings(batch_max_chunks=cap)) == [[e] for e in entries]


# ---- the batch message -----------------------------------------------------------------------------------


def test_a_batch_message_carries_each_chunk_with_its_id_task_t0_meta_and_expiry(admin: Any) -> None:
    s = Settings(task_time_limit=2.0, claim_threshold=100)
    entries = [entry(b"abcd", seq=0, stream="one"), entry(b"z" * 500, seq=1, stream="two"), entry(b"efgh", seq=2)]
    entries[2].expires_at = 1234.5
    sent = publish(admin, owned(entries, s, TOKEN))
    assert sent == [entries]
    ((envelope, body),) = popped(admin)
    headers, props = envelope["headers"], envelope["properties"]
    assert headers["task"] == BATCH_TASK and envelope["content-type"] == wire.CONTENT_TYPE
    assert headers[BATCH_HEADER] == [[e.id, e.meta.stream] for e in entries]
    assert headers["timelimit"] == [6.0, None]  # per chunk x chunks
    assert props["reply_to"] == reply_key(TOKEN)  # each chunk's reply goes to the producer's list
    assert headers["id"] == props["delivery_tag"]  # such a worker's reply names the message
    assert props["delivery_tag"] == entries[0].tag == entries[2].tag  # one message, one tag
    (items,), kwargs, _ = body
    assert kwargs == {}
    assert items[0] == [entries[0].id, "tests.echo", b"abcd", 10.0, entries[0].meta._asdict(), None]
    assert items[1][2] == wire.Claim(claim_key(entries[1].id))  # large: by claim check
    assert admin.get(claim_key(entries[1].id)) == entries[1].chunk
    assert items[2][5] == 1234.5


def test_in_a_batch_message_chunks_over_batch_claim_threshold_go_by_claim_check_alone_they_go_inline(
    admin: Any,
) -> None:
    s = Settings(batch_claim_threshold=1000)  # claim_threshold stays 128 KiB
    small, big, bigger = entry(b"s" * 100, seq=0), entry(b"b" * 2000, seq=1), entry(b"B" * 5000, seq=2)
    publish(admin, owned([small, big, bigger], s, TOKEN))
    ((envelope, body),) = popped(admin)
    (items,), _, _ = body
    assert items[0][2] == b"s" * 100  # under the threshold: inline
    assert [item[2] for item in items[1:]] == [wire.Claim(claim_key(big.id)), wire.Claim(claim_key(bigger.id))]
    assert admin.get(claim_key(big.id)) == big.chunk and admin.get(claim_key(bigger.id)) == bigger.chunk
    assert len(json.dumps(envelope)) < 2000  # the batch's data is not in its envelope (no base64 of it)
    assert (small.claimed, big.claimed, bigger.claimed) == (False, True, True)  # their keys go once settled
    alone = entry(b"a" * 2000)
    publish(admin, owned([alone], s, TOKEN))  # a message of its own: claim_threshold applies, inline
    ((_, (args, _, _)),) = popped(admin)
    assert args[0] == b"a" * 2000 and not alone.claimed


def test_a_lone_chunk_goes_as_a_plain_task_message(admin: Any) -> None:
    one = entry(b"abcd")
    publish(admin, owned([one], Settings(), TOKEN))
    ((envelope, body),) = popped(admin)
    assert envelope["headers"]["task"] == "tests.echo" and envelope["headers"]["id"] == one.id
    assert envelope["properties"]["reply_to"] == reply_key(TOKEN)
    assert body[0] == [b"abcd", 10.0]
