"""Batched tasks (``ocycle_dist.batched``) on real workers: a worker of ``make_app`` runs the chunks of a batch
message, or of a drain, that name such a task in one call (each chunk with its own outcome); a stock Celery
worker runs the same task one chunk at a time, with the same results."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from types import SimpleNamespace
from typing import Any

import pytest
from celery.app.task import Context

import ocycle_dist as ocycle
from ocycle_dist.chunk import Chunk
from ocycle_dist.errors import RemoteTaskError
from ocycle_dist.remote import drain, wire
from ocycle_dist.remote.pending import Entry
from ocycle_dist.remote.protocol import mac_key, reply_key, unseal
from ocycle_dist.remote.publisher import publish
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.remote.settings import Settings
from ocycle_dist.remote.worker import make_app
from ocycle_dist.testing import RedisServer, Worker
from tests.support.helpers import owned, wait_for

pytestmark = pytest.mark.usefixtures("redis_server_required")
TASK = "contract.batch_reverse"


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


class Outcomes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: dict[tuple[str, int], Any] = {}
        self.errors: dict[tuple[str, int], BaseException] = {}
        self.calls = 0

    def on_done(self, result: Any, meta: ocycle.Chunk) -> None:
        with self.lock:
            self.calls += 1
            self.results[meta.stream, meta.seq] = result

    def on_error(self, exc: BaseException, meta: ocycle.Chunk) -> None:
        with self.lock:
            self.calls += 1
            self.errors[meta.stream, meta.seq] = exc


def chunk(i: int) -> bytes:
    return (b"b%03d" if i % 7 == 3 else b"a%03d") % i


def check(got: Outcomes, stream: str, n: int) -> None:
    assert got.calls == n, "one outcome per chunk"
    assert {seq: r for (s, seq), r in got.results.items() if s == stream} == {
        i: chunk(i)[::-1] for i in range(n) if i % 7 != 3
    }
    assert sorted(seq for s, seq in got.errors if s == stream) == [i for i in range(n) if i % 7 == 3]
    exc = got.errors[stream, 3]
    assert isinstance(exc, RemoteTaskError) and exc.type_name == "ValueError" and "b003" in exc.message


def test_a_backlog_of_a_batched_task_runs_in_calls_of_whole_batch_messages(stack: ExitStack) -> None:
    redis = stack.enter_context(RedisServer())
    admin = connect(redis.url)
    got, stream, n = Outcomes(), f"bt-{uuid.uuid4().hex[:6]}", 120
    settings = Settings(broker_url=redis.url, batch_max_chunks=40)
    emitter = ocycle.BufferEmit(TASK, 4, clip=True, mode="celery", settings=settings, stream=stream,
                                on_done=got.on_done, on_error=got.on_error)  # fmt: skip
    for i in range(n):  # no worker yet: a backlog, sent as batch messages of 40 chunks
        emitter.write(chunk(i))
    executor = emitter.executor
    assert executor is not None
    wait_for(lambda: executor.counts["published"] == n, 10, "the backlog published")
    worker = Worker(redis.url, name="batched", include=("tests.support.tasks",))
    stack.callback(worker.stop)
    worker.start()
    assert emitter.close(timeout=60) == 0
    check(got, stream, n)
    calls = [int(c) for c in admin.lrange(f"ocycle:test:calls:{stream}", 0, -1)]
    assert sum(calls) == n and max(calls) == 40, calls  # each batch message in one call
    assert len(calls) <= n // 40 + 2, calls


def test_a_stock_worker_runs_a_batched_task_one_chunk_at_a_time(stack: ExitStack) -> None:
    redis = stack.enter_context(RedisServer())
    worker = Worker(redis.url, name="stock", app="tests.support.stock_app")
    stack.callback(worker.stop)
    worker.start()
    got, stream, n = Outcomes(), f"st-{uuid.uuid4().hex[:6]}", 30
    off = Settings(broker_url=redis.url, batch_max_chunks=0)  # a stock worker has no batch task
    emitter = ocycle.BufferEmit(TASK, 4, clip=True, mode="celery", settings=off, stream=stream,
                                on_done=got.on_done, on_error=got.on_error)  # fmt: skip
    for i in range(n):
        emitter.write(chunk(i))
    assert emitter.close(timeout=60) == 0
    check(got, stream, n)  # the stock task asserts it is given one chunk a call


def test_a_drain_runs_the_taken_chunks_of_a_batched_task_in_one_call(stack: ExitStack) -> None:
    redis = stack.enter_context(RedisServer())
    settings = Settings(broker_url=redis.url, worker_drain=16)
    app = make_app(settings, name=f"drain-batched-{uuid.uuid4().hex[:6]}")
    calls: dict[str, list[list[bytes]]] = {"batched": [], "plain": []}

    @app.task(name="i.batched")
    @ocycle.batched
    def upper(chunks: list[bytes], t0s: list[float]) -> list[Any]:
        calls["batched"].append(list(chunks))
        return [c.upper() for c in chunks]

    @app.task(name="i.plain")
    def plain(chunk: bytes, t0: float) -> bytes:
        calls["plain"].append([chunk])
        return chunk

    client = connect(redis.url)
    token, stream = "drainbatch01", f"s-{uuid.uuid4().hex[:6]}"
    names = ["i.plain" if i % 5 == 4 else "i.batched" for i in range(40)]
    entries = [Entry(f"id{i}", name, Chunk(stream, i, float(i), 4, 0), wire.dumps(b"c%03d" % i))
               for i, name in enumerate(names)]  # fmt: skip
    publish(
        client, owned(entries, Settings(broker_url=redis.url, batch_max_chunks=0), token)
    )  # a message each: a fleet
    request = Context(hostname="t@h", delivery_info={"routing_key": settings.queue}, called_directly=False,
                      is_eager=False, timelimit=None)  # fmt: skip
    assert drain.drain(SimpleNamespace(app=app, request=request), client, settings, 0.0) == 40
    # takes of 16 messages: 13, 13 and 6 of them name the batched task, each take's in one call
    assert [len(c) for c in calls["batched"]] == [13, 13, 6], calls
    assert [len(c) for c in calls["plain"]] == [1] * 8
    assert sorted(x for c in calls["batched"] + calls["plain"] for x in c) == [b"c%03d" % i for i in range(40)]
    records = [unseal(wire.loads(r), mac_key("", token)) for r in client.lrange(reply_key(token), 0, -1)]
    assert sorted((r["id"], r["result"]) for r in records if r) == sorted(
        (f"id{i}", b"C%03d" % i if names[i] == "i.batched" else b"c%03d" % i) for i in range(40)
    )
