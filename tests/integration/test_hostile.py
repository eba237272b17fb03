"""Broker error replies, shared stream ids and hostile writers, against a real redis-server and real workers.

Every case ends in a clear, counted outcome: the producer's threads survive and the stream goes on, a
misconfiguration fails at construction naming the broker (password redacted), and what anyone who can write
to Redis sends is refused before it is decoded into memory, run, or believed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.chunk import Chunk
from ocycle_dist.remote import wire
from ocycle_dist.remote.pending import Entry
from ocycle_dist.remote.protocol import DEAD_KEY, DEAD_TTL, mac_key, reply_key, task_message, token_of, unseal
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import RedisServer, Worker, free_port
from tests.support.helpers import wait_for

pytestmark = pytest.mark.usefixtures("redis_server_required")
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pw"


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def server(stack: ExitStack, *args: str) -> RedisServer:
    return stack.enter_context(RedisServer(password=PASSWORD, args=list(args)))


def worker(stack: ExitStack, url: str, name: str = "h0") -> Worker:
    w = Worker(url, name=name, include=("tests.support.tasks",))
    stack.callback(w.stop)
    return w.start()


def emitter(url: str, **options: Any) -> tuple[ocycle.BufferEmit, list[Any], list[BaseException]]:
    done: list[Any] = []
    errors: list[BaseException] = []
    e = ocycle.BufferEmit(
        "contract.echo_t0", 4, clip=True, mode="celery", broker=url, on_done=done.append, on_error=errors.append,
        **options,
    )  # fmt: skip
    return e, done, errors


# ---- broker error replies ---------------------------------------------------------------------------------------


def test_out_of_memory_replies_are_retried_counted_and_the_stream_goes_on(stack: ExitStack) -> None:
    redis = server(stack, "--maxmemory-policy", "noeviction")
    admin = connect(redis.url)
    admin.set("ballast", b"x" * (4 << 20))
    admin.config_set("maxmemory", "1mb")  # far over the limit now: every write is refused with OOM
    with pytest.raises(Exception, match=r"OOM|maxmemory"):
        admin.lpush("probe", b"x")
    e, done, _ = emitter(redis.url)
    for i in range(20):
        e.write(i.to_bytes(4, "big"))
    executor = e.executor
    assert executor is not None
    wait_for(lambda: executor.hub.counts["broker_errors"] >= 2, 10, "publishes refused")
    assert executor.broker_error is not None and "maxmemory" in executor.broker_error  # OutOfMemoryError
    assert executor.counts["published"] == 0
    admin.config_set("maxmemory", "0")  # room again: the same publisher thread goes on
    worker(stack, redis.url)
    assert e.close(timeout=60) == 0
    assert sorted(r[0] for r in done) == [i.to_bytes(4, "big") for i in range(20)]
    assert executor.broker_error is None and executor.hub.counts["thread_errors"] == 0


def test_misconf_replies_when_redis_cannot_persist_are_retried_and_the_stream_goes_on(stack: ExitStack) -> None:
    redis = server(stack, "--enable-protected-configs", "yes")
    admin = connect(redis.url)
    doomed = Path(tempfile.mkdtemp(prefix="ocycle-misconf-"))
    admin.config_set("dir", str(doomed))
    admin.config_set("save", "3600 1")  # snapshots on: a failed one stops writes (stop-writes-on-bgsave-error)
    shutil.rmtree(doomed)  # the disk is gone: the next save fails, and then Redis refuses writes (MISCONF)
    stack.callback(shutil.rmtree, doomed, True)
    admin.bgsave()
    wait_for(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", 10, "a failed save")
    e, done, _ = emitter(redis.url)
    e.write(b"abcdefgh")
    executor = e.executor
    assert executor is not None
    wait_for(lambda: "MISCONF" in (executor.broker_error or ""), 10, "MISCONF seen")
    doomed.mkdir()
    admin.config_set("dir", str(doomed))
    admin.bgsave()
    wait_for(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "ok", 10, "a good save")
    worker(stack, redis.url)
    assert e.close(timeout=60) == 0 and sorted(r[0] for r in done) == [b"abcd", b"efgh"]


def test_a_reply_list_of_the_wrong_type_is_taken_back_and_every_stream_keeps_its_results(
    stack: ExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    redis = server(stack)
    worker(stack, redis.url)
    first, _, _ = emitter(redis.url, stream="first")
    other, done2, _ = emitter(redis.url, stream="other")
    executor = first.executor
    assert executor is not None and other.executor is not None
    assert executor.reply_key == other.executor.reply_key  # one reply list per process
    connect(redis.url).set(executor.reply_key, "not a list")  # a foreign writer's
    first.write(b"abcd")
    wait_for(lambda: any("held a string" in r.getMessage() for r in caplog.records), 30, "the bad key reported")
    for i in range(5):
        other.write(bytes([97 + i]) * 4)  # the listener takes its list back: results come again
        assert other.wait(30)
    assert len(done2) == 5 and executor.hub.listener.retyped >= 1
    first.close(wait=False)
    assert other.close(timeout=10) == 0


def test_a_wrong_password_a_bad_db_and_tls_to_a_plain_server_fail_at_construction_with_the_password_redacted(
    stack: ExitStack,
) -> None:
    redis = server(stack)
    bad = [
        (f"redis://:wrong-{PASSWORD}@127.0.0.1:{redis.port}/0", "WRONGPASS|invalid username-password|Authentication"),
        (f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/99", "DB index"),
        (f"rediss://:{PASSWORD}@127.0.0.1:{redis.port}/0", "SSL|ssl|TLS"),
    ]
    for url, why in bad:
        started = time.monotonic()
        with pytest.raises(ocycle.ConfigError, match=why) as info:
            ocycle.BufferEmit("contract.echo_t0", 4, mode="celery", broker=url)
        assert time.monotonic() - started < 5
        assert info.value.param == "broker" and PASSWORD not in str(info.value) and "***" in str(info.value)
    unreachable = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    e = ocycle.BufferEmit("contract.echo_t0", 4, mode="celery", broker=unreachable)  # an outage is not an error
    e.close(wait=False)


def test_status_and_delivery_errors_never_show_the_password(stack: ExitStack, capsys: Any) -> None:
    from ocycle_dist.app.cli import main

    redis = server(stack)
    assert main(["status", "--broker", redis.url]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out and "***" in out


# ---- shared stream ids ------------------------------------------------------------------------------------------

PRODUCER = """
import sys, threading
import ocycle_dist as ocycle
me = sys.argv[2].encode()
got, lock = [], threading.Lock()
def on_done(r):
    with lock:
        got.append(r[0])
