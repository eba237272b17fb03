"""The worker's chunk runtime (runner.run_items) on fakeredis: each chunk of a batch message or a drain's take run
as its task would be, each with its own outcome. Real processes (a worker killed mid-batch, draining, stock
workers): tests/integration/test_batching.py.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from celery import current_task

from ocycle_dist.chunk import Chunk
from ocycle_dist.remote import wire
from ocycle_dist.remote.protocol import BATCH_TASK, claim_key, mac_key, reply_key, unseal
from ocycle_dist.remote.replies import ReplyWriter
from ocycle_dist.remote.runner import run_items
from ocycle_dist.remote.settings import Settings
from ocycle_dist.remote.worker import ChunkTask, make_app
from tests.support.dist_helpers import TOKEN


@pytest.fixture
def admin() -> Iterator[Any]:
    yield fakeredis.FakeRedis()


# ---- the worker runs a batch -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app() -> Any:
    app = make_app(Settings(broker_url="redis://127.0.0.1:9/0"), name=f"unit-batch-{uuid.uuid4().hex[:6]}")

    @app.task(name="u.double")
    def double(chunk: bytes, t0: float) -> bytes:
        return chunk * 2

    @app.task(name="u.fail_on_b")
    def fail_on_b(chunk: bytes, t0: float) -> bytes:
        if chunk.startswith(b"b"):
            raise ValueError(f"{chunk!r} starts with b")
        return chunk

    @app.task(name="u.meta")
    def with_meta(chunk: bytes, t0: float, meta: Any) -> list[Any]:
        return [meta.stream, meta.seq, t0]

    @app.task(name="u.unencodable")
    def unencodable(chunk: bytes, t0: float) -> Any:
        return object()

    @app.task(name="u.request", bind=True)
    def own_request(self: Any, chunk: bytes, t0: float) -> list[Any]:
        r, current = self.request, current_task._get_current_object()
        return [r.id, r.correlation_id, r.get("ocycle")["seq"], r.headers, current is self, r.called_directly]

    class Wrapped(ChunkTask):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return ["wrapped", super().__call__(*args, **kwargs)]

    @app.task(name="u.wrapped", base=Wrapped)
    def wrapped(chunk: bytes, t0: float, meta: Any) -> list[Any]:
        return [chunk, meta.seq]

    return app


def run(app: Any, admin: Any, items: list[list[Any]]) -> dict[str, dict[str, Any]]:
    replies = ReplyWriter(admin, 60, "")
    run_items(app, admin, items, replies, hostname="unit@host", delivery_info={"routing_key": "celery"},
              reply_to=reply_key(TOKEN))  # fmt: skip
    assert replies.send()
    out = {}
    for key in admin.keys(reply_key(TOKEN)):
        for raw in admin.lrange(key, 0, -1):
            record = unseal(wire.loads(raw), mac_key("", TOKEN))
            assert record is not None, "every reply is sealed with the producer token's key"
            out[record["id"]] = {**record, "key": key.decode()}
    return out


def item(task: str, chunk: Any, seq: int, *, stream: str = "s", expires: float | None = None) -> list[Any]:
    return [f"id{seq}", task, chunk, 100.0 + seq, Chunk(stream, seq, 100.0 + seq, 4, 0, False)._asdict(), expires]


def test_each_chunk_of_a_batch_gets_its_own_outcome_in_the_producers_reply_list(app: Any, admin: Any) -> None:
    got = run(app, admin, [item("u.double", b"ab", 0, stream="x"), item("u.meta", b"cd", 1, stream="y")])
    assert got["id0"]["ok"] and got["id0"]["result"] == b"abab" and got["id0"]["key"] == reply_key(TOKEN)
    assert got["id1"]["result"] == ["y", 1, 101.0] and got["id1"]["key"] == reply_key(TOKEN)


def test_a_failing_chunk_does_not_fail_its_neighbours(app: Any, admin: Any) -> None:
    items = [item("u.fail_on_b", c, i) for i, c in enumerate([b"aa", b"bb", b"cc"])]
    got = run(app, admin, items)
    assert got["id0"]["result"] == b"aa" and got["id2"]["result"] == b"cc"
    assert got["id1"]["ok"] is False and got["id1"]["error"] == ["ValueError", "b'bb' starts with b"]


def test_unknown_expired_unencodable_and_lost_claims_are_each_that_chunks_error(app: Any, admin: Any) -> None:
    admin.set(claim_key("id4"), wire.dumps(b"claimed"))
    admin.set("some:secret", wire.dumps(b"the crown jewels"))
    items = [
        item("no.such.task", b"a", 0),
        item("u.double", b"b", 1, expires=time.time() - 1),
        item("u.unencodable", b"c", 2),
        [*item("u.double", wire.Claim(claim_key("id3")), 3)],  # its own claim, gone from Redis
        [*item("u.double", wire.Claim(claim_key("id4")), 4)],
        item(BATCH_TASK, b"e", 5),  # a batch inside a batch is refused
        item("u.double", b"f", 6),
        [*item("u.double", wire.Claim("some:secret"), 7)],  # another key: refused, never read
    ]
    got = run(app, admin, items)
    assert got["id0"]["error"] == ["NotRegistered", "no worker has a task named 'no.such.task'"]
    assert got["id1"]["expired"] is True
    assert got["id2"]["error"][0] == "EncodeError" and "cannot be sent back" in got["id2"]["error"][1]
    assert got["id3"]["error"][0] == "ClaimGoneError"  # its producer sends it again
    assert got["id4"]["result"] == b"claimedclaimed"
    assert got["id7"]["error"][0] == "EncodeError" and "not this task's chunk" in got["id7"]["error"][1]
    assert b"crown" not in repr(got["id7"]).encode()
    assert got["id5"]["error"][0] == "NotRegistered"
    assert got["id6"]["result"] == b"ff"


def test_each_chunk_runs_in_a_request_of_its_own_not_in_the_draining_messages(app: Any, admin: Any) -> None:
    task = app.tasks["u.request"]
    task.push_request(id="parent", correlation_id="parent", headers={"x": 1}, called_directly=False)
    try:  # as drain() runs them: in the after_return of the message that ran first
        got = run(app, admin, [item("u.request", b"a", 0), item("u.request", b"b", 1)])
    finally:
        task.pop_request()
    for seq in (0, 1):
        meta = item("u.request", b"", seq)[4]
        assert got[f"id{seq}"].get("result") == [f"id{seq}", f"id{seq}", seq, {"ocycle": meta}, True, False]


def test_a_task_class_with_its_own_call_is_called_through_it(app: Any, admin: Any) -> None:
    got = run(app, admin, [item("u.wrapped", b"a", 0), item("u.wrapped", b"b", 1)])
    assert got["id0"]["result"] == ["wrapped", [b"a", 0]] and got["id1"]["result"] == ["wrapped", [b"b", 1]]


def test_whether_a_task_takes_meta_is_looked_up_once(app: Any, admin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = inspect.signature

    def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counting)
    app.tasks["u.meta"].__dict__.pop("_ocycle_wants_meta", None)
    got = run(app, admin, [item("u.meta", b"x", i) for i in range(5)])
    assert [got[f"id{i}"]["result"] for i in range(5)] == [["s", i, 100.0 + i] for i in range(5)]
    assert len(calls) == 1


def test_a_chunk_over_the_workers_size_limit_fails_alone(admin: Any) -> None:
    settings = Settings(broker_url="redis://127.0.0.1:9/0", max_chunk_bytes=10)
    app = make_app(settings, name=f"unit-strict-{uuid.uuid4().hex[:6]}")

    @app.task(name="u.len")
    def length(chunk: bytes, t0: float) -> int:
        return len(chunk)

    got = run(app, admin, [item("u.len", b"x" * 50, 0), item("u.len", b"x" * 5, 1)])
    assert got["id0"]["error"][0] == "EncodeError" and got["id1"]["result"] == 5
