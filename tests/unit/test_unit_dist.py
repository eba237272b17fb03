"""Unit tests of the distributed path's own logic, on fakeredis: no redis-server, no celery worker.

``embedded_broker()`` serves fakeredis over TCP on a loopback port, so the executor's own clients (the
publisher's, the listener's) talk to it as to a Redis. A worker's reply is simulated by RPUSHing
``wire.dumps({"id": task_id, "ok": True, "result": ...})`` to ``ocycle:reply:<stream>``, the task id
taken from the message the producer LPUSHed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ocycle_dist as ocycle
from ocycle_dist.chunk import Chunk
from ocycle_dist.errors import ConfigError, DeliveryError, EncodeError, RemoteTaskError, SpoolError
from ocycle_dist.remote import listener, wire
from ocycle_dist.remote.protocol import claim_key, reply_key, token_of
from ocycle_dist.remote.publisher import publish
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.remote.settings import Settings
from ocycle_dist.remote.spool import Entry
from ocycle_dist.testing import free_port
from ocycle_dist.testing.embedded import embedded_broker
from tests.helpers import footprint, wait_for
from tests.unit.dist_helpers import (
    Collector,
    assert_accounted,
    decode,
    queued,
    reply,
    settled,
    spool_rows,
)

# ---- wire ------------------------------------------------------------------------------------------------


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any use of pickle fail loudly."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was used")

    for name in ("dumps", "loads", "dump", "load"):
        monkeypatch.setattr(pickle, name, refuse)


SCALARS = [b"", bytes(range(256)), "", "text \u00e9\u20ac", 0, -1, 2**63 - 1, -(2**63), 1.5, -0.0, None, True, False]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_wire_round_trips_scalars_with_their_type(no_pickle: None, value: Any) -> None:
    back = wire.loads(wire.dumps(value))
    assert back == value and type(back) is type(value)


def test_wire_round_trips_nested_values_bytes_staying_bytes(no_pickle: None) -> None:
    value = {"a": [b"\x00\xff", "x", [1, [2.5, None, {"deep": b"bin"}]]], 7: {"k": []}, "claim": wire.Claim("k:1")}
    back = wire.loads(wire.dumps(value))
    assert back == value
    assert type(back["a"][0]) is bytes and type(back["a"][1]) is str
    assert wire.loads(wire.dumps((1, b"t"))) == [1, b"t"]  # tuples come back as lists (msgpack arrays)


ARRAYS = [
    np.arange(24, dtype=np.int16).reshape(4, 3, 2),
    np.linspace(-1, 1, 17, dtype=np.float32),
    np.array([1.5, -2.25], dtype=">f8"),  # big-endian survives as such
    np.array([True, False, True]),
    np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    np.zeros((0, 3), dtype=np.uint8),
    np.array(42, dtype=np.int64),  # 0-d
    np.arange(20, dtype=np.int32)[::3],  # not contiguous
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.array([b"ab", b"c"], dtype="S2"),
    np.array(["\u00e9t\u00e9", "x"], dtype="<U3"),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_wire_round_trips_numpy_arrays_exactly(no_pickle: None, array: np.ndarray) -> None:
    back = wire.loads(wire.dumps({"chunk": array, "t0": 1.0}))["chunk"]
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype and back.dtype.str == array.dtype.str
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert wire.loads(wire.dumps(np.float32(0.5))) == 0.5  # numpy scalars become plain numbers


@pytest.mark.parametrize(
    "value",
    [
        np.array([1, "a", None], dtype=object),
        {"nested": [np.array([{}], dtype=object)]},
        object(),
        Path("/tmp"),
        1 + 2j,
        2**64,
        np.zeros(2, dtype=[("left", "<i2"), ("right", "<i2")]),
        np.ma.masked_array([1.0, 2.0], mask=[False, True]),
        np.zeros(2, dtype=np.dtype("<f4", metadata={"unit": "Pa"})),
        [np.zeros(2, dtype=[("x", "<f8")])],  # a list item, as a ListEmit chunk holds
    ],
    ids=[
        "object-array",
        "nested-object-array",
        "object",
        "path",
        "complex",
        "int-too-big",
        "structured",
        "masked",
        "dtype-metadata",
        "structured-item",
    ],
)
def test_wire_refuses_what_it_cannot_encode_without_pickle(no_pickle: None, value: Any) -> None:
    with pytest.raises(EncodeError):
        wire.dumps(value)


def test_wire_never_unpickles(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    with pytest.raises(Exception):  # noqa: B017  (msgpack's own error: the bytes are not msgpack)
        wire.loads(pickle.dumps(Exploit()))
    assert not marker.exists()


def test_numpy_dtypes_the_wire_carries_by_their_dtype_string_round_trip() -> None:
    for dtype in ("<M8[ns]", "<m8[s]", "|V4", ">i4", "<f2", "<c16", "|b1"):
        array = np.zeros(3, dtype=dtype)
        back = wire.loads(wire.dumps(array))
        assert back.dtype == array.dtype and back.dtype.str == dtype, dtype


STRUCTURED = np.dtype([("left", "<i2"), ("right", "<i2")])


def test_a_structured_dtype_is_refused_at_write_in_celery_mode(make: Any) -> None:
    emitter, _ = make(new=ocycle.NumpyIO)
    with pytest.raises(ocycle.FrameError, match="cannot be sent to a remote task: a structured dtype would lose"):
        emitter.write(np.zeros((4,), dtype=STRUCTURED))
    stats = emitter.stats()
    assert (stats.written, stats.emitted) == (0, 0)
    emitter.write(np.arange(4, dtype=np.int16))  # the stream goes on, with a dtype the wire carries
    assert emitter.stats().emitted == 1


def test_a_declared_structured_dtype_is_a_config_error_in_celery_mode(broker: str) -> None:
    with pytest.raises(ConfigError, match="a dtype the wire carries faithfully") as excinfo:
        ocycle.NumpyEmit("workers.tasks.echo", 4, mode="celery", broker=broker, dtype=STRUCTURED)
    assert excinfo.value.param == "dtype"
    local = ocycle.NumpyEmit(lambda v, t0: v, 4, dtype=STRUCTURED, mode="thread")
    with pytest.raises(ConfigError, match="a dtype the wire carries faithfully"):
        local.open(mode="celery", reopen=True)
    local.close()


def test_a_tap_checks_frames_for_its_remote_emitters(make: Any) -> None:
    remote, _ = make(new=ocycle.NumpyIO)
    seen: list[Any] = []
    local = ocycle.NumpyEmit(lambda v, t0: seen.append(v), 4)
    tap = ocycle.Tap(local, remote)
    with pytest.raises(ocycle.FrameError, match="structured dtype"):
        tap.write(np.zeros((4,), dtype=STRUCTURED))
    assert local.stats().written == 0 and remote.stats().written == 0
    with pytest.raises(ocycle.FrameError, match="masked array"):
        tap.write(np.ma.masked_array(np.zeros(4), mask=[0, 1, 0, 0]))


# ---- publisher -------------------------------------------------------------------------------------------


def make_entry(value: Any, *, stream: str = "pub", seq: int = 7, t0: float = 12.5) -> Entry:
    return Entry(str(uuid.uuid4()), "workers.tasks.echo", Chunk(stream, seq, t0, 4, 28), wire.dumps(value))


def test_published_message_is_a_celery_task_with_our_content_type_and_reply_list(broker: str, admin: Any) -> None:
    settings = Settings(broker_url=broker, queue="q-unit", task_time_limit=1.5, batch_max_chunks=0)
    entries = [make_entry(b"abcd", seq=i, t0=10.0 + i) for i in range(3)]
    client = connect(broker)
    try:
        publish(client, entries, settings, "tok123")
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
        assert (headers["task"], headers["id"], headers["root_id"]) == ("workers.tasks.echo", entry.id, entry.id)
        assert headers["retries"] == 0 and headers["timelimit"] == [1.5, None]  # [hard, soft]
        assert headers["ocycle"] == entry.meta._asdict()
        assert props["reply_to"] == "ocycle:reply:pub:tok123" == reply_key("pub", "tok123")
        assert token_of(props["reply_to"]) == "tok123"
        assert props["correlation_id"] == entry.id and props["body_encoding"] == "base64"
        assert props["delivery_info"]["routing_key"] == "q-unit"
    assert admin.keys("ocycle:chunk:*") == []  # small chunks travel inline


def test_a_chunk_above_claim_threshold_travels_by_claim_check(broker: str, admin: Any) -> None:
    settings = Settings(broker_url=broker, claim_threshold=100, result_ttl=60, batch_max_chunks=0)
    big, small = make_entry(bytes(range(256)) * 4), make_entry(b"x" * 50)
    client = connect(broker)
    try:
        publish(client, [big, small], settings, "tok")
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


# ---- listener --------------------------------------------------------------------------------------------


def test_listener_delivers_replies_counts_duplicates_and_survives_corrupt_entries(
    broker: str, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pending = {"a", "b", "c"}
    got: list[dict[str, Any]] = []

    def handler(record: dict[str, Any]) -> bool:  # as the executor's: True only the first time for an id
        if record.get("id") not in pending:
            return False
        pending.discard(record["id"])
        got.append(record)
        return True

    client = connect(broker)
    reader = listener.ReplyListener(client, poll=0.1)
    reader.attach(handler)
    reader.listen("ocycle:reply:lst")
    try:
        admin.rpush(
            "ocycle:reply:lst",
            wire.dumps({"id": "a", "ok": True, "result": 1}),
            b"\xc1 not msgpack",
            wire.dumps({"id": "a", "ok": True, "result": 1}),  # a redelivered task's second reply
            wire.dumps({"id": "b", "ok": False, "error": ["ValueError", "x"]}),
        )
        wait_for(lambda: len(got) == 2 and reader.unclaimed == 1, what="replies a and b, one duplicate")
        assert [r["id"] for r in got] == ["a", "b"] and got[0]["result"] == 1
        assert any("unreadable reply dropped" in r.getMessage() for r in caplog.records)
        admin.rpush("ocycle:reply:lst", wire.dumps({"id": "c", "ok": True, "result": [b"z"]}))
        wait_for(lambda: len(got) == 3, what="reply c after the corrupt entry")
        assert got[2]["result"] == [b"z"] and reader.unclaimed == 1
        assert reader.connected.is_set()
    finally:
        reader.stop()
        client.close()


class Server:
    """Stands in for the Redis server behind a client: its ``run_id``, INFO on or off, a command that fails once."""

    def __init__(self, client: Any) -> None:
        self.client, self.run_id, self.info_calls = client, "run-a", 0
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

    def info(self, section: str) -> dict[str, Any]:
        self.info_calls += 1
        return {"run_id": self.run_id}


def test_listener_tells_each_new_server_run_id_at_start_and_within_check_every(broker: str) -> None:
    client = connect(broker)
    server = Server(client)
    reader = listener.ReplyListener(server, poll=0.05, check_every=0.2)
    seen: list[str] = []
    reader.attach(lambda record: False, seen.append)
    reader.listen("ocycle:reply:srv")
    try:
        wait_for(lambda: seen == ["run-a"], what="the first server's run_id")
        wait_for(lambda: server.info_calls >= 3, what="the run_id read again while nothing changes")
        assert seen == ["run-a"] and reader.new_servers == 0  # told once per server, not per read
        server.run_id = "run-b"  # restarted without the listener seeing an error (redis-py retried)
        changed = time.monotonic()
        wait_for(lambda: seen == ["run-a", "run-b"], timeout=2, what="the new server's run_id")
        assert time.monotonic() - changed < 1.0 and reader.new_servers == 1
    finally:
        reader.stop()
        client.close()


@contextlib.contextmanager
def reading(source: Any, poll: float) -> Iterator[listener.ReplyListener]:
    """A reply listener on ``source`` (a client, or a :class:`Server` around one), stopped (its client closed) after."""
    reader = listener.ReplyListener(source, poll=poll)
    try:
        yield reader
    finally:
        reader.stop()


def test_listener_takes_every_waiting_reply_in_one_round_trip(broker: str, admin: Any) -> None:
    client = connect(broker)
    server = Server(client)
    with reading(server, 5.0) as reader:
        got: list[tuple[Any, int]] = []  # (id, round trips made when it was delivered)
        reader.attach(lambda record: got.append((record["id"], server.calls["blmpop"] + server.calls["lpop"])) is None)
        admin.rpush("ocycle:reply:many", *(wire.dumps({"id": i, "ok": True, "result": None}) for i in range(300)))
        reader.listen("ocycle:reply:many")
        wait_for(lambda: len(got) == 300, what="every reply")
        assert got == [(i, 1) for i in range(300)]


def test_a_reply_is_offered_first_to_the_handler_listening_to_its_key(broker: str, admin: Any) -> None:
    client = connect(broker)
    with reading(client, 0.05) as reader:
        offered: list[tuple[str, Any]] = []

        def handler(name: str) -> Any:
            def take(record: dict[str, Any]) -> bool:
                offered.append((name, record["id"]))
                return record["id"].startswith(name)

            return take

        handlers = {name: handler(name) for name in ("a", "b", "c")}
        for h in handlers.values():
            reader.attach(h)
        reader.listen("ocycle:reply:sa:t", handlers["a"])
        reader.listen("ocycle:reply:sc:t", handlers["c"])
        reader.listen("ocycle:reply:sc:t", handlers["c"])  # again: nothing changes
        admin.rpush("ocycle:reply:sc:t", wire.dumps({"id": "c1", "ok": True, "result": None}))
        admin.rpush("ocycle:reply:sa:t", wire.dumps({"id": "a1", "ok": True, "result": None}))
        admin.rpush("ocycle:reply:sa:t", wire.dumps({"id": "b1", "ok": True, "result": None}))  # not its owner's
        wait_for(lambda: len(offered) >= 4, what="the replies offered")
        by_reply = {i: [name for name, j in offered if j == i] for i in ("a1", "b1", "c1")}
        assert by_reply == {"c1": ["c"], "a1": ["a"], "b1": ["a", "b"]}  # the owner first, then the others in turn
        assert reader.unclaimed == 0


def test_listener_on_a_redis_without_blmpop_pops_with_blpop_and_lpop(broker: str, admin: Any) -> None:
    client = connect(broker)
    server = Server(client)
    server.unknown.add("blmpop")  # Redis < 7.0
    with reading(server, 0.05) as reader:
        got: list[Any] = []
        reader.attach(lambda record: got.append(record["id"]) is None)
        reader.listen("ocycle:reply:old")
        wait_for(reader.connected.is_set, what="the listener connected")
        admin.rpush("ocycle:reply:old", *(wire.dumps({"id": i, "ok": True, "result": None}) for i in "abc"))
        wait_for(lambda: sorted(got) == ["a", "b", "c"], what="every reply")
        assert server.calls["blpop"] >= 1 and reader.errors == 0


def test_listener_delivers_a_popped_reply_when_the_next_command_fails(broker: str, admin: Any) -> None:
    client = connect(broker)
    server = Server(client)
    server.unknown.add("blmpop")  # the BLPOP + LPOP path (Redis < 7.0)
    with reading(server, 0.05) as reader:
        got: list[Any] = []
        reader.attach(lambda record: got.append(record["id"]) is None)
        reader.listen("ocycle:reply:pop")
        wait_for(reader.connected.is_set, what="the listener connected")
        server.fail_next = "lpop"  # BLPOP took the first reply; the LPOP of the others fails
        admin.rpush("ocycle:reply:pop", *(wire.dumps({"id": i, "ok": True, "result": None}) for i in "abc"))
        wait_for(lambda: sorted(got) == ["a", "b", "c"], what="every reply, the popped one first")
        assert got[0] == "a" and reader.reconnects == 1


def test_listener_without_info_on_the_server_still_delivers(broker: str, admin: Any) -> None:
    client = connect(broker)  # fakeredis's TCP server: no INFO, and it drops the connection that asked
    reader = listener.ReplyListener(client, poll=0.05, check_every=0.1)
    got: list[Any] = []
    reader.attach(lambda record: got.append(record["id"]) is None, got.append)
    reader.listen("ocycle:reply:noinfo")
    try:
        admin.rpush("ocycle:reply:noinfo", wire.dumps({"id": "a", "ok": True, "result": None}))
        wait_for(lambda: got == ["a"], what="the reply")
        time.sleep(0.3)  # several check_every periods: INFO is not asked again, nothing else is told
        assert got == ["a"] and reader.run_id is None and reader.reconnects == 0
    finally:
        reader.stop()
        client.close()


# ---- executor --------------------------------------------------------------------------------------------


def test_a_reply_resolves_the_chunk_and_on_done_runs_once(make: Any, admin: Any) -> None:
    emitter, got = make()
    emitter.write(b"abcdefgh", t0=5.0)
    messages = wait_for(lambda: len(q := queued(admin)) == 2 and q, what="2 published messages")
    ids = {m["headers"]["ocycle"]["seq"]: m["headers"]["id"] for m in messages}
    executor = emitter.executor
    assert executor.pending == 2 and executor.spooled_bytes == 2 * len(wire.dumps(b"abcd"))
    reply(admin, emitter.stream, ids[1], result=[b"efgh", 5.0])
    reply(admin, emitter.stream, ids[0], result=[b"abcd", 5.0])
    assert emitter.wait(10)
    assert sorted(got.done) == [(0, [b"abcd", 5.0]), (1, [b"efgh", 5.0])]
    unclaimed = executor._listener.unclaimed
    reply(admin, emitter.stream, ids[0], result=[b"abcd", 5.0])  # the same task's second reply
    wait_for(lambda: executor._listener.unclaimed == unclaimed + 1, what="the duplicate counted")
    assert len(got.done) == 2 and got.errors == []
    wait_for(lambda: executor.pending == 0 and executor.spooled_bytes == 0, what="the spool emptied")
    assert executor.counts["published"] == 2 and executor.counts["resent"] == 0
    assert_accounted(emitter, 2)


def test_an_error_reply_reaches_on_error_as_remote_task_error(make: Any, admin: Any) -> None:
    emitter, got = make()
    emitter.write(b"abcd")
    (message,) = wait_for(lambda: queued(admin), what="a published message")
    reply(admin, emitter.stream, message["headers"]["id"], error=["ZeroDivisionError", "division by zero"])
    assert emitter.wait(10)
    ((seq, exc),) = got.errors
    assert seq == 0 and isinstance(exc, RemoteTaskError)
    assert (exc.type_name, exc.message) == ("ZeroDivisionError", "division by zero")
    assert str(exc) == "ZeroDivisionError: division by zero"
    assert got.done == [] and emitter.stats().failed == 1
    assert_accounted(emitter, 1)


def test_a_new_server_run_id_sends_every_unanswered_chunk_again_at_once(make: Any, admin: Any) -> None:
    emitter, got = make(settings={"resend_after": 600.0})
    emitter.write(b"abcdefghijkl")
    first = wait_for(lambda: len(q := queued(admin)) == 3 and q, what="3 published messages")
    ids = [m["headers"]["id"] for m in first]
    reply(admin, emitter.stream, ids[0], result="ok")
    wait_for(lambda: len(got.done) == 1, what="chunk 0 done")
    executor = emitter.executor
    executor._on_server("run-a")  # as the listener or the dispatcher reads it (fakeredis has no INFO)
    assert not executor._on_server("run-a") and len(queued(admin)) == 3  # the same server: nothing sent
    admin.delete("celery")  # the restarted server is empty
    assert executor._on_server("run-b")
    again = wait_for(lambda: queued(admin), timeout=2, what="the unanswered chunks sent again")
    assert sorted(m["headers"]["id"] for m in again) == sorted(ids[1:])  # chunk 0 was answered: not again
    assert [m["headers"]["retries"] for m in again] == [1, 1]
    for task_id in ids[1:]:
        reply(admin, emitter.stream, task_id, result="ok")
    assert emitter.wait(10)
    assert got.done_seqs == [0, 1, 2] and executor.counts["resent"] == 2
    assert_accounted(emitter, 3)


def test_no_reply_is_resent_then_fails_with_delivery_error(make: Any, admin: Any) -> None:
    emitter, got = make(settings={"resend_after": 0.3, "max_attempts": 3})
    started = time.monotonic()
    emitter.write(b"abcd")
    wait_for(lambda: got.errors, timeout=10, what="DeliveryError")
    elapsed = time.monotonic() - started
    messages = queued(admin)
    assert len(messages) == 3  # the first send and two more, same task id
    assert len({m["headers"]["id"] for m in messages}) == 1
    assert [m["headers"]["retries"] for m in messages] == [0, 1, 2]
    ((seq, exc),) = got.errors
    assert seq == 0 and isinstance(exc, DeliveryError)
    assert "after 3 sends" in str(exc) and "is a worker consuming queue 'celery'" in str(exc)
    assert 0.8 <= elapsed < 5.0  # three resend_after periods of 0.3 s
    counts = emitter.executor.counts
    assert (counts["published"], counts["resent"], counts["undelivered"]) == (3, 2, 1)
    assert emitter.executor.pending == 0
    assert_accounted(emitter, 1)


@pytest.mark.parametrize(("policy", "kept"), [("drop_newest", [0, 1]), ("drop_oldest", [2, 3])])
def test_a_full_spool_budget_drops_by_the_emitters_policy_and_counts(
    make: Any, admin: Any, policy: str, kept: list[int]
) -> None:
    per_chunk = len(wire.dumps(b"abcd"))
    emitter, got = make(settings={"spool_max_bytes": 2 * per_chunk}, policy=policy)
    for i in range(4):
        emitter.write(bytes([97 + i]) * 4)
    executor = emitter.executor
    assert emitter.stats().dropped == 2 and executor.counts["spool_dropped"] == 2
    assert executor.spooled_bytes == 2 * per_chunk and executor.pending == 2
    wait_for(lambda: {m["headers"]["ocycle"]["seq"] for m in queued(admin)} >= set(kept), what="kept chunks sent")
    for message in queued(admin):  # answer every message sent, evicted chunks' too
        reply(admin, emitter.stream, message["headers"]["id"], result="ok")
    assert emitter.wait(10)
    assert got.done_seqs == kept
    assert_accounted(emitter, 4)
    assert emitter.stats().done == 2 and emitter.stats().dropped == 2
    wait_for(lambda: executor.spooled_bytes == 0, what="the spool emptied")


def test_a_cancelled_chunk_leaves_the_spool(make: Any, admin: Any, tmp_path: Path) -> None:
    emitter, got = make(settings={"spool_dir": str(tmp_path)}, max_inflight=2, policy="drop_oldest")
    for i in range(3):
        emitter.write(bytes([97 + i]) * 4)
    assert emitter.stats().dropped == 1 and emitter.stats().in_flight == 2
    assert emitter.executor.pending == 2
    assert spool_rows(tmp_path, emitter.stream) == [1, 2]
    wait_for(lambda: {m["headers"]["ocycle"]["seq"] for m in queued(admin)} >= {1, 2}, what="chunks 1, 2 sent")
    for message in queued(admin):
        reply(admin, emitter.stream, message["headers"]["id"], result="ok")
    assert emitter.wait(10)
    assert got.done_seqs == [1, 2]
    wait_for(lambda: spool_rows(tmp_path, emitter.stream) == [], what="the spool emptied")
    assert_accounted(emitter, 3)


def test_a_chunk_over_max_chunk_bytes_is_a_failed_chunk_and_loses_nothing_else(make: Any, admin: Any) -> None:
    emitter, got = make(settings={"max_chunk_bytes": 2000}, size=1000, clip=False)  # a chunk ends with its write
    emitter.write(b"a" * 1000, t0=1.0)  # a chunk of 1000 bytes: fits
    emitter.write(b"b" * 500, t0=2.0)  # opens the next window
    emitter.write(b"c" * 2000, t0=3.0)  # completes it: 2500 elements, over the limit once encoded
    emitter.write(b"d" * 1000, t0=4.0)  # the stream goes on
    settled(emitter)
    ((seq, exc),) = got.errors
    assert seq == 1 and isinstance(exc, EncodeError)
    assert re.fullmatch(r"chunk of 250\d bytes exceeds max_chunk_bytes=2000", str(exc))
    stats = emitter.stats()
    assert (stats.written, stats.emitted, stats.failed, stats.in_flight, stats.buffered) == (4500, 3, 1, 2, 0)
    messages = wait_for(lambda: len(q := queued(admin)) == 2 and q, what="the two good chunks sent")
    assert [m["headers"]["ocycle"]["seq"] for m in messages] == [0, 2]
    for message in messages:
        reply(admin, emitter.stream, message["headers"]["id"], result="ok")
    assert emitter.wait(10)
    assert got.done_seqs == [0, 2]
    assert_accounted(emitter, 3)


def test_a_list_item_that_cannot_be_encoded_fails_its_chunk_only(broker: str, admin: Any) -> None:
    got = Collector()
    emitter = ocycle.ListEmit(
        "workers.tasks.echo",
        2,
        clip=True,
        mode="celery",
        settings=Settings(broker_url=broker),
        on_done=got.on_done,
        on_error=got.on_error,
    )
    try:
        emitter.write([1, object(), 3, 4], t0=1.0)  # the first chunk holds an object
        settled(emitter)
        ((seq, exc),) = got.errors
        assert seq == 0 and isinstance(exc, EncodeError) and "builtins.object cannot be encoded" in str(exc)
        (message,) = wait_for(lambda: queued(admin), what="the second chunk sent")
        assert message["headers"]["ocycle"]["seq"] == 1
        reply(admin, emitter.stream, message["headers"]["id"], result="ok")
        assert emitter.wait(10)
        assert got.done_seqs == [1]
        assert_accounted(emitter, 2)
    finally:
        executor = emitter.executor
        emitter.close(wait=False)
        executor.shutdown(wait=False, cancel_futures=True)


class RaisingExecutor(ocycle.executors.ChunkExecutor):
    """An executor whose submit() raises for odd chunks."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        from concurrent.futures import Future

        if kwargs["meta"].seq % 2:
            raise EncodeError("odd chunks cannot be encoded")
        future: Future[Any] = Future()
        future.set_result(args[0])
        return future

    wants_meta = True


