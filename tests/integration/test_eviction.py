"""An evicting Redis (``maxmemory`` with a ``maxmemory-policy`` that evicts), on a real redis-server and real workers.

A Redis that may evict any key (``allkeys-*``: the queues too) is refused by producers and workers alike, naming the
policy and the fix, unless the deployment accepts it; one that evicts the keys with a time to live (``volatile-*``)
is said. Either way nothing is lost silently: what Redis evicts is sent again within seconds, counted, and every
chunk is done or counted within 20 s of the workers starting.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.errors import ConfigError
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import RedisServer, Worker
from tests.support.helpers import wait_for

pytestmark = pytest.mark.usefixtures("redis_server_required")
BACKLOG = 26 * 1024 * 1024  # over a 20 MB Redis
CLAIMED = 32 * 1024  # chunks that travel by claim check: Redis evicts the claims
INLINE = 3000  # chunks that travel in their messages: Redis evicts the queue itself


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def evicting(stack: ExitStack, policy: str) -> RedisServer:
    return stack.enter_context(RedisServer(args=["--maxmemory", "20mb", "--maxmemory-policy", policy]))


def workers(stack: ExitStack, url: str, n: int = 2, **env: str) -> list[Worker]:
    started = []
    for i in range(n):
        w = Worker(url, name=f"e{i}", include=("tests.support.tasks",), concurrency=2, env=env)
        stack.callback(w.stop)
        started.append(w.start(wait=False))
    for w in started:
        w.wait_ready()
    return started


def backlog(url: str, size: int = CLAIMED, **settings: Any) -> tuple[ocycle.BufferEmit, dict[str, int]]:
    """An emitter of ``size``-byte chunks, and a backlog of them over Redis's memory, written with no worker."""
    seen = {"done": 0, "failed": 0}

    def on_done(result: Any) -> None:
        assert result == size
        seen["done"] += 1

    def on_error(exc: BaseException) -> None:
        seen["failed"] += 1

    e = ocycle.BufferEmit("contract.length", size, clip=True, mode="celery", on_done=on_done, on_error=on_error,
                          settings=Settings(broker_url=url, **settings))  # fmt: skip
    for i in range(BACKLOG // size):
        e.write(i.to_bytes(4, "big") * (size // 4))
    return e, seen


def settled_within_20_s_of_the_workers(e: ocycle.BufferEmit, started: float) -> Any:
    wait_for(lambda: e.stats().in_flight == 0, 60, lambda: f"every chunk settled: {e.stats()}")
    took = time.monotonic() - started
    stats = e.stats()
    counts = e.executor.counts if e.executor is not None else {}
    print(f"every chunk settled {took:.1f} s after the workers started: {stats.done} done, {stats.failed} failed;"
          f" evicted {counts.get('evicted')}, lost {counts.get('lost')}")  # fmt: skip
    assert stats.emitted == stats.done + stats.failed + stats.dropped + stats.expired  # nothing lost silently
    assert took < 20, f"{took:.1f} s after the workers started"
    return stats


def test_a_redis_that_may_evict_any_key_is_refused_by_producers_and_workers_naming_the_policy_and_the_fix(
    stack: ExitStack,
) -> None:
    redis = evicting(stack, "allkeys-lru")
    with pytest.raises(ConfigError) as info:
        ocycle.BufferEmit("contract.length", 4, mode="celery", broker=redis.url)
    text = str(info.value)
    assert text.startswith("maxmemory-policy='allkeys-lru' is invalid: expected noeviction: Redis at redis://")
    assert "may evict any key when it reaches maxmemory 20.00M" in text
    assert "CONFIG SET maxmemory-policy noeviction" in text and "OCYCLE_ALLOW_EVICTION=1" in text
    w = Worker(redis.url, name="refuses", include=("tests.support.tasks",))
    stack.callback(w.stop)
    w.start(wait=False)
    assert w.wait_exit(60) == 78
    assert "refusing to start: maxmemory-policy='allkeys-lru' is invalid: expected noeviction" in w.log.read_text()


@pytest.mark.parametrize("size", [CLAIMED, INLINE], ids=["claims-evicted", "queue-evicted"])
def test_with_allow_eviction_an_evicted_backlog_is_sent_again_and_every_chunk_is_done_within_20_s_of_workers(
    stack: ExitStack, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    redis = evicting(stack, "allkeys-lru")
    admin = connect(redis.url)
    with caplog.at_level("INFO", logger="ocycle_dist"):
        e, seen = backlog(redis.url, size, allow_eviction=True)
        executor = e.executor
        assert executor is not None
        wait_for(lambda: executor.counts["evicted"] > 0, 60, lambda: f"an eviction seen: {executor.counts}")
        assert int(admin.info("stats")["evicted_keys"]) > 0
        started = time.monotonic()
        workers(stack, redis.url, OCYCLE_ALLOW_EVICTION="1")
        stats = settled_within_20_s_of_the_workers(e, started)
    assert stats.done == BACKLOG // size == seen["done"]  # the budget held them all: each evicted one went again
    assert executor.counts["undelivered"] == 0
    lines = [r.getMessage() for r in caplog.records]
    said = [line for line in lines if "evicted" in line and "maxmemory-policy" in line]
    assert said and all("allkeys-lru" in line for line in said)
    assert sum("sent again" in line for line in lines) < 40  # one line per reason and second, not one per chunk
    assert sum("may evict any key" in r.getMessage() for r in caplog.records) == 1  # the policy said once
    e.close(timeout=10)


def test_a_redis_that_evicts_keys_with_a_time_to_live_is_said_and_every_chunk_is_done_or_counted_within_20_s(
    stack: ExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    redis = evicting(stack, "volatile-lru")
    with caplog.at_level("WARNING", logger="ocycle_dist"):
        e, seen = backlog(redis.url)  # default settings: accepted, and said
        executor = e.executor
        assert executor is not None
        wait_for(lambda: executor.counts["evicted"] > 0, 60, lambda: f"claims evicted, stored again: {executor.counts}")
        started = time.monotonic()
        workers(stack, redis.url)
        stats = settled_within_20_s_of_the_workers(e, started)
    warned = [r.getMessage() for r in caplog.records if "maxmemory-policy volatile-lru" in r.getMessage()]
    assert warned and "claimed chunks (ocycle:chunk:*), reply lists (ocycle:reply:*)" in warned[0]
    assert stats.done + stats.failed == BACKLOG // CLAIMED == seen["done"] + seen["failed"]
    e.close(timeout=10)
