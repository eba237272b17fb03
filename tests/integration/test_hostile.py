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
from ocycle_dist.remote.protocol import mac_key, reply_key, task_message, token_of, unseal
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import RedisServer, Worker, free_port
from tests.helpers import wait_for

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
    w = Worker(url, name=name, include=("tests.contract_tasks",))
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
    from ocycle_dist.cli import main

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
