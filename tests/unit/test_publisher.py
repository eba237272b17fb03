"""The publisher on fakeredis: what a task message is, claim checks, and where a message sent again goes."""

from __future__ import annotations

import uuid
from typing import Any

from ocycle_dist.chunk import Chunk
from ocycle_dist.remote import wire
from ocycle_dist.remote.pending import Entry
from ocycle_dist.remote.protocol import claim_key, reply_key, token_of
from ocycle_dist.remote.publisher import publish
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.remote.settings import Settings
from tests.support.dist_helpers import decode, queued


class Owner:
    """What the publisher reads of the executor that keeps an entry."""

    def __init__(self, settings: Settings, token: str) -> None:
        self.settings, self.token, self.batching = settings, token, True


_owners: dict[tuple[int, str], Owner] = {}


def make_entry(
    value: Any, settings: Settings, *, stream: str = "pub", seq: int = 7, t0: float = 12.5, token: str = "tok"
) -> Entry:
    """An entry kept by an executor with ``settings`` and ``token``."""
    entry = Entry(str(uuid.uuid4()), "tests.echo", Chunk(stream, seq, t0, 4, 28), wire.dumps(value))
    entry.owner = _owners.setdefault((id(settings), token), Owner(settings, token))  # type: ignore[assignment]
    return entry


def test_published_message_is_a_celery_task_with_our_content_type_and_reply_list(broker: str, admin: Any) -> None:
    settings = Settings(broker_url=broker, queue="q-unit", task_time_limit=1.5, batch_max_chunks=0)
    entries = [make_entry(b"abcd", settings, seq=i, t0=10.0 + i, token="tok123") for i in range(3)]
    client = connect(broker)
    try:
        publish(client, entries)
    finally:
        client.close()
    assert admin.llen("q-unit") == 3
    for entry, raw in zip(entries, [admin.rpop("q-unit") for _ in entries], strict=True):  # workers pop the tail
        envelope, body = decode(raw)
        assert envelope["content-type"] == wire.CONTENT_TYPE == "application/x-ocycle-msgpack"
        assert envelope["content-encoding"] == "binary"
        assert body == [
            [b"abcd", entry.meta.t0],
            {},
            {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
        ]
        headers, props = envelope["headers"], envelope["properties"]
        assert (headers["task"], headers["id"], headers["root_id"]) == ("tests.echo", entry.id, entry.id)
        assert headers["retries"] == 0 and headers["timelimit"] == [1.5, None]  # [hard, soft]
        assert headers["ocycle"] == entry.meta._asdict()
        assert props["reply_to"] == "ocycle:reply:tok123" == reply_key("tok123")
        assert props["delivery_tag"] == entry.tag
        assert token_of(props["reply_to"]) == "tok123"
        assert props["correlation_id"] == entry.id and props["body_encoding"] == "base64"
        assert props["delivery_info"]["routing_key"] == "q-unit"
    assert admin.keys("ocycle:chunk:*") == []  # small chunks travel inline


def test_a_chunk_above_claim_threshold_travels_by_claim_check(broker: str, admin: Any) -> None:
    settings = Settings(broker_url=broker, claim_threshold=100, result_ttl=60, batch_max_chunks=0)
    big, small = make_entry(bytes(range(256)) * 4, settings), make_entry(b"x" * 50, settings)
    client = connect(broker)
    try:
        publish(client, [big, small])
    finally:
        client.close()
    (_, big_body), (_, small_body) = (decode(raw) for raw in reversed(admin.lrange("celery", 0, -1)))
    assert big_body[0] == [wire.Claim(claim_key(big.id)), big.meta.t0]
    assert claim_key(big.id) == f"ocycle:chunk:{big.id}"
    assert admin.get(claim_key(big.id)) == big.chunk
    assert wire.loads(admin.get(claim_key(big.id))) == bytes(range(256)) * 4
    assert 0 < admin.ttl(claim_key(big.id)) <= 60
    assert small_body[0] == [b"x" * 50, small.meta.t0]
    assert admin.exists(claim_key(small.id)) == 0


def test_messages_sent_again_go_ahead_of_those_waiting_in_stream_order_new_ones_behind(broker: str, admin: Any) -> None:
    settings = Settings(broker_url=broker, batch_max_chunks=0)
    waiting = make_entry(b"wait", settings, stream="other", seq=0)
    again = [make_entry(b"agai", settings, seq=i) for i in (1, 2)]
    new = make_entry(b"newe", settings, seq=3)
    client = connect(broker)
    try:
        publish(client, [waiting, *again])  # all sent once
        old = [entry.tag for entry in again]
        publish(client, [*again, new])  # then interrupted by a fault: they go again, with new messages
        assert all(entry.tag != tag for entry, tag in zip(again, old, strict=True))
    finally:
        client.close()
    order = [(e["headers"]["ocycle"]["stream"], e["headers"]["ocycle"]["seq"]) for e in queued(admin)]
    # the workers pop from the right: the chunks sent again first, in stream order, then what waited, new last
    assert order == [("pub", 1), ("pub", 2), ("other", 0), ("pub", 1), ("pub", 2), ("pub", 3)]


def test_claims_waiting_to_be_deleted_never_hold_up_the_recoverys_checks(broker: str, admin: Any) -> None:
    import threading
    import time

    from ocycle_dist.remote.pending import Pending
    from ocycle_dist.remote.publisher import Publisher

    class Checks:  # a recovery whose next check is due every 0.2 s
        def __init__(self) -> None:
            self.calls = 0
            self.again = threading.Event()
            self.at = time.monotonic()

        def next_check(self) -> float:
            return self.at + 0.2

        def check(self) -> None:
            self.calls += 1
            self.at = time.monotonic()
            if self.calls >= 5:
                self.again.set()

    checks = Checks()
    admin.set(claim_key("settled"), b"x")
    publisher = Publisher(Pending(), connect(broker), broker, lambda entry, exc: None, checks)
    try:
        publisher.forget_claim("settled")  # nothing queued, a claim to delete: was a wait of 1 s renewed forever
        assert checks.again.wait(5), f"{checks.calls} checks"
        deadline = time.monotonic() + 5
        while admin.exists(claim_key("settled")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not admin.exists(claim_key("settled"))
    finally:
        publisher.stop()
