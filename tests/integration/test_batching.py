"""Batching against real processes: each chunk of a batch has its own outcome, a failing chunk fails alone,
a worker killed whole mid-batch (or mid-drain) costs no chunk and runs none twice as far as the producer sees
(``on_done`` exactly once per chunk), and stock Celery workers still run the project's messages."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from types import SimpleNamespace
from typing import Any

import pytest
import redis as redis_py
from celery.app.task import Context

import ocycle_dist as ocycle
from ocycle_dist.chunk import Chunk
from ocycle_dist.errors import RemoteTaskError
from ocycle_dist.remote import drain, replies, wire
from ocycle_dist.remote.pending import Entry
from ocycle_dist.remote.protocol import mac_key, reply_key, unseal
from ocycle_dist.remote.publisher import publish
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.remote.settings import Settings
from ocycle_dist.remote.worker import make_app
from ocycle_dist.testing import RedisServer, Worker
from tests.support.helpers import owned, wait_for

pytestmark = pytest.mark.usefixtures("redis_server_required")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def start_worker(stack: ExitStack, url: str, name: str, **options: Any) -> Worker:
    options.setdefault("include", ("tests.support.tasks",))
    w = Worker(url, name=name, **options)
    stack.callback(w.stop)
    return w.start()


class Outcomes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: Counter[tuple[str, int]] = Counter()
        self.results: dict[tuple[str, int], Any] = {}
        self.errors: dict[tuple[str, int], BaseException] = {}

    def on_done(self, result: Any, meta: ocycle.Chunk) -> None:
        with self.lock:
            self.done[meta.stream, meta.seq] += 1
            self.results[meta.stream, meta.seq] = result

    def on_error(self, exc: BaseException, meta: ocycle.Chunk) -> None:
        with self.lock:
            self.errors[meta.stream, meta.seq] = exc


def runs(admin: Any, stream: str) -> Counter[int]:
    return Counter({int(k): int(v) for k, v in admin.hgetall(f"ocycle:test:runs:{stream}").items()})


def test_a_backlog_goes_in_batches_and_each_chunk_gets_its_own_outcome(stack: ExitStack) -> None:
    redis = stack.enter_context(RedisServer())
    got, stream = Outcomes(), f"b-{uuid.uuid4().hex[:6]}"
    settings = Settings(broker_url=redis.url, batch_max_chunks=16)
    emitter = ocycle.BufferEmit("contract.fail_on_b", 4, clip=True, mode="celery", settings=settings, stream=stream,
                                on_done=got.on_done, on_error=got.on_error)  # fmt: skip
    chunks = [(b"b%03d" if i % 10 == 3 else b"a%03d") % i for i in range(200)]
    for chunk in chunks:  # no worker yet: a backlog
        emitter.write(chunk)
    executor = emitter.executor
    assert executor is not None
    wait_for(lambda: executor.counts["published"] == 200, 10, "the backlog published")
    start_worker(stack, redis.url, "batcher")
    assert emitter.close(timeout=60) == 0
    assert executor.counts["batched"] >= 150 and executor.counts["messages"] < 60, executor.counts
    assert sorted(seq for _, seq in got.done) == [i for i in range(200) if i % 10 != 3]
    assert set(got.done.values()) == {1}
    assert all(got.results[stream, i] == chunks[i] for i in range(200) if i % 10 != 3)
    assert sorted(seq for _, seq in got.errors) == [i for i in range(200) if i % 10 == 3]  # a failing chunk fails alone
    exc = got.errors[stream, 3]
    assert isinstance(exc, RemoteTaskError) and exc.type_name == "ValueError" and "b003" in exc.message
    stats = emitter.stats()
    assert (stats.done, stats.failed, stats.in_flight) == (180, 20, 0)


def test_a_fleet_of_producers_with_one_chunk_each_is_drained_by_the_worker(stack: ExitStack) -> None:
    redis = stack.enter_context(RedisServer())
    worker = start_worker(stack, redis.url, "drainer")
    got = Outcomes()
    emitters = [ocycle.BufferEmit("contract.reverse", 4, clip=True, mode="celery", broker=redis.url, max_inflight=1,
                                  policy="block", stream=f"fleet{i}-{uuid.uuid4().hex[:4]}", on_done=got.on_done,
                                  on_error=got.on_error) for i in range(20)]  # fmt: skip

    def produce(emitter: ocycle.BufferEmit) -> None:
        for k in range(30):
            emitter.write(b"%04d" % k)  # blocks while its previous chunk is in flight

    threads = [threading.Thread(target=produce, args=(e,)) for e in emitters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in emitters:
        assert e.close(timeout=30) == 0
    assert len(got.done) == 600 and set(got.done.values()) == {1} and not got.errors
    assert all(got.results[key] == (b"%04d" % key[1])[::-1] for key in got.done)
    log = worker.log.read_text()
    succeeded = log.count("succeeded in")  # Celery logs each message it ran itself; drained ones it does not
    assert succeeded < 600, f"every chunk went through Celery's own path ({succeeded})"
    print(f"\n[fleet] Celery ran {succeeded} of 600 messages itself; the pool process drained the rest")


@pytest.mark.parametrize("how", ["batch", "drain"])
def test_a_worker_killed_whole_mid_batch_costs_no_chunk_and_on_done_runs_once_each(stack: ExitStack, how: str) -> None:
    redis = stack.enter_context(RedisServer(password="batch-pw"))
    victim = start_worker(stack, redis.url, "victim")
    admin = connect(redis.url)
    got = Outcomes()
    producers: list[threading.Thread] = []
    n = 120
    if how == "batch":  # one producer with a backlog: batch messages of 40 chunks of 30 ms
        streams = [f"kb-{uuid.uuid4().hex[:6]}"]
        emitters = [ocycle.BufferEmit("contract.counted_sleep", 4, clip=True, mode="celery", stream=streams[0],
                                      settings=Settings(broker_url=redis.url, batch_max_chunks=40),
                                      on_done=got.on_done, on_error=got.on_error)]  # fmt: skip
        for _ in range(n):
            emitters[0].write(b"0.03")
    else:  # a fleet, one chunk in flight each, chunks short enough to be drained (10 ms)
        streams = [f"kd{i}-{uuid.uuid4().hex[:6]}" for i in range(12)]
        emitters = [ocycle.BufferEmit("contract.counted_sleep", 4, clip=True, mode="celery", broker=redis.url,
                                      stream=s, max_inflight=1, policy="block", on_done=got.on_done,
                                      on_error=got.on_error) for s in streams]  # fmt: skip

        def produce(emitter: ocycle.BufferEmit) -> None:
            for _ in range(n // len(streams)):
                emitter.write(b"0.01")

        producers = [threading.Thread(target=produce, args=(e,), daemon=True) for e in emitters]
        for t in producers:
            t.start()
    wait_for(lambda: sum(sum(runs(admin, s).values()) for s in streams) >= 25, 30, "the victim running chunks")
    victim.kill(signal.SIGKILL)  # main process and pool at once: nothing acknowledged, nothing said
    killed = time.monotonic()
    assert victim.wait_exit(10) is not None
    start_worker(stack, redis.url, "rescuer")
    for t in producers:
        t.join(60)
    for e in emitters:
        assert e.close(timeout=60) == 0
    took = time.monotonic() - killed
    expected = {(s, i) for s in streams for i in range(n // len(streams))}
    assert set(got.done) == expected and set(got.done.values()) == {1}, "on_done exactly once per chunk"
    assert not got.errors
    recovered = sum(e.executor.counts["recovered"] if e.executor else 0 for e in emitters)
    ran_twice = sum(1 for s in streams for v in runs(admin, s).values() if v > 1)
    assert took < 10.0 + n * 0.03, took
    print(f"\n[{how}] all {n} chunks done {took:.1f} s after the kill; {recovered} sent again by the lapsed leases,"
          f" {ran_twice} ran twice on the workers (replies deduplicated by chunk)")  # fmt: skip


def test_a_stock_celery_worker_runs_the_projects_plain_messages(stack: ExitStack) -> None:
    redis = stack.enter_context(RedisServer())
    start_worker(stack, redis.url, "stock", app="tests.support.stock_app", include=())
    got = Outcomes()
    off = Settings(broker_url=redis.url, batch_max_chunks=0)  # how to feed workers without the batch task
    emitter = ocycle.BufferEmit("contract.reverse", 4, clip=True, mode="celery", settings=off,
                                on_done=got.on_done, on_error=got.on_error)  # fmt: skip
    for i in range(50):
        emitter.write(b"%04d" % i)
    assert emitter.close(timeout=30) == 0
    assert len(got.done) == 50 and not got.errors
    assert all(got.results[key] == (b"%04d" % key[1])[::-1] for key in got.done)
    # with batching on (the default), a lone chunk still goes as a plain message: the stock worker runs it
    lone = ocycle.BufferEmit("contract.reverse", 4, clip=True, mode="celery", broker=redis.url,
                             on_done=got.on_done, on_error=got.on_error)  # fmt: skip
    lone.write(b"wxyz")
    assert lone.close(timeout=30) == 0
    assert got.results[lone.stream, 0] == b"zyxw"
    # a batch message is a task it does not know: its NotRegistered reply makes the producer send those chunks
    # again, one message each, at once (not after resend_after), and stop batching
    backlog = ocycle.BufferEmit("contract.reverse", 4, clip=True, mode="celery", settings=Settings(
        broker_url=redis.url, queue="held"), on_done=got.on_done, on_error=got.on_error)  # fmt: skip
    for i in range(10):
        backlog.write(b"%04d" % i)
    executor = backlog.executor
    assert executor is not None
    wait_for(lambda: executor.counts["published"] == 10, 10, "the backlog published")
    assert executor.counts["batched"] >= 2
    started = time.monotonic()
    start_worker(stack, redis.url, "stock-held", app="tests.support.stock_app", include=(), queues="held")
    assert backlog.close(timeout=30) == 0
    assert time.monotonic() - started < 20
    assert [got.results[backlog.stream, i] for i in range(10)] == [(b"%04d" % i)[::-1] for i in range(10)]
    assert not got.errors and executor.counts["resent"] >= 2
    backlog2 = [backlog.stream, executor.counts]
    print(f"\n[stock] batch fallback: {backlog2}")


class CountingRedis(redis_py.Redis):  # type: ignore[misc]
    """A client that notes how many messages each take of the drain script returned."""

    takes: list[int]

    def parse_response(self, connection: Any, command_name: str, **options: Any) -> Any:
        got = super().parse_response(connection, command_name, **options)
        if command_name == "EVALSHA":
            self.takes.append(len(got[0]) if got else 0)
        return got


def test_drain_takes_a_backlog_of_batch_messages_a_few_megabytes_at_a_time(
    stack: ExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = stack.enter_context(RedisServer())
    # chunks inline in their batch messages (not by claim check as by default): large messages, what this is about
    settings = Settings(broker_url=redis.url, batch_claim_threshold=1 << 20)
    app = make_app(settings, name=f"drain-bytes-{uuid.uuid4().hex[:6]}")

    leased: dict[str, set[str]] = {}  # task id -> the delivery tags its pool process's lease named as it ran

    @app.task(name="i.length", bind=True)
    def length(self: Any, chunk: bytes, t0: float) -> int:
        lease = wire.loads(client.get(f"ocycle:lease:t@h/{os.getpid()}"))
        leased[self.request.id] = {t.decode() if isinstance(t, bytes) else t for t in lease["tags"]}
        return len(chunk)

    client = CountingRedis.from_url(redis.url)
    client.takes = []
    token, stream = "drainbytes01", f"s-{uuid.uuid4().hex[:6]}"
    entries = [Entry(f"id{i}", "i.length", Chunk(stream, i, float(i), 32768, 0), wire.dumps(b"%05d" % i * 6554))
               for i in range(256)]  # fmt: skip
    sent = publish(client, owned(entries, settings, token))
    assert len(sent) >= 8  # batch messages of 1 MiB of chunks (1.4 MB in their envelope)
    monkeypatch.setattr(drain, "DRAIN_SECONDS", 60.0)  # a slow machine: all of it, however long it takes
    request = Context(hostname="t@h", delivery_info={"routing_key": settings.queue}, called_directly=False,
                      is_eager=False, timelimit=None)  # fmt: skip
    assert drain.drain(SimpleNamespace(app=app, request=request), client, settings, 0.0) == 256
    # two messages a take at most (~2 MB: Redis is never busy with one take for long), and on while more wait
    assert len(client.takes) >= 4 and max(client.takes) <= 2 and sum(client.takes) == len(sent), client.takes
    replies = client.lrange(reply_key(token), 0, -1)
    records = [unseal(wire.loads(r), mac_key("", token)) for r in replies]
    assert sorted((r["id"], r["result"]) for r in records if r) == sorted((f"id{i}", 32770) for i in range(256))
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0  # all acked
    # while the next take was made ahead, the lease named both: every chunk's message was named as it ran
    assert all(e.tag in leased[e.id] for e in entries)


def test_a_take_says_how_many_wait_only_when_it_stopped_at_its_count_or_byte_limit(stack: ExitStack) -> None:
    redis = stack.enter_context(RedisServer())
    client = connect(redis.url)
    script = client.register_script(drain.TAKE)
    keys = ["q", "unacked", "unacked_index", "ocycle:lease:t@h/1", "ocycle:workers"]

    def take(count: int, budget: int, held: tuple[list[str], list[str]] = ([], [])) -> list[Any]:
        return script(keys=keys, args=[count, time.time(), "t@h/1", 5000, budget, len(held[0]), *held[0], *held[1]])

    def message(i: int, size: int = 10) -> bytes:
        props = {"correlation_id": f"id{i}", "delivery_tag": f"tag{i}"}
        return json.dumps({"body": "x" * size, "properties": props}).encode()

    client.lpush("q", *[message(i) for i in range(8)])
    messages, _, waiting, ids, by_bytes = take(5, 1 << 20)
    assert len(messages) == 5 and waiting == 3 and ids == [b"id0", b"id1", b"id2", b"id3", b"id4"]
    assert by_bytes == 0  # cut at its count: the drain takes the next after these ran
    messages, _, waiting, _, _ = take(5, 1 << 20, (["id0"], ["tag0"]))
    assert len(messages) == 3 and waiting == 0  # the queue ran dry: the drain ends
    lease = wire.loads(client.get("ocycle:lease:t@h/1"))
    assert lease["tasks"] == ["id0", "id5", "id6", "id7"] and lease["tags"] == ["tag0", "tag5", "tag6", "tag7"]
    assert client.hlen("unacked") == 8 and client.zcard("unacked_index") == 8
    client.lpush("q", *[message(i, 1000) for i in range(8, 12)])
    messages, _, waiting, _, by_bytes = take(64, 1500)  # over the byte budget after the second
    assert len(messages) == 2 and waiting == 2 and by_bytes == 1  # the drain sends the next take ahead
    assert take(64, 1 << 20)[2] == 0 and take(64, 1 << 20) == []


def test_with_a_short_reply_retry_a_drain_whose_acks_fail_with_a_take_on_its_way_leaves_no_connection_behind(
    stack: ExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = stack.enter_context(RedisServer())
    settings = Settings(broker_url=redis.url)
    app = make_app(settings, name=f"drain-fail-{uuid.uuid4().hex[:6]}")

    @app.task(name="i.same")
    def same(chunk: bytes, t0: float) -> bytes:
        return chunk

    client = connect(redis.url)
    stream = f"s-{uuid.uuid4().hex[:6]}"
    entries = [Entry(f"id{i}", "i.same", Chunk(stream, i, float(i), 4, 0), wire.dumps(b"x" * 30000)) for i in range(8)]
    publish(client, owned(entries, Settings(broker_url=redis.url, batch_max_chunks=0), "drainfail001"))
    real = redis_py.client.Pipeline.execute

    def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
        if any(cmd[0][0] == "HDEL" for cmd in self.command_stack):
            raise redis_py.ConnectionError("the acks' connection broke")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(redis_py.client.Pipeline, "execute", failing)
    monkeypatch.setattr(drain, "DRAIN_BYTES", 60_000)  # two messages a take: a second take is sent ahead
    monkeypatch.setattr(replies, "GIVE_UP", 0.2)  # the replies are retried this long, not a minute
    request = Context(hostname="t@h", delivery_info={"routing_key": settings.queue}, called_directly=False,
                      is_eager=False, timelimit=None)  # fmt: skip
    ran = drain.drain(SimpleNamespace(app=app, request=request), client, settings, 0.0)  # never raises
    assert 1 <= ran < 8  # it stopped draining when its replies and acks could not be written
    pool = client.connection_pool
    assert not pool._in_use_connections  # the take sent ahead was read or its connection dropped: none leaks
    # what was taken stays recorded as delivered (kombu restores it, producers send it again): nothing is lost
    assert client.hlen("unacked") + client.llen(settings.queue) == 8


def test_takes_of_small_messages_are_made_one_after_another(stack: ExitStack, monkeypatch: pytest.MonkeyPatch) -> None:
    redis = stack.enter_context(RedisServer())
    settings = Settings(broker_url=redis.url, worker_drain=4)
    app = make_app(settings, name=f"drain-small-{uuid.uuid4().hex[:6]}")
    client = connect(redis.url)
    queued: list[int] = []  # messages still in the queue as each chunk runs

    @app.task(name="i.small")
    def small(chunk: bytes, t0: float) -> bytes:
        queued.append(client.llen(settings.queue))
        return chunk

    stream = f"s-{uuid.uuid4().hex[:6]}"
    entries = [Entry(f"id{i}", "i.small", Chunk(stream, i, float(i), 4, 0), wire.dumps(b"abcd")) for i in range(10)]
    publish(client, owned(entries, Settings(broker_url=redis.url, batch_max_chunks=0), "drainsmall01"))
    sent: list[Any] = []
    monkeypatch.setattr(drain, "send_script", lambda *args: sent.append(args))
    request = Context(hostname="t@h", delivery_info={"routing_key": settings.queue}, called_directly=False,
                      is_eager=False, timelimit=None)  # fmt: skip
    assert drain.drain(SimpleNamespace(app=app, request=request), client, settings, 0.0) == 10
    assert not sent  # never a take sent ahead: another worker may run what waits meanwhile
    assert queued == [6, 6, 6, 6, 2, 2, 2, 2, 0, 0]  # takes of 4, 4 and 2, each after the previous one ran