def test_any_executor_whose_submit_raises_fails_that_chunk_and_the_stream_goes_on() -> None:
    got = Collector()
    b = ocycle.BufferEmit(
        lambda v, t0: v, 2, clip=True, mode=RaisingExecutor(), on_done=got.on_done, on_error=got.on_error
    )
    b.write(b"abcdefgh", t0=1.0)
    settled(b)
    assert got.done_seqs == [0, 2] and [(seq, str(exc)) for seq, exc in got.errors] == [
        (1, "odd chunks cannot be encoded"),
        (3, "odd chunks cannot be encoded"),
    ]
    assert_accounted(b, 4)


def die(executor: Any) -> None:
    """What a producer's exit does to an executor after shutdown(wait=False): its threads stop, the disk stays.

    In one test process the old executor would otherwise go on answering (and removing) the chunks the new
    one adopts; forgetting its in-memory state lets its dispatcher finish without touching the SQLite rows.
    """
    with executor._cond:
        executor._futures.clear()
        executor.spool._entries.clear()
        executor.spool.nbytes = 0
        executor._cond.notify_all()
    executor._dispatcher.join(10)
    assert not executor._dispatcher.is_alive()


def test_sqlite_spool_outlives_its_executor_and_a_new_emitter_adopts_it(make: Any, admin: Any, tmp_path: Path) -> None:
    settings = {"spool_dir": str(tmp_path), "resend_after": 60.0}
    first, got1 = make(stream="adopt-me", settings=settings)
    first.write(b"aaaabbbbcccc")
    messages = wait_for(lambda: len(q := queued(admin)) == 3 and q, what="3 published messages")
    ids = {m["headers"]["ocycle"]["seq"]: m["headers"]["id"] for m in messages}
    reply(admin, "adopt-me", ids[0], result="first")
    wait_for(lambda: got1.done_seqs == [0], what="chunk 0 done in the first producer")
    wait_for(lambda: spool_rows(tmp_path, "adopt-me") == [1, 2], what="chunk 0 out of the spool")
    old = first.executor
    first.close(wait=False)  # shutdown(wait=False): chunks 1 and 2 pending
    die(old)
    assert spool_rows(tmp_path, "adopt-me") == [1, 2]

    second, got2 = make(stream="adopt-me", settings=settings)
    assert second.stats().emitted == 2 and second.stats().in_flight == 2
    assert second.executor.pending == 2
    wait_for(lambda: len(queued(admin)) == 5, what="the adopted chunks sent again")
    resent = queued(admin)[3:]
    assert sorted(m["headers"]["id"] for m in resent) == sorted([ids[1], ids[2]])  # same task ids
    reply(admin, "adopt-me", ids[2], result="two")  # replies to the first producer's messages
    reply(admin, "adopt-me", ids[1], result="one")
    assert second.wait(10)
    assert sorted(got2.done) == [(1, "one"), (2, "two")]
    assert got1.done_seqs == [0]
    wait_for(lambda: spool_rows(tmp_path, "adopt-me") == [], what="the spool emptied")
    second.write(b"dddd")  # the stream goes on after the adopted chunks
    last = wait_for(lambda: len(q := queued(admin)) == 6 and q[-1], what="chunk 3 sent")
    assert last["headers"]["ocycle"]["seq"] == 3
    reply(admin, "adopt-me", last["headers"]["id"], result="three")
    assert second.wait(10)
    assert got2.done_seqs == [1, 2, 3] and got2.errors == []
    assert_accounted(second, 3)