e = ocycle.BufferEmit("contract.echo_t0", 8, clip=True, mode="celery", broker=sys.argv[1], stream="spl",
                      on_done=on_done)
for i in range(40):
    e.write(me + i.to_bytes(4, "big"))
assert e.close(timeout=60) == 0
print(sum(1 for r in got if r.startswith(me)), len(got))
"""


def test_two_producers_with_the_same_stream_id_each_get_exactly_their_own_results(stack: ExitStack) -> None:
    redis = server(stack)
    worker(stack, redis.url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PRODUCER, redis.url, tag], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        for tag in ("pA__", "pB__")
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [["40", "40"], ["40", "40"]]  # 40 results each, all its own


# ---- hostile writers ---------------------------------------------------------------------------------------------


def raw_message(token: str, stream: str, task: str, chunk: bytes, task_id: str | None = None) -> bytes:
    entry = Entry(task_id or str(uuid.uuid4()), task, Chunk(stream, 0, 1.0, 4, 0), chunk)
    message, _ = task_message(entry, Settings(), token)
    return message


def next_reply(admin: Any, key: str, token: str, timeout: float = 20) -> dict[str, Any]:
    got = admin.blpop([key], timeout=timeout)
    assert got is not None, f"no reply on {key}"
    record = unseal(wire.loads(got[1]), mac_key("", token))
    assert record is not None
    return record


def test_a_forged_reply_is_ignored_and_counted_and_the_real_result_wins(stack: ExitStack) -> None:
    redis = server(stack)
    e, done, _ = emitter(redis.url)
    e.write(b"real")
    executor = e.executor
    assert executor is not None
    admin = connect(redis.url)
    wait_for(lambda: admin.llen("celery") == 1, 10, "published")
    message = json.loads(admin.lindex("celery", 0))
    task_id, reply_to = message["headers"]["id"], message["properties"]["reply_to"]
    forged = {"id": task_id, "ok": True, "result": ["forged", 0.0]}
    admin.rpush(reply_to, wire.dumps(forged))  # unsealed
    wrong_key = mac_key("a guess", token_of(reply_to))
    from ocycle_dist.remote.protocol import seal

    admin.rpush(reply_to, seal(forged, wrong_key))  # sealed with a key that is not the producer's
    wait_for(lambda: executor.counts["forged"] == 2, 10, "both forgeries seen")
    assert done == []
    worker(stack, redis.url)
    assert e.close(timeout=30) == 0
    assert [r[0] for r in done] == [b"real"]


def test_a_msgpack_bomb_is_refused_unread_by_the_worker_and_by_the_producer(stack: ExitStack) -> None:
    redis = server(stack)
    w = worker(stack, redis.url)
    admin = connect(redis.url)
    token, stream = "bombtoken123", "bomb"
    bomb = b"\xdd" + (16 << 20).to_bytes(4, "big") + b"\x90" * (16 << 20)  # an array of 16 M empty arrays
    envelope = json.loads(raw_message(token, stream, "contract.echo_t0", b"\xc0"))
    body = b"\x93\x92" + bomb + b"\xcb" + bytes(8) + b"\x80\xc0"
    envelope["body"] = base64.b64encode(body).decode()
    admin.lpush("celery", json.dumps(envelope))
    e, done, _ = emitter(redis.url)
    e.write(b"good")
    assert e.wait(30) and [r[0] for r in done] == [b"good"]  # the worker went on to the next message
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{w.pid}/status").read_text().splitlines()
               if line.startswith("VmHWM"))  # fmt: skip
    assert rss < 400_000, f"worker peak RSS {rss} kB"
    executor = e.executor
    assert executor is not None
    listener = executor.hub.listener
    admin.rpush(executor.reply_key, bomb)  # and a bomb in the producer's own reply list
    wait_for(lambda: listener.unreadable >= 1, 10, "the reply bomb refused")
    e.write(b"more")
    assert e.close(timeout=30) == 0 and [r[0] for r in done] == [b"good", b"more"]


def test_a_claim_check_naming_any_other_key_is_refused_and_its_value_never_sent_back(stack: ExitStack) -> None:
    redis = server(stack)
    worker(stack, redis.url)
    admin = connect(redis.url)
    admin.set("some:secret", "the crown jewels")
    token, stream = "claimtoken12", "claims"
    message = raw_message(token, stream, "contract.echo_t0", wire.dumps(wire.Claim("some:secret")))
    admin.lpush("celery", message)
    record = next_reply(admin, reply_key(token), token)
    assert record["ok"] is False and record["error"][0] == "EncodeError" and "not this task" in record["error"][1]
    assert b"crown" not in wire.dumps(record)


def test_celerys_built_in_tasks_are_not_run_when_named_in_a_message(stack: ExitStack) -> None:
    redis = server(stack)
    worker(stack, redis.url)
    admin = connect(redis.url)
    token = "builtintoken"
    for i, name in enumerate(("celery.accumulate", "celery.backend_cleanup", "celery.map", "celery.starmap")):
        admin.lpush("celery", raw_message(token, f"b{i}", name, wire.dumps(b"x")))
        record = next_reply(admin, reply_key(token), token)
        assert record["ok"] is False and record["error"][0] == "NotRegistered", (name, record)


# ---- junk on a queue ---------------------------------------------------------------------------------------------


def junk_messages(token: str) -> dict[str, bytes]:
    """One message of each kind a worker must refuse, by the kind it is counted as."""
    good = json.loads(raw_message(token, "junk", "contract.echo_t0", wire.dumps(b"x")))

    def variant(**changes: Any) -> bytes:
        envelope = json.loads(json.dumps(good))
        for path, value in changes.items():
            where = envelope
            *parents, last = path.split("__")
            for p in parents:
                where = where[p]
            if value is None:
                del where[last]
            else:
                where[last] = value
        envelope["properties"]["delivery_tag"] = str(uuid.uuid4())
        return json.dumps(envelope).encode()

    return {
        "not-json": b"junk junk ju",  # 12 bytes: killed the worker (JSONDecodeError)
        "not-an-object": b"[1,2,3]",  # killed it too (TypeError)
        "no-headers": variant(headers=None),
        "bad-properties": variant(properties__delivery_info=None),
        "bad-base64": variant(body="!!!notbase64"),
        "content-type": variant(**{"content-type": "application/json"}),
    }


def dead_kinds(admin: Any) -> list[str]:
    return [json.loads(r)["kind"] for r in admin.lrange(DEAD_KEY, 0, -1)]


def test_junk_on_a_queue_never_kills_a_worker_it_is_refused_kept_and_said_once_per_kind(stack: ExitStack) -> None:
    redis = server(stack)
    w = worker(stack, redis.url)
    admin = connect(redis.url)
    token = "junktoken123"
    junk = junk_messages(token)
    for kind, message in [*junk.items(), *junk.items()]:  # each kind twice: said once per kind, counted twice
        admin.lpush("celery", message)
        wait_for(lambda: admin.llen("celery") == 0, 10, f"the worker took {kind}")
    wait_for(lambda: len(dead_kinds(admin)) == 2 * len(junk), 10, "every refused message kept")
    assert sorted(dead_kinds(admin)) == sorted([*junk, *junk])
    assert 0 < admin.ttl(DEAD_KEY) <= DEAD_TTL
    newest = json.loads(admin.lindex(DEAD_KEY, 0))
    assert newest["raw"].startswith('{"body"') and newest["queue"] == "celery"
    assert newest["worker"].endswith(f"/{w.pid}")  # refused by the worker's consumer (its BRPOP), not a pool process
    admin.lpush("celery", raw_message(token, "junk", "no.such.task", wire.dumps(b"x")))  # an unknown task: answered
    record = next_reply(admin, reply_key(token), token)
    assert record["ok"] is False and record["error"][0] == "NotRegistered"
    wait_for(lambda: dead_kinds(admin)[0] == "unknown-task", 10, "the unknown task kept")
    e, done, _ = emitter(redis.url)
    e.write(b"good")
    assert e.close(timeout=30) == 0 and [r[0] for r in done] == [b"good"]  # the same worker served on
    assert w.alive()
    log = w.log.read_text()
    assert "Unrecoverable error" not in log
    for kind in junk:
        assert log.count(f"refused a message from queue 'celery' ({kind})") == 1, kind


def test_junk_taken_while_a_pool_process_drains_the_queue_is_refused_there_and_the_rest_runs(stack: ExitStack) -> None:
    redis = server(stack)
    admin = connect(redis.url)
    token = "draintoken12"
    junk = junk_messages(token)
    # no worker yet: it prefetches the first 4 (worker_prefetch), runs the first, and its pool process drains
    # the rest before that one is acknowledged (the consumer's prefetch window stays full meanwhile)
    first = [raw_message(token, "d", "contract.echo_t0", wire.dumps(b"%d" % i)) for i in range(6)]
    last = raw_message(token, "d", "contract.echo_t0", wire.dumps(b"last"))
    admin.lpush("celery", *first, *junk.values(), last)
    w = worker(stack, redis.url)
    results = [next_reply(admin, reply_key(token), token) for _ in range(7)]
    assert sorted(r["result"][0] for r in results) == [b"%d" % i for i in range(6)] + [b"last"]
    wait_for(lambda: len(dead_kinds(admin)) == len(junk), 10, "every refused message kept")
    assert sorted(dead_kinds(admin)) == sorted(junk)
    pids = {json.loads(r)["worker"].rsplit("/", 1)[1] for r in admin.lrange(DEAD_KEY, 0, -1)}
    assert str(w.pid) not in pids  # refused by the pool process that drained them
    # none put back, none left unacknowledged (the take is acknowledged once all of it ran, after its replies)
    wait_for(lambda: admin.hlen("unacked") == 0, 10, "the take acknowledged")
    assert admin.llen("celery") == 0
    assert w.alive()


def test_junk_in_the_unacknowledged_deliveries_is_refused_when_kombu_restores_them(stack: ExitStack) -> None:
    redis = server(stack)
    admin = connect(redis.url)
    admin.hset("unacked", "junk-tag", "junk junk ju")
    admin.zadd("unacked_index", {"junk-tag": 1.0})  # delivered in 1970: restored at the worker's first look
    w = worker(stack, redis.url)
    wait_for(lambda: admin.zcard("unacked_index") == 0, 60, "the junk delivery looked at")
    wait_for(lambda: dead_kinds(admin) == ["not-json"], 10, "kept")
    assert admin.hlen("unacked") == 0
    e, done, _ = emitter(redis.url)
    e.write(b"good")
    assert e.close(timeout=30) == 0 and [r[0] for r in done] == [b"good"] and w.alive()


def test_ocycle_dist_status_sums_up_the_refused_messages(stack: ExitStack, capsys: Any) -> None:
    from ocycle_dist.app.cli import status

    redis = server(stack)
    worker(stack, redis.url)
    admin = connect(redis.url)
    for message in (b"junk junk ju", b"[1,2,3]", b"more junk"):
        admin.lpush("celery", message)
    wait_for(lambda: len(dead_kinds(admin)) == 3, 20, "refused")
    assert status(redis.url) == 0
    out = capsys.readouterr().out
    assert f"messages refused by workers (junk, unknown tasks, failed seals), kept in {DEAD_KEY}: 3" in out
    assert "  not-json: 2\n  not-an-object: 1" in out and "the latest: not-json from queue 'celery' at" in out


def test_junk_is_counted_by_kind_in_the_worker_metrics_when_a_metrics_port_is_set(stack: ExitStack) -> None:
    import urllib.request

    redis = server(stack)
    port = free_port()
    w = Worker(redis.url, name="m0", include=("tests.support.tasks",), env={"OCYCLE_WORKER_METRICS_PORT": str(port)})
    stack.callback(w.stop)
    w.start()
    admin = connect(redis.url)
    for message in (b"junk junk ju", b"[1,2,3]", b"junk again"):
        admin.lpush("celery", message)
    wait_for(lambda: len(dead_kinds(admin)) == 3, 20, "refused")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'ocycle_worker_junk_messages_total{kind="not-json"} 2.0' in text
    assert 'ocycle_worker_junk_messages_total{kind="not-an-object"} 1.0' in text


# ---- sealed messages: a result is believed only for the chunk the producer sent ------------------------------------

SECRET = "a-deployment-secret"


def sealed_worker(stack: ExitStack, url: str, name: str = "s0") -> Worker:
    w = Worker(url, name=name, include=("tests.support.tasks",), env={"OCYCLE_REPLY_SECRET": SECRET})
    stack.callback(w.stop)
    return w.start()


def sealed_emitter(url: str, **settings: Any) -> tuple[ocycle.BufferEmit, list[Any], list[BaseException]]:
    return emitter(url, settings=Settings(broker_url=url, reply_secret=SECRET, **settings))


def chunks_in(raw: bytes) -> int:
    """How many chunks a queued message carries (a batch message: several)."""
    args = wire.loads(base64.b64decode(json.loads(raw)["body"]))[0]
    return len(args[0]) if isinstance(args[0], list) else 1


def swapped(raw: bytes, chunk: Any, index: int | None = None) -> bytes:
    """A copy of a queued message, as a queue reader without the secret makes it: the same id, reply list and seal,
    another chunk (the ``index``-th of a batch message); a delivery tag of its own."""
    envelope = json.loads(raw)
    args, kwargs, embed = wire.loads(base64.b64decode(envelope["body"]))
    if index is None:
        args[0] = chunk
    else:
        args[0][index][2] = chunk
    envelope["body"] = base64.b64encode(wire.dumps([args, kwargs, embed])).decode()
    envelope["properties"]["delivery_tag"] = str(uuid.uuid4())
    return json.dumps(envelope).encode()


def test_with_a_reply_secret_a_chunk_swapped_by_a_queue_reader_is_refused_unrun_and_the_producer_gets_its_own(
    stack: ExitStack,
) -> None:
    redis = server(stack)
    admin = connect(redis.url)
    e, done, errors = sealed_emitter(redis.url)
    e.write(b"mine")
    wait_for(lambda: admin.llen("celery") == 1, 10, "published")
    victim = admin.lindex("celery", 0)
    assert "ocycle_seal" in json.loads(victim)["headers"]
    admin.rpush("celery", swapped(victim, b"evil"))  # taken first: popped from the right
    executor = e.executor
    assert executor is not None
    w = sealed_worker(stack, redis.url)
    assert e.close(timeout=30) == 0
    assert [r[0] for r in done] == [b"mine"] and errors == []  # was: [b"evil"], believed
    wait_for(lambda: dead_kinds(admin) == ["forged"], 10, "the forged message refused and kept")
    assert executor.counts["forged"] == 0 and executor.hub.listener.unclaimed == 0  # nothing was replied for it
    assert "refused a message from queue 'celery' (forged)" in w.log.read_text()


def test_with_a_reply_secret_one_chunk_swapped_in_a_batch_or_a_drained_message_is_refused_and_the_rest_runs(
    stack: ExitStack,
) -> None:
    redis = server(stack)
    admin = connect(redis.url)
    e, done, errors = sealed_emitter(redis.url)
    for i in range(10):  # no worker: one batch message
        e.write(b"b%03d" % i)
    executor = e.executor
    assert executor is not None
    wait_for(lambda: executor.counts["published"] == 10, 10, "published")
    messages = executor.counts["messages"]  # one batch message, or two when the publisher woke for the first chunk
    assert messages < 10
    batch = max(admin.lrange("celery", 0, -1), key=chunks_in)
    assert chunks_in(batch) >= 4
    admin.rpush("celery", swapped(batch, b"evil", index=3))  # taken first
    plain = []
    for i in range(8):  # then plain messages, one at a time, each a message of its own
        e.write(b"p%03d" % i)
        wait_for(lambda i=i: executor.counts["messages"] == messages + 1 + i, 10, "a plain message")
        plain.append(admin.lindex("celery", 0))
    admin.linsert("celery", "AFTER", plain[6], swapped(plain[6], b"evil"))  # popped before the real one
    w = sealed_worker(stack, redis.url)
    assert e.close(timeout=60) == 0 and errors == []
    assert sorted(r[0] for r in done) == sorted([b"b%03d" % i for i in range(10)] + [b"p%03d" % i for i in range(8)])
    wait_for(lambda: dead_kinds(admin) == ["forged", "forged"], 10, "both forged chunks refused and kept")
    by = {json.loads(r)["worker"].rsplit("/", 1)[1] for r in admin.lrange(DEAD_KEY, 0, -1)}
    assert str(w.pid) not in by  # refused by the pool process: in the batch's run, and in a drain
    assert executor.counts["forged"] == 0


def test_with_a_reply_secret_a_result_that_does_not_answer_the_chunk_sent_is_ignored_and_counted(
    stack: ExitStack,
) -> None:
    from ocycle_dist.remote.protocol import seal

    redis = server(stack)
    admin = connect(redis.url)
    e, done, _ = sealed_emitter(redis.url)
    e.write(b"real")
    executor = e.executor
    assert executor is not None
    wait_for(lambda: admin.llen("celery") == 1, 10, "published")
    message = json.loads(admin.lindex("celery", 0))
    task_id, reply_to = message["headers"]["id"], message["properties"]["reply_to"]
    key = mac_key(SECRET, token_of(reply_to))  # what a worker that does not check seals would write
    admin.rpush(reply_to, seal({"id": task_id, "ok": True, "result": [b"other", 0.0]}, key))  # no digest
    admin.rpush(reply_to, seal({"id": task_id, "ok": True, "result": [b"other", 0.0], "digest": bytes(32)}, key))
    wait_for(lambda: executor.counts["forged"] == 2, 10, "both results refused")
    assert done == []
    sealed_worker(stack, redis.url)
    assert e.close(timeout=30) == 0 and [r[0] for r in done] == [b"real"]


def test_with_a_reply_secret_a_claimed_chunk_swapped_under_its_key_is_refused(stack: ExitStack) -> None:
    from ocycle_dist.errors import RemoteTaskError

    redis = server(stack)
    admin = connect(redis.url)
    errors: list[BaseException] = []
    e = ocycle.BufferEmit(
        "contract.echo_t0", 200_000, clip=True, mode="celery", on_error=errors.append,
        settings=Settings(broker_url=redis.url, reply_secret=SECRET),
    )  # fmt: skip
    e.write(b"x" * 200_000)  # over claim_threshold: the message carries a claim check
    wait_for(lambda: admin.llen("celery") == 1, 10, "published")
    [key] = admin.keys("ocycle:chunk:*")
    admin.set(key, b"y" * 200_000, keepttl=True)
    sealed_worker(stack, redis.url)
    assert e.close(timeout=30) == 0
    [error] = errors
    assert isinstance(error, RemoteTaskError) and error.type_name == "EncodeError"
    assert "is not the one its message was sealed with" in error.message


def test_celerys_inspect_conf_shows_neither_the_reply_secret_nor_the_brokers_password(stack: ExitStack) -> None:
    from ocycle_dist.remote.worker import make_app

    redis = server(stack)
    sealed_worker(stack, redis.url)
    app = make_app(Settings(broker_url=redis.url))  # anyone who can publish to Redis can ask this
    conf = app.control.inspect(timeout=5).conf() or {}
    [(_, shown)] = conf.items()
    text = json.dumps(shown)
    assert "ocycle_settings" in text and SECRET not in text and PASSWORD not in text  # was: the secret, in clear


def test_the_documented_producer_acl_is_all_a_producer_needs(stack: ExitStack, caplog: Any) -> None:
    from ocycle_dist.remote.liveness import locate

    doc = (ROOT / "docs" / "security.md").read_text()
    line = next(x for x in doc.splitlines() if x.startswith("ACL SETUSER producer "))
    redis = server(stack)
    admin = connect(redis.url)
    admin.execute_command(*line.split())
    worker(stack, redis.url)
    url = redis.url.replace(f":{PASSWORD}@", ":producer-pw@").replace("redis://", "redis://producer")
    with caplog.at_level("DEBUG", logger="ocycle_dist"):
        e, done, errors = emitter(url)
        e.write(b"tiny")
        big = ocycle.BufferEmit("contract.echo_t0", 200_000, clip=True, mode="celery", broker=url, on_done=done.append)
        big.write(b"b" * 200_000)  # a claimed chunk: SET, then DEL once its result is in
        assert e.close(timeout=30) == 0 and big.close(timeout=30) == 0 and errors == []
        client = connect(url)
        assert locate(client, {"celery": {"no-such-tag"}}) == set()  # Lua allowed: not "assume still queued"
        assert int(client.info("stats")["evicted_keys"]) == 0  # the eviction watch's read
    assert sorted(len(r[0]) for r in done) == [4, 200_000]
    wait_for(lambda: not admin.keys("ocycle:chunk:*"), 10, "the claimed chunk deleted")
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "NOPERM" in line or "no permissions" in line] == []
