"""The Celery executor on fakeredis (no redis-server, no worker): replies resolve chunks once, errors, recovery,
the budget, chunks that cannot be encoded, a broker away at start.

``embedded_broker()`` serves fakeredis over TCP on a loopback port, so the hub's clients (the publisher's, the
listener's) talk to it as to a Redis. A worker's reply is simulated by RPUSHing a sealed record to the reply
list the message names (``tests.support.dist_helpers.reply``)."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.app.embedded import embedded_broker
from ocycle_dist.errors import ConfigError, DeliveryError, EncodeError, RemoteTaskError
from ocycle_dist.remote import wire
from ocycle_dist.remote.protocol import WORKERS_KEY, lease_key
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import free_port
from tests.support.dist_helpers import (
    Collector,
    answer,
    assert_accounted,
    queued,
    reply,
    settled,
    spool_rows,
)
from tests.support.helpers import wait_for


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
    unclaimed = executor.hub.listener.unclaimed
    reply(admin, emitter.stream, ids[0], result=[b"abcd", 5.0])  # the same task's second reply
    wait_for(lambda: executor.hub.listener.unclaimed == unclaimed + 1, what="the duplicate counted")
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


def test_a_new_server_run_id_sends_every_unanswered_chunk_again_at_once_first_without_counting_an_attempt(
    make: Any, admin: Any
) -> None:
    emitter, got = make()
    emitter.write(b"abcdefghijkl")
    first = wait_for(lambda: len(q := queued(admin)) == 3 and q, what="3 published messages")
    ids = [m["headers"]["id"] for m in first]
    reply(admin, emitter.stream, ids[0], result="ok")
    wait_for(lambda: len(got.done) == 1, what="chunk 0 done")
    executor = emitter.executor
    server = executor.hub.server  # fakeredis has no INFO: told here what a new connection would read
    for k in range(3):
        server.seen("run-a")
        assert executor.counts["resent"] == 2 * k and server.new_servers == k  # the same server: nothing again
        admin.delete("celery")  # a restarted server is empty
        server.seen("run-b")
        again = wait_for(lambda: len(q := queued(admin)) == 2 and q, timeout=2, what="the unanswered chunks again")
        assert sorted(m["headers"]["id"] for m in again) == sorted(ids[1:])  # chunk 0 was answered: not again
        server.run_id = None
        server.seen("run-a")  # first sight again: no change is told
    emitter.write(b"mnop")  # a new chunk goes behind the ones sent again
    messages = wait_for(lambda: len(q := queued(admin)) == 3 and q, what="the new chunk sent")
    assert [m["headers"]["ocycle"]["seq"] for m in messages] == [1, 2, 3]
    assert [m["headers"]["retries"] for m in messages] == [3, 3, 0]  # messages sent before: the header says
    for message in messages:
        reply(admin, emitter.stream, message["headers"]["id"], result="ok")
    assert emitter.wait(10)
    assert got.done_seqs == [0, 1, 2, 3] and got.errors == []
    counts = executor.counts
    assert (counts["resent"], counts["recovered"], counts["lost"], counts["undelivered"]) == (6, 6, 0, 0)
    assert server.new_servers == 3
    assert_accounted(emitter, 4)


def test_a_new_server_that_still_holds_the_chunks_sends_again_only_what_workers_had_taken(
    make: Any, admin: Any
) -> None:
    """A Sentinel failover: the promoted replica has the queue and kombu's unacknowledged set. What waits in the
    queue waits on; what a worker had prefetched goes again at once, first (every worker lost its connection, and
    with it what it had prefetched) and leaves the unacknowledged set, so it does not run again an hour later;
    what a pool process drained (its lease names it) it runs still: not sent again."""
    emitter, got = make()
    emitter.write(b"abcdefghijklmnop")
    wait_for(lambda: len(queued(admin)) == 4, what="4 published messages")
    taken = [json.loads(raw) for raw in (admin.rpop("celery"), admin.rpop("celery"))]  # chunks 0 and 1
    tags = [m["properties"]["delivery_tag"] for m in taken]
    for message, tag in zip(taken, tags, strict=True):  # kombu records each delivery as unacknowledged
        admin.zadd("unacked_index", {tag: time.time()})
        admin.hset("unacked", tag, json.dumps(message))
    pool = "w1@host/4242"  # the lease of the pool process that drained chunk 1
    admin.set(lease_key(pool), wire.dumps({"worker": pool, "tasks": [], "tags": [tags[1]]}), px=3000)
    admin.sadd(WORKERS_KEY, pool)
    executor = emitter.executor
    server = executor.hub.server  # fakeredis has no INFO: told here what a new connection would read
    server.seen("run-a")
    server.seen("run-b")
    messages = wait_for(lambda: len(q := queued(admin)) == 3 and q, timeout=2, what="chunk 0 sent again")
    assert [m["headers"]["ocycle"]["seq"] for m in messages] == [0, 2, 3]  # again first, ahead of those waiting
    assert [m["headers"]["retries"] for m in messages] == [1, 0, 0]  # only chunk 0 was sent twice
    assert admin.zrange("unacked_index", 0, -1) == [tags[1].encode()] and admin.hkeys("unacked") == [tags[1].encode()]
    for message in [taken[1], *messages]:
        answer(admin, emitter.stream, message, result="ok")
    assert emitter.wait(10)
    assert got.done_seqs == [0, 1, 2, 3] and got.errors == []
    counts = executor.counts
    assert (counts["resent"], counts["recovered"], counts["lost"], counts["published"]) == (1, 1, 0, 5)
    assert_accounted(emitter, 4)


def test_with_a_short_resend_after_a_chunk_still_queued_is_never_sent_again(make: Any, admin: Any) -> None:
    emitter, got = make(settings={"resend_after": 0.2, "max_attempts": 2})
    emitter.write(b"abcd")
    wait_for(lambda: emitter.executor.hub.counts["located"] >= 5, what="five looks for the late chunk")
    (message,) = queued(admin)  # no worker: it waits in its queue, sent once, never failed
    assert got.errors == [] and emitter.stats().in_flight == 1
    counts = emitter.executor.counts
    assert (counts["published"], counts["resent"], counts["lost"]) == (1, 0, 0)
    reply(admin, emitter.stream, message["headers"]["id"], result="ok")
    assert emitter.wait(10) and got.done_seqs == [0]


def test_with_a_short_resend_after_a_chunk_gone_from_redis_is_sent_again_then_fails_saying_what_happened(
    make: Any, admin: Any
) -> None:
    emitter, got = make(settings={"resend_after": 0.3, "max_attempts": 3})
    started = time.monotonic()
    emitter.write(b"abcd")
    sends = []
    while not got.errors and time.monotonic() - started < 10:
        if messages := queued(admin):  # a purge, an evicting Redis: the message vanishes
            sends.extend(messages)
            admin.delete("celery")
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    assert len(sends) == 3 and len({m["headers"]["id"] for m in sends}) == 1  # the same task each time
    assert [m["headers"]["retries"] for m in sends] == [0, 1, 2]
    ((seq, exc),) = got.errors
    assert seq == 0 and isinstance(exc, DeliveryError)
    assert "was sent 3 times" in str(exc) and "neither in queue 'celery', nor held by a worker, nor answered" in str(
        exc
    )
    assert 0.8 <= elapsed < 5.0  # three resend_after periods of 0.3 s
    counts = emitter.executor.counts
    assert (counts["published"], counts["resent"], counts["lost"], counts["undelivered"]) == (3, 2, 2, 1)
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
    assert emitter.stats().dropped == 2 and executor.counts["dropped"] == (2 if policy == "drop_oldest" else 0)
    assert executor.spooled_bytes == 2 * per_chunk and executor.pending == 2
    wait_for(lambda: {m["headers"]["ocycle"]["seq"] for m in queued(admin)} >= set(kept), what="kept chunks sent")
    for message in queued(admin):  # answer every message sent, evicted chunks' too
        reply(admin, emitter.stream, message["headers"]["id"], result="ok")
    assert emitter.wait(10)
    assert got.done_seqs == kept
    assert_accounted(emitter, 4)
    assert emitter.stats().done == 2 and emitter.stats().dropped == 2
    wait_for(lambda: executor.spooled_bytes == 0, what="the spool emptied")


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
        "tests.echo",
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


def test_broker_unreachable_at_start_spools_warns_once_and_sends_on_reconnect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocycle_dist.remote import publisher as celery_executor  # where the publisher thread calls publish()

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
        "tests.echo",
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
    assert executor.finished.wait(10)


def test_a_chunk_future_resolves_once_runs_its_callbacks_and_a_waiter_wakes() -> None:
    import threading

    from ocycle_dist.remote.chunkfuture import ChunkFuture

    future = ChunkFuture()
    seen: list[Any] = []
    future.add_done_callback(lambda f: seen.append(f.result()))
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(future.result(timeout=10)))
    waiter.start()
    future.set_result(42)
    waiter.join(10)
    assert got == [42] and seen == [42] and future.done() and not future.cancelled()
    with pytest.raises(RuntimeError):
        future.set_exception(ValueError("late"))  # resolved once
    assert not future.cancel() and future.exception() is None
    future.add_done_callback(lambda f: seen.append("after"))  # on a done future: at once
    assert seen == [42, "after"]
    failed = ChunkFuture()
    failed.set_exception(ValueError("x"))
    with pytest.raises(ValueError, match="x"):
        failed.result()
    pending = ChunkFuture()
    with pytest.raises(TimeoutError):
        pending.result(timeout=0.05)
    assert pending.cancel() and pending.cancelled()


def test_the_removed_spool_policy_setting_is_a_config_error_naming_the_emitters_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match=r"spool_policy='reject_newest'.*policy='drop_newest'") as excinfo:
        Settings(spool_policy="reject_newest")
    assert excinfo.value.param == "spool_policy"
    monkeypatch.setenv("OCYCLE_SPOOL_POLICY", "drop_oldest")
    with pytest.raises(ConfigError, match=r"policy='drop_oldest'"):
        Settings.from_env()
