"""The reply listener on fakeredis: every reply delivered once, in one round trip, through outages and junk; woken
at once to stop or to listen to a new list."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from ocycle_dist.remote import listener, wire
from ocycle_dist.remote.redis_client import connect
from tests.support.helpers import wait_for

WAKE = "ocycle:wake:test"


class Got:
    """A listener's handler that takes replies whose id it waits for, the first time (as the hub's does)."""

    def __init__(self, pending: set[Any] | None = None, probe: Any = None) -> None:
        self.pending, self.probe = pending, probe
        self.records: list[dict[str, Any]] = []
        self.keys: list[str] = []

    def __call__(self, key: str, envelope: dict[str, Any]) -> bool:
        if self.pending is not None:
            if envelope.get("id") not in self.pending:
                return False
            self.pending.discard(envelope["id"])
        self.records.append({**envelope, "at": self.probe() if self.probe else None})
        self.keys.append(key)
        return True

    @property
    def ids(self) -> list[Any]:
        return [r["id"] for r in self.records]


@contextlib.contextmanager
def reading(source: Any, handler: Got, poll: float = 5.0) -> Iterator[listener.ReplyListener]:
    """A reply listener on ``source`` (a client, or a :class:`Server` around one), stopped (its client closed) after."""
    reader = listener.ReplyListener(source, handler, WAKE, poll=poll)
    try:
        yield reader
    finally:
        reader.stop()


def test_listener_delivers_replies_counts_duplicates_and_survives_corrupt_entries(
    broker: str, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    got = Got({"a", "b", "c"})
    with reading(connect(broker), got, poll=0.1) as reader:
        reader.listen("ocycle:reply:lst")
        admin.rpush(
            "ocycle:reply:lst",
            wire.dumps({"id": "a", "ok": True, "result": 1}),
            b"\xc1 not msgpack",
            wire.dumps({"id": "a", "ok": True, "result": 1}),  # a redelivered task's second reply
            wire.dumps({"id": "b", "ok": False, "error": ["ValueError", "x"]}),
        )
        wait_for(lambda: len(got.ids) == 2 and reader.unclaimed == 1, what="replies a and b, one duplicate")
        assert got.ids == ["a", "b"] and got.records[0]["result"] == 1 and got.keys == ["ocycle:reply:lst"] * 2
        assert reader.unreadable == 1
        assert any("unreadable reply dropped" in r.getMessage() for r in caplog.records)
        admin.rpush("ocycle:reply:lst", wire.dumps({"id": "c", "ok": True, "result": [b"z"]}))
        wait_for(lambda: len(got.ids) == 3, what="reply c after the corrupt entry")
        assert got.records[2]["result"] == [b"z"] and reader.unclaimed == 1
        assert reader.connected.is_set()


class Server:
    """Stands in for the Redis server behind a client: a command that fails once, commands it lacks, calls counted."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.fail_next: str | None = None  # a command name: its next call raises ConnectionError
        self.unknown: set[str] = set()  # commands this server does not have (an older Redis)
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        self.calls[name] += 1
        if name in self.unknown:

            def unknown(*args: Any, **kwargs: Any) -> Any:
                import redis

                raise redis.ResponseError(f"unknown command '{name.upper()}', with args beginning with: ")

            return unknown
        if name != self.fail_next:
            return attribute

        def fail(*args: Any, **kwargs: Any) -> Any:
            import redis

            self.fail_next = None
            raise redis.ConnectionError(f"{name} failed")

        return fail


def test_listener_takes_every_waiting_reply_in_one_round_trip(broker: str, admin: Any) -> None:
    server = Server(connect(broker))
    got = Got(probe=lambda: server.calls["blmpop"] + server.calls["lpop"])
    with reading(server, got) as reader:
        admin.rpush("ocycle:reply:many", *(wire.dumps({"id": i, "ok": True, "result": None}) for i in range(300)))
        reader.listen("ocycle:reply:many")
        wait_for(lambda: len(got.ids) == 300, what="every reply")
        assert [(r["id"], r["at"]) for r in got.records] == [(i, 1) for i in range(300)]


def test_listener_stops_at_once_and_listens_to_a_new_list_at_once_while_it_waits(broker: str, admin: Any) -> None:
    got = Got()
    with reading(connect(broker), got, poll=30.0) as reader:  # a BLMPOP waits up to 30 s
        reader.listen("ocycle:reply:one")
        wait_for(reader.connected.is_set, what="the listener waiting")
        reader.listen("ocycle:reply:two")  # woken: the next BLMPOP names both lists
        admin.rpush("ocycle:reply:two", wire.dumps({"id": "x", "ok": True, "result": None}))
        wait_for(lambda: got.ids == ["x"], timeout=5, what="a reply on the new list")
        started = time.monotonic()
        reader.stop()
        assert time.monotonic() - started < 5.0 and not reader.connected.is_set()


def test_listener_on_a_redis_without_blmpop_pops_with_blpop_and_lpop(broker: str, admin: Any) -> None:
    server = Server(connect(broker))
    server.unknown.add("blmpop")  # Redis < 7.0
    got = Got()
    with reading(server, got, 0.05) as reader:
        reader.listen("ocycle:reply:old")
        wait_for(reader.connected.is_set, what="the listener connected")
        admin.rpush("ocycle:reply:old", *(wire.dumps({"id": i, "ok": True, "result": None}) for i in "abc"))
        wait_for(lambda: sorted(got.ids) == ["a", "b", "c"], what="every reply")
        assert server.calls["blpop"] >= 1 and reader.errors == 0


def test_listener_delivers_a_popped_reply_when_the_next_command_fails(broker: str, admin: Any) -> None:
    server = Server(connect(broker))
    server.unknown.add("blmpop")  # the BLPOP + LPOP path (Redis < 7.0)
    got = Got()
    with reading(server, got, 0.05) as reader:
        reader.listen("ocycle:reply:pop")
        wait_for(reader.connected.is_set, what="the listener connected")
        server.fail_next = "lpop"  # BLPOP took the first reply; the LPOP of the others fails
        admin.rpush("ocycle:reply:pop", *(wire.dumps({"id": i, "ok": True, "result": None}) for i in "abc"))
        wait_for(lambda: sorted(got.ids) == ["a", "b", "c"], what="every reply, the popped one first")
        assert got.ids[0] == "a" and reader.reconnects == 1


def test_a_reply_list_turned_into_another_type_is_taken_back_and_replies_come_again(
    broker: str, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    got = Got()
    with reading(connect(broker), got, 0.05) as reader:
        admin.set("ocycle:reply:mine", "not a list")  # a foreign writer's
        reader.listen("ocycle:reply:mine")
        wait_for(lambda: reader.retyped == 1, what="the key taken back")
        admin.rpush("ocycle:reply:mine", wire.dumps({"id": "g", "ok": True, "result": None}))
        wait_for(lambda: got.ids == ["g"], what="a reply on it again")
        assert any("held a string, not a list" in r.getMessage() for r in caplog.records)
