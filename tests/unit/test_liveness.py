"""The producer's one owner of liveness, alone: a new server seen on a new connection, the workers' leases, and
looking for a late chunk's message in Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from ocycle_dist.remote import wire
from ocycle_dist.remote.liveness import LeaseWatch, ServerWatch, locate, run_id_of
from ocycle_dist.remote.protocol import lease_key


@pytest.fixture
def admin() -> Iterator[Any]:
    yield fakeredis.FakeRedis()


class Connection:
    """What ServerWatch uses of a redis-py connection: the handshake, its commands (INFO server, INFO memory), their
    replies in turn."""

    def __init__(self, reply: Any, memory: Any = b"# Memory\r\nmaxmemory_policy:noeviction\r\n") -> None:
        self.replies, self.handshakes, self.sent, self.read = [reply, memory], 0, [], 0

    def on_connect(self) -> None:
        self.handshakes += 1

    def send_command(self, *args: Any) -> None:
        self.sent.append(args)

    def read_response(self) -> Any:
        reply = self.replies[self.read]
        self.read += 1
        if isinstance(reply, Exception):
            raise reply
        return reply


def info(run_id: str) -> bytes:
    return f"# Server\r\nredis_version:7.0.15\r\nrun_id:{run_id}\r\ntcp_port:6379\r\n".encode()


def test_a_new_run_id_on_a_new_connection_is_told_once_and_the_first_is_not() -> None:
    told: list[str] = []
    watch = ServerWatch(told.append)
    for run_id in ("aaa", "aaa", "bbb", "bbb", "ccc"):
        conn = Connection(info(run_id))
        watch.on_connect(conn)
        assert conn.handshakes == 1 and conn.sent == [("INFO", "server"), ("INFO", "memory")] and conn.read == 2
    assert told == ["bbb", "ccc"] and watch.new_servers == 2 and watch.run_id == "ccc"
    assert run_id_of(b"x:1\r\nrun_id:\r\n") is None


def test_a_server_without_info_is_told_once_and_asked_no_more() -> None:
    watch = ServerWatch(lambda run_id: pytest.fail("no server can be told"))
    refused = Connection(redis.ResponseError("unknown command 'info'"), redis.ResponseError("unknown command 'info'"))
    watch.on_connect(refused)
    assert refused.read == 2  # both replies read: the connection is left clean
    later = Connection(info("aaa"))
    watch.on_connect(later)
    assert not watch.has_info and later.handshakes == 1 and later.sent == []


def test_the_maxmemory_policy_is_read_on_each_new_connection_and_said_once_per_policy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = ServerWatch(lambda run_id: None, "redis://:pw@h:6379/0", allow_eviction=False)

    def memory(policy: str) -> bytes:
        return f"# Memory\r\nmaxmemory:20971520\r\nmaxmemory_human:20.00M\r\nmaxmemory_policy:{policy}\r\n".encode()

    with caplog.at_level("WARNING", logger="ocycle_dist.liveness"):
        for policy in ("noeviction", "volatile-lru", "volatile-lru", "allkeys-lru", "allkeys-lru"):
            watch.on_connect(Connection(info("aaa"), memory(policy)))
            assert watch.policy == policy and watch.may_evict is (policy != "noeviction")
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in said] == ["WARNING", "ERROR"]  # once per policy; not accepted: an error
    assert "may evict the keys with a time to live" in said[0][1] and "maxmemory-policy volatile-lru" in said[0][1]
    assert "maxmemory-policy='allkeys-lru' is invalid: expected noeviction" in said[1][1] and "pw" not in said[1][1]


def test_the_lease_watch_maps_a_batch_tag_to_all_its_chunks(admin: Any) -> None:
    watch = LeaseWatch(admin, lease=0.05)
    tag_of = {"a": "T1", "b": "T1", "c": "T2"}
    task_of = {"T1": ["a", "b"], "T2": ["c"]}
    admin.sadd("ocycle:workers", "w1/123")
    admin.set(lease_key("w1/123"), wire.dumps({"worker": "w1/123", "tasks": [], "tags": ["T1"]}), px=60_000)
    admin.zadd("unacked_index", {"T1": 1.0, "T2": 1.0})
    assert watch.check(tag_of, task_of) == []  # a, b named through their message's tag; c not yet overdue
    assert watch.named == {"a", "b"}
    time.sleep(0.1)  # longer than the lease: c, delivered and named by nobody, is overdue
    assert watch.check(tag_of, task_of) == [("c", "delivered to a worker that died before naming it in its lease")]
    admin.delete(lease_key("w1/123"))  # the pool process died: both chunks of its batch are lost
    assert sorted(watch.check(tag_of, task_of)) == [
        ("a", "the lease of worker w1/123 lapsed"),
        ("b", "the lease of worker w1/123 lapsed"),
    ]


def message(tag: str, size: int = 10) -> bytes:
    """A message as kombu's envelope has it: the body first, the properties (with the tag) last."""
    return json.dumps({"body": "A" * size, "properties": {"delivery_tag": tag}}).encode()


def test_a_late_chunk_is_found_queued_or_delivered_and_a_lost_one_is_not(admin: Any) -> None:
    admin.lpush("q", *(message(f"t{i}", size=20_000 if i % 7 == 0 else 10) for i in range(200)))  # 4 pages
    admin.zadd("unacked_index", {"held": 1.0})
    wanted = {"q": ["t0", "t150", "t199", "held", "gone"], "other": ["t3"]}
    assert locate(admin, wanted) == {"t0", "t150", "t199", "held"}  # t3 is in q, not in its queue "other"
    assert locate(admin, {"q": []}) == set()