def test_a_spool_dir_that_is_not_writable_is_a_config_error_naming_spool(broker: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = str(blocker / "spool")
    with pytest.raises(ConfigError, match=r"^spool=.*writable directory") as excinfo:
        ocycle.BufferEmit("t", 4, mode="celery", settings=Settings(broker_url=broker, spool_dir=bad))
    assert excinfo.value.param == "spool" and excinfo.value.value == bad
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit("t", 4, mode="celery", broker=broker, spool=bad)
    assert excinfo.value.param == "spool"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError) as excinfo:
            ocycle.BufferEmit("t", 4, mode="celery", broker=broker, spool=str(locked))
        assert excinfo.value.param == "spool"


@pytest.mark.parametrize(
    ("unix", "kombu", "path", "db"),
    [
        ("unix:///run/redis.sock", "redis+socket:///run/redis.sock", "/run/redis.sock", 0),
        ("unix://:pw@/run/redis.sock?db=3", "redis+socket://:pw@/run/redis.sock?virtual_host=3", "/run/redis.sock", 3),
        (
            "unix://u:p%40ss@/tmp/r.sock?db=1&health_check_interval=5",
            "redis+socket://u:p%40ss@/tmp/r.sock?virtual_host=1&health_check_interval=5",
            "/tmp/r.sock",
            1,
        ),
    ],
)
def test_a_unix_socket_url_is_spelled_for_kombu_and_back(unix: str, kombu: str, path: str, db: int) -> None:
    from ocycle_dist.remote.redis_client import kombu_url, redis_py_url
    from ocycle_dist.remote.worker import make_app

    assert kombu_url(unix) == kombu and redis_py_url(kombu) == unix
    assert kombu_url("redis://h:1/0") == "redis://h:1/0" == redis_py_url("redis://h:1/0")
    assert make_app(Settings(broker_url=unix)).conf.broker_url == kombu  # the workers' transport knows it
    for url in (unix, kombu):  # the producer takes either spelling
        client = connect(url)
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["path"], int(kwargs.get("db", 0))) == (path, db)
        client.close()


