"""What faults leave behind in Redis, on a real redis-server and real workers: nothing that outlives its use."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.remote import wire
from ocycle_dist.remote.protocol import WORKERS_KEY
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.testing import RedisServer, Worker
from tests.support.helpers import wait_for

pytestmark = pytest.mark.usefixtures("redis_server_required")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def worker(stack: ExitStack, url: str, name: str) -> Worker:
    w = Worker(url, name=name, include=("tests.support.tasks",), concurrency=1)
    stack.callback(w.stop)
    return w.start()


def test_a_chunk_answered_by_a_worker_killed_before_it_acknowledged_it_is_not_left_in_kombus_unacked(
    stack: ExitStack,
) -> None:
    redis = stack.enter_context(RedisServer())
    admin = connect(redis.url)
    a = worker(stack, redis.url, "a")
    done: list[Any] = []
    e = ocycle.BufferEmit("contract.sleep", 4, clip=True, mode="celery", broker=redis.url, on_done=done.append)
    executor = e.executor
    assert executor is not None
    e.write(b"2.00")  # runs 2 s
    wait_for(lambda: executor.counts["messages"] == 1, 10, "published")
    e.write(b"0.01")  # a message of its own, prefetched by the same worker behind the first
    wait_for(lambda: admin.hlen("unacked") == 2, 10, "both delivered to worker a")
    lease = f"ocycle:lease:a@{socket.gethostname()}"
    wait_for(lambda: len(wire.loads(admin.get(lease) or wire.dumps({})).get("tasks", ())) == 2, 10, "both in a's lease")
    os.kill(a.pid, signal.SIGSTOP)  # its main process stops: the pool process answers the first, nobody acks it
    try:
        wait_for(lambda: len(done) == 1, 10, "the first answered")
        worker(stack, redis.url, "b")  # the second goes to b once a's lease has lapsed
        wait_for(lambda: len(done) == 2, 20, "the second, sent again when a's lease lapsed")
        assert sorted(done) == [b"0.01", b"2.00"] and executor.counts["recovered"] == 1
        # was: the first's delivery stayed in kombu's unacked hash until the visibility timeout (300 s), then ran again
        wait_for(lambda: admin.hlen("unacked") == 0 and admin.zcard("unacked_index") == 0, 10, "no delivery left")
    finally:
        a.kill()  # SIGKILL to its process group (a stopped process dies too)
    e.close(timeout=10)
    wait_for(lambda: b"a@" not in b" ".join(admin.smembers(WORKERS_KEY)), 10, "the dead worker's name forgotten")
    assert 0 < admin.ttl(WORKERS_KEY) <= 24 * 3600


def test_a_worker_killed_holding_hundreds_of_chunks_is_said_in_a_line_not_one_per_chunk(
    stack: ExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    redis = stack.enter_context(RedisServer())
    admin = connect(redis.url)
    done: list[Any] = []
    e = ocycle.BufferEmit("contract.sleep", 4, clip=True, mode="celery", broker=redis.url, on_done=done.append)
    for _ in range(600):
        e.write(b"0.01")  # a backlog: batch messages of 64 chunks, 10 ms each
    a = worker(stack, redis.url, "a")  # prefetches 4 batch messages: 256 chunks
    wait_for(lambda: len(done) >= 20, 30, "a has run some")
    held = admin.hlen("unacked")
    a.kill()  # SIGKILL, mid-batch
    with caplog.at_level("WARNING", logger="ocycle_dist"):
        worker(stack, redis.url, "b")
        assert e.close(timeout=60) == 0
    assert held >= 2 and len(done) == 600  # each once
    lines = [r.getMessage() for r in caplog.records if "sent again" in r.getMessage()]
    assert 1 <= len(lines) <= 3, lines  # was: one line per chunk sent again
    assert "the worker holding them died (its lease lapsed)" in lines[0]
