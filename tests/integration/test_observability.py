"""What an operator sees, against real processes: each chunk of a batch or a drain as its own task in the
events Flower reads, the workers' metrics endpoint, ``ocycle-dist status`` on every queue (also one no running
worker consumes), and ``ocycle-dist purge`` telling each producer at once."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.app import cli
from ocycle_dist.errors import RemoteTaskError
from ocycle_dist.remote.settings import Settings
from ocycle_dist.remote.worker import make_app
from ocycle_dist.testing import RedisServer
from tests.integration.test_batching import start_worker
from tests.support.helpers import wait_for

pytestmark = pytest.mark.usefixtures("redis_server_required")


@pytest.fixture
def rig() -> Iterator[ExitStack]:
    """What a test starts (servers, workers), stopped at its end."""
    with ExitStack() as s:
        yield s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backlog(url: str, n: int, *, queue: str = "celery", **options: Any) -> ocycle.BufferEmit:
    """An emitter with ``n`` chunks published and no worker yet (they go in batch messages)."""
    emitter = ocycle.BufferEmit("contract.reverse", 4, clip=True, mode="celery",
                                settings=Settings(broker_url=url, queue=queue), **options)  # fmt: skip
    for i in range(n):
        emitter.write(b"%04d" % i)
    executor = emitter.executor
    assert executor is not None
    wait_for(lambda: executor.counts["published"] == n, 10, "the backlog published")
    return emitter


def test_each_chunk_of_batches_and_drains_sends_its_own_task_events_and_is_counted(rig: ExitStack) -> None:
    redis = rig.enter_context(RedisServer())
    events: list[dict[str, Any]] = []
    app = make_app(Settings(broker_url=redis.url))
    ready, stop = threading.Event(), threading.Event()

    def listen() -> None:  # what Flower does: an event receiver on the broker
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": events.append})
            ready.set()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    receiver.capture(limit=None, timeout=1, wakeup=False)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    rig.callback(listener.join, 10)
    rig.callback(stop.set)  # before the server stops
    assert ready.wait(10)

    def heard_a_probe() -> bool:  # the receiver subscribes once capture() runs: an event sent before is lost
        with app.events.default_dispatcher() as dispatcher:
            dispatcher.send("ocycle-probe")
        time.sleep(0.1)
        return any(e.get("type") == "ocycle-probe" for e in events)

    wait_for(heard_a_probe, 10, "the event receiver subscribed")
    emitter = backlog(redis.url, 60, stream=f"ev-{uuid.uuid4().hex[:6]}")
    port = free_port()
    executor = emitter.executor
    assert executor is not None
    start_worker(rig, redis.url, "eventful", extra=["-E"], env={"OCYCLE_WORKER_METRICS_PORT": str(port)})
    assert emitter.close(timeout=60) == 0
    assert executor.counts["batched"] >= 40  # the chunks travelled in batch messages

    def of(kind: str) -> dict[str, dict[str, Any]]:
        return {e["uuid"]: e for e in events if e.get("type") == kind}

    def names(name: str) -> set[str]:
        return {uuid for uuid, e in of("task-received").items() if e["name"] == name}

    def settled() -> bool:  # events come from the worker and its pool child: wait until each task's three arrived
        known = names("contract.reverse") | names("ocycle.batch")
        return len(names("contract.reverse")) == 60 and set(of("task-started")) == known == set(of("task-succeeded"))

    wait_for(settled, 20, lambda: f"{sorted({e['type'] for e in events})}, last: {events[-3:]}")
    chunks, batches = names("contract.reverse"), names("ocycle.batch")
    received = of("task-received")
    seqs = sorted(int(m[1]) for u in chunks if (m := re.search(r"#(\d+) len=4>", received[u]["args"])))
    assert seqs == list(range(60))  # each chunk its own task, with its argument summary
    assert batches  # the batch messages show too, as themselves
    assert set(of("task-started")) == chunks | batches == set(of("task-succeeded"))
    assert all(of("task-succeeded")[u]["runtime"] >= 0 and of("task-succeeded")[u]["result"].startswith("b'")
               for u in chunks)  # fmt: skip

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    counts = {p: float(m[1]) for p in ("message", "batch", "drain")
              if (m := re.search(rf'ocycle_worker_chunks_total{{path="{p}"}} ([\d.]+)', text))}  # fmt: skip
    assert sum(counts.values()) == 60 and counts["batch"] >= 40, counts
    assert 'ocycle_queue_messages{queue="celery"} 0.0' in text
    assert "ocycle_worker_reply_retries_total 0.0" in text


def test_status_lists_every_queue_with_its_backlog_and_the_oldest_age(
    rig: ExitStack, capsys: pytest.CaptureFixture[str]
) -> None:
    redis = rig.enter_context(RedisServer())
    gone = start_worker(rig, redis.url, "gone", queues="retired")
    gone.stop()  # a queue a worker once consumed: its binding stays in Redis
    start_worker(rig, redis.url, "spl", queues="spl")
    emitter = ocycle.BufferEmit("contract.reverse", 4, clip=True, mode="celery",
                                settings=Settings(broker_url=redis.url, queue="model", batch_max_chunks=0))  # fmt: skip
    for i in range(3):
        emitter.write(b"%04d" % i)
    time.sleep(1.2)  # the oldest has waited at least this long
    assert cli.main(["status", "--broker", redis.url]) == 0
    out = capsys.readouterr().out
    model = re.search(
        r"queue 'model': 3 messages waiting, oldest waiting ([\d.]+) s; NO running worker consumes it", out
    )
    assert model and float(model[1]) >= 1.0, out
    assert re.search(r"queue 'spl': 0 messages waiting, oldest waiting 0.0 s; 1 worker\(s\) consume it", out), out
    for queue in ("archive", "celery", "retired"):
        assert re.search(rf"queue '{queue}': 0 messages waiting, .*NO running worker consumes it", out), (queue, out)
    emitter.close(wait=False)


def test_purge_tells_each_producer_at_once(rig: ExitStack, capsys: pytest.CaptureFixture[str]) -> None:
    redis = rig.enter_context(RedisServer())
    errors: list[BaseException] = []
    emitter = backlog(redis.url, 40, queue="model", on_error=errors.append)
    assert emitter.executor is not None
    messages = emitter.executor.counts["messages"]
    purged_at = time.monotonic()
    assert cli.main(["purge", "-Q", "model", "--broker", redis.url]) == 0
    assert f"queue 'model': {messages} messages purged, 40 chunks answered 'Purged'" in capsys.readouterr().out
    assert emitter.close(timeout=30) == 0  # none left in flight: counted failed, long before resend_after
    took = time.monotonic() - purged_at
    stats = emitter.stats()
    assert (stats.failed, stats.done, stats.in_flight) == (40, 0, 0)
    assert len(errors) == 40 and all(isinstance(e, RemoteTaskError) and e.type_name == "Purged" for e in errors)
    assert took < 10 < Settings().resend_after