@pytest.mark.parametrize(
    "options",
    [
        {"broker": "redis//x"},
        {"broker": "localhost:6379"},
        {"settings": Settings(broker_url="http://localhost:6379/0")},
        {"settings": Settings(broker_url="redis://localhost:notaport/0")},
        {"broker": "sentinel://"},
        {"broker": "sentinel://a:26379;redis://b:6379/0"},
        {"broker": "sentinel://a:26379/zero;sentinel://b"},
        {"broker": "sentinel://a:notaport;sentinel://b"},
        {"broker": "sentinel://a:26379/0?master_name=x"},
    ],
    ids=[
        *("no-scheme-separator", "no-scheme", "http", "bad-port"),
        *("sentinel-no-host", "sentinel-and-redis", "sentinel-bad-db", "sentinel-bad-port", "sentinel-query"),
    ],
)
def test_a_malformed_broker_url_is_a_config_error_naming_broker(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit("workers.tasks.echo", 4, mode="celery", **options)
    assert excinfo.value.param == "broker"
    assert str(excinfo.value).startswith("broker=")


def test_broker_unreachable_at_start_spools_warns_once_and_sends_on_reconnect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocycle_dist.remote import dispatch as celery_executor  # where the publisher thread calls publish()

    attempts = []

    def counting_publish(*args: Any, **kwargs: Any) -> Any:
        attempts.append(time.monotonic())
        return celery_executor_publish(*args, **kwargs)

    celery_executor_publish = celery_executor.publish
    monkeypatch.setattr(celery_executor, "publish", counting_publish)
    caplog.set_level(logging.WARNING, logger="ocycle_dist")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    got = Collector()
    emitter = ocycle.BufferEmit(
        "workers.tasks.echo",
        4,
        clip=True,
        mode="celery",
        settings=Settings(broker_url=url, spool_dir=str(tmp_path), resend_after=30.0, batch_max_chunks=0),
        stream="offline",
        on_done=got.on_done,
        on_error=got.on_error,
    )
    executor = emitter.executor
    try:
        started = time.monotonic()
        for i in range(5):
            emitter.write(bytes([97 + i]) * 4)
        assert time.monotonic() - started < 0.5
        assert emitter.stats().in_flight == 5 and executor.pending == 5
        assert spool_rows(tmp_path, "offline") == [0, 1, 2, 3, 4]
        wait_for(lambda: len(attempts) >= 4, what="4 attempts to publish")
        assert not executor.broker_up.is_set()

        def warnings(text: str) -> list[str]:
            return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]

        assert len(warnings("Redis unreachable")) == 1
        with embedded_broker(port):
            admin = connect(url)
            try:
                messages = wait_for(lambda: len(q := queued(admin)) == 5 and q, what="the spooled chunks sent")
                assert [m["headers"]["ocycle"]["seq"] for m in messages] == [0, 1, 2, 3, 4]  # in order
                for message in messages:
                    reply(admin, "offline", message["headers"]["id"], result="ok")
                assert emitter.wait(10)
            finally:
                admin.close()
            assert len(warnings("Redis unreachable")) == 1
            assert len(warnings("Redis reachable again")) == 1
            assert got.done_seqs == [0, 1, 2, 3, 4]
            wait_for(lambda: spool_rows(tmp_path, "offline") == [], what="the spool emptied")
            assert_accounted(emitter, 5)
            emitter.close()
    finally:
        emitter.close(wait=False)
        executor.shutdown(wait=False, cancel_futures=True)
        executor._dispatcher.join(10)
    assert not executor._dispatcher.is_alive()


