"""Recovery in seconds, with default settings: a worker killed whole (main process and pool) gives its
chunks back through its lapsed lease; a long task on a live worker is never sent twice."""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import RedisServer, Worker
from tests.support.helpers import wait_for

pytestmark = pytest.mark.usefixtures("redis_server_required")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def start_worker(stack: ExitStack, url: str, name: str) -> Worker:
    w = Worker(url, name=name, include=("tests.support.tasks",))
    stack.callback(w.stop)
    return w.start()


def runs(admin: Any, stream: str) -> Counter[int]:
    return Counter({int(k): int(v) for k, v in admin.hgetall(f"ocycle:test:runs:{stream}").items()})


def test_a_worker_killed_whole_gives_back_its_chunks_within_10_s_with_default_settings(stack: ExitStack) -> None:
    redis = stack.enter_context(RedisServer(password="lease-pw"))
    victim = start_worker(stack, redis.url, "victim")
    n, stream = 40, f"lease-{uuid.uuid4().hex[:6]}"
    done: Counter[int] = Counter()
    emitter = ocycle.BufferEmit(
        "contract.counted_sleep",
        4,
        clip=True,
        mode="celery",
        broker=redis.url,
        stream=stream,
        on_done=lambda r, meta: done.update([meta.seq]),
    )
    for _ in range(n):
        emitter.write(b"0.25")  # each chunk's task sleeps 0.25 s
    admin = connect(redis.url)
    wait_for(lambda: sum(runs(admin, stream).values()) >= 3, 30, "the victim running chunks")
    held = len(admin.zrange("unacked_index", 0, -1))
    assert held >= 1  # the message running (a batch of many of the chunks: written at once), and prefetched ones
    victim.kill(signal.SIGKILL)  # main process and pool child at once: nothing acknowledged, nothing said
    killed = time.monotonic()
    assert victim.wait_exit(10) is not None
    start_worker(stack, redis.url, "rescuer")
    executor = emitter.executor
    assert executor is not None
    assert emitter.close(timeout=60) == 0
    recovered_in = time.monotonic() - killed
    executor_counts = emitter.stats()
    assert sorted(done) == list(range(n)) and set(done.values()) == {1}, "on_done exactly once per chunk"
    assert executor_counts.done == n
    assert executor.counts["recovered"] >= 2  # sent again because the victim's lease lapsed
    assert recovered_in < 10.0 + n * 0.25, recovered_in  # the rescuer also runs the rest of the stream
    print(f"every chunk done {recovered_in:.1f} s after the kill ({held} held by the victim)")


def test_the_chunks_a_killed_worker_held_are_sent_again_at_once_not_after_resend_after(stack: ExitStack) -> None:
    redis = stack.enter_context(RedisServer(password="lease-pw"))
    victim = start_worker(stack, redis.url, "victim")
    stream = f"lease-{uuid.uuid4().hex[:6]}"
    one_each = Settings(broker_url=redis.url, batch_max_chunks=0)  # four messages: the victim prefetches them all
    emitter = ocycle.BufferEmit("contract.counted_sleep", 4, clip=True, mode="celery", settings=one_each, stream=stream)
    for _ in range(4):
        emitter.write(b"30.0")  # far longer than the test: only a resend can finish them
    admin = connect(redis.url)
    wait_for(lambda: runs(admin, stream)[0] == 1, 30, "the victim running chunk 0")
    wait_for(lambda: admin.zcard("unacked_index") == 4, 10, "the victim holding four (prefetch 4 x 1 process)")
    rescuer = start_worker(stack, redis.url, "rescuer")
    victim.kill(signal.SIGKILL)
    killed = time.monotonic()
    executor = emitter.executor
    assert executor is not None
    wait_for(lambda: executor.counts["recovered"] == 4, 15, lambda: f"recovery, counts {executor.counts}")
    took = time.monotonic() - killed
    assert took < 10.0, took  # lease 3 s, checked every second: not resend_after (120 s)
    wait_for(lambda: runs(admin, stream)[0] == 2, 10, "chunk 0 running again, on the rescuer")
    assert executor.counts["resent"] == 4  # by the leases, not by resend_after
    tags = {m.decode() for m in admin.zrange("unacked_index", 0, -1)}
    assert len(tags) <= 4  # the rescuer's own; the victim's four deliveries are forgotten (not run again later)
    emitter.close(wait=False)
    rescuer.stop(timeout=1)


def test_a_long_task_on_a_live_worker_is_never_sent_twice(stack: ExitStack) -> None:
    redis = stack.enter_context(RedisServer(password="lease-pw"))
    start_worker(stack, redis.url, "busy")
    stream = f"lease-{uuid.uuid4().hex[:6]}"
    emitter = ocycle.BufferEmit("contract.counted_sleep", 4, clip=True, mode="celery", broker=redis.url, stream=stream)
    emitter.write(b"8.00")  # longer than two lease lifetimes (3 s each)
    emitter.write(b"0.01")  # prefetched behind it
    assert emitter.close(timeout=60) == 0
    executor_counts = emitter.stats()
    assert executor_counts.done == 2
    assert runs(connect(redis.url), stream) == Counter({0: 1, 1: 1})