# ---- the durable spool: its directory deleted, the disk full, its footprint (issue 10) ------------------------


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_a_spool_directory_deleted_mid_run_is_written_again_and_a_restart_adopts_every_chunk(
    make: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    settings = {"spool_dir": str(directory), "resend_after": 60.0}  # no reply comes: all 300 stay pending
    first, got1 = make(stream="vanish", settings=settings, max_inflight=1000)
    for i in range(150):
        first.write(b"%04d" % i)
    shutil.rmtree(directory)  # e.g. a tmp cleaner
    for i in range(150, 300):
        first.write(b"%04d" % i)  # nothing raises
    assert len(warnings_of(caplog, "vanished")) == 1
    assert "writing it again with the 150 chunks pending" in warnings_of(caplog, "vanished")[0]
    assert spool_rows(directory, "vanish") == list(range(300))
    assert got1.errors == [] and first.stats().in_flight == 300
    old = first.executor
    first.close(wait=False)
    die(old)  # the producer stops; a new one starts on the same directory and stream
    second, _ = make(stream="vanish", settings=settings, max_inflight=1000)
    assert second.stats().emitted == 300 and second.stats().in_flight == 300  # was 0


def test_a_spool_directory_that_cannot_be_written_again_fails_the_chunk_with_a_spool_error(
    make: Any, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    emitter, got = make(settings={"spool_dir": str(directory), "resend_after": 60.0})
    emitter.write(b"aaaa")
    shutil.rmtree(directory)
    directory.write_text("a file where the directory was")
    emitter.write(b"bbbb")  # returns: the chunk fails
    settled(emitter)
    ((seq, exc),) = got.errors
    assert seq == 1 and isinstance(exc, SpoolError) and isinstance(exc, OSError)
    assert "vanished and cannot be written again" in str(exc)
    directory.unlink()
    emitter.write(b"cccc")  # the directory can be made again: written with every chunk pending
    assert spool_rows(directory, emitter.stream) == [0, 2]
    stats = emitter.stats()
    assert (stats.emitted, stats.in_flight, stats.failed, stats.dropped) == (3, 2, 1, 0)


def test_a_full_disk_fails_the_chunks_the_spool_cannot_keep_and_the_spool_recovers(
    make: Any, admin: Any, small_disk: Path
) -> None:
    emitter, got = make(settings={"spool_dir": str(small_disk), "resend_after": 60.0}, size=16384, max_inflight=1000)
    for i in range(400):  # 400 chunks of 16 KiB: more than the disk holds
        emitter.write(bytes([i % 256]) * 16384)  # never raises
    settled(emitter)
    stats = emitter.stats()
    assert stats.emitted == 400 and stats.dropped == 0
    assert 0 < stats.failed < 400 and stats.in_flight == 400 - stats.failed  # every chunk counted
    assert all(type(exc) is SpoolError and "the disk is full" in str(exc) for _, exc in got.errors), got.errors[:1]
    assert len(spool_rows(small_disk, emitter.stream)) == stats.in_flight  # what was kept is on disk
    messages = wait_for(lambda: len(q := queued(admin)) == stats.in_flight and q, what="the kept chunks sent")
    for message in messages:  # their results come back: the spool empties
        reply(admin, emitter.stream, message["headers"]["id"], result="ok")
    assert emitter.wait(10)
    wait_for(lambda: spool_rows(small_disk, emitter.stream) == [], what="the spool emptied on disk")
    failed = emitter.stats().failed
    for i in range(400, 410):
        emitter.write(bytes([i % 256]) * 16384)  # and keeps new chunks again
    settled(emitter)
    assert emitter.stats().failed == failed and emitter.stats().in_flight == 10
    assert spool_rows(small_disk, emitter.stream) == list(range(400, 410))


@pytest.mark.parametrize("policy", ["reject_newest", "drop_oldest"])
@pytest.mark.parametrize(
    ("budget", "size", "writes"), [(20000, 16, 400), (20000, 400, 300), (20000, 5000, 40), (1_000_000, 400, 3000)]
)
def test_spool_max_bytes_bounds_the_files_on_disk(
    make: Any, tmp_path: Path, policy: str, budget: int, size: int, writes: int
) -> None:
    settings = {"spool_dir": str(tmp_path), "spool_max_bytes": budget, "spool_policy": policy, "resend_after": 60.0}
    emitter, got = make(settings=settings, size=size, max_inflight=writes)
    chunk = len(wire.dumps(b"x" * size))
    bound = budget + min(budget // 16, 4 << 20) + 2 * chunk + 96 * 1024  # the README's
    peak = 0
    for i in range(writes):  # no reply comes: the budget fills up, then the policy drops
        emitter.write(bytes([i % 256]) * size)
        peak = max(peak, footprint(tmp_path))
    stats = emitter.stats()
    assert stats.dropped > 0 and stats.failed == 0 and got.errors == []
    assert stats.emitted == writes == stats.in_flight + stats.dropped
    assert stats.spooled_bytes <= budget + chunk + 4096
    assert peak <= bound, f"{peak} bytes on disk, over {bound} (budget {budget})"  # was 222 KB to 4.1 MB


# ---- Redis Sentinel URLs, the worker's transport ---------------------------------------------------------


def test_a_sentinel_url_gives_a_client_of_the_named_master(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "sentinel://:p%40ss@10.0.0.1:26380/2;sentinel://:p%40ss@10.0.0.2;sentinel://10.0.0.3:26381"
    client = connect(url, socket_timeout=3.0, master_name="audio")
    try:
        pool = client.connection_pool
        assert pool.service_name == "audio" and pool.is_master
        assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (2, "p@ss")
        assert pool.connection_kwargs["socket_timeout"] == 3.0
        hosts = [s.connection_pool.connection_kwargs for s in client.sentinel.sentinels]
        expected = [("10.0.0.1", 26380), ("10.0.0.2", 26379), ("10.0.0.3", 26381)]  # 26379 by default
        assert [(h["host"], h["port"]) for h in hosts] == expected
        assert all(h.get("password") is None for h in hosts)  # the password is the master's, not the sentinels'
    finally:
        client.close()
    monkeypatch.setenv("OCYCLE_SENTINEL_MASTER", "from-env")
    client = connect(url)
    assert client.connection_pool.service_name == "from-env"
    client.close()
    with pytest.raises(ConfigError) as excinfo:
        connect(url, master_name="")
    assert excinfo.value.param == "sentinel_master"


def test_sentinel_urls_are_redacted_part_by_part() -> None:
    from ocycle_dist.remote.redis_client import redact

    assert redact("sentinel://:pw@a:1/0;sentinel://:pw@b:2;sentinel://c:3") == (
        "sentinel://:***@a:1/0;sentinel://:***@b:2;sentinel://c:3"
    )
    with pytest.raises(ConfigError) as excinfo:
        connect("sentinel://:secret@a:1/x;sentinel://:secret@b")
    assert "secret" not in str(excinfo.value)


def test_the_worker_app_uses_the_repaired_transports_and_names_the_sentinel_master() -> None:
    from kombu.transport import get_transport_cls

    from ocycle_dist.remote import worker

    url = "sentinel://:pw@127.0.0.1:26379/0;sentinel://127.0.0.1:26380"
    app = worker.make_app(Settings(broker_url=url, sentinel_master="audio"))
    try:
        assert app.conf.broker_transport_options["master_name"] == "audio"
        assert get_transport_cls("redis") is worker.RedisTransport
        assert get_transport_cls("rediss") is worker.RedisTransport
        assert get_transport_cls("sentinel") is worker.SentinelTransport
        assert issubclass(worker.SentinelTransport.Channel, worker._ClosingChannel)
    finally:
        app.close()
    with pytest.raises(ConfigError) as excinfo:
        worker.make_app(Settings(broker_url="sentinel://a:1;redis://b"))
    assert excinfo.value.param == "broker"


def test_a_channel_whose_connection_was_closed_raises_a_connection_error() -> None:
    """What Celery's reconnect does to the task channel (see ocycle_dist.remote.worker._ClosingChannel): the
    transport is detached, then an ack or a restore builds a pool from it."""
    from types import SimpleNamespace

    import redis

    from ocycle_dist.remote.worker import RedisChannel

    channel = RedisChannel.__new__(RedisChannel)  # no connection needed to show it
    channel.connection = SimpleNamespace(client=None)
    with pytest.raises(redis.ConnectionError):
        channel._connparams()
