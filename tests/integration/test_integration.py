"""mode='celery' against a real redis-server and real `celery -A workers worker` processes."""

from __future__ import annotations

import base64
import json
import pickle
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ocycle_dist as ocycle
from ocycle_dist.remote.protocol import CHUNK_PREFIX, DEAD_KEY
from ocycle_dist.remote.redis_client import connect
from tests.support.helpers import wait_for


def test_bytes_round_trip_exactly_with_t0_and_meta(topology: Any) -> None:
    got: dict[int, Any] = {}
    payload = bytes(range(256)) * 8  # not UTF-8: base64 territory for stock JSON
    with ocycle.BufferEmit(
        "tests.echo",
        1000,
        clip=True,
        mode="celery",
        broker=topology.url,
        on_done=lambda r, meta: got.__setitem__(meta.seq, r),
    ) as b:
        b.write(payload, t0=100.0)
    assert sorted(got) == [0, 1]
    assert got[0] == [payload[:1000], 100.0] and got[1] == [payload[1000:2000], 100.0]


def test_numpy_dtype_and_shape_round_trip(topology: Any) -> None:
    got: list[Any] = []
    frames = np.arange(24000, dtype=np.int16).reshape(-1, 2)
    with ocycle.NumpyEmit(
        "tests.echo", 4000, clip=True, rate=8000, mode="celery", broker=topology.url, on_done=got.append
    ) as b:
        b.write(frames, t0=10.0)
    got.sort(key=lambda r: r[1])
    assert [r[1] for r in got] == pytest.approx([10.0, 10.5, 11.0])
    for i, (chunk, _) in enumerate(got):
        assert chunk.dtype == np.int16 and chunk.shape == (4000, 2)
        np.testing.assert_array_equal(chunk, frames[i * 4000 : (i + 1) * 4000])


@pytest.mark.parametrize("one_by_one", [False, True], ids=["in-a-batch-message", "a-message-each"])
@pytest.mark.parametrize("kind", ["bytes", "numpy"])
def test_large_chunks_go_by_claim_check_and_are_cleaned_up(topology: Any, kind: str, one_by_one: bool) -> None:
    """1 MiB chunks (bytes, or float32 arrays) stored raw under their claim keys, fetched by the workers, the
    keys deleted once their results are in; sent three in one batch message, or one message each."""
    admin = connect(topology.url)
    before = set(admin.scan_iter(CHUNK_PREFIX + "*"))  # the session's Redis is shared with other tests
    got: list[Any] = []
    data: Any = np.random.default_rng(1).bytes(3 << 20)
    size = 1 << 20
    if kind == "numpy":
        data, size = np.frombuffer(data, dtype="<f4").copy(), size // 4
    with ocycle.BufferEmit(
        "tests.echo",
        size,
        clip=True,
        mode="celery",
        new=ocycle.NumpyIO if kind == "numpy" else None,
        broker=topology.url,
        stream=f"big-{uuid.uuid4().hex[:6]}",
        on_done=lambda r: got.append(r[0]),
    ) as b:
        if one_by_one:
            for i in range(3):
                b.write(data[i * size : (i + 1) * size])
                assert b.wait(60)
        else:
            with b.executor.hub.table.lock:  # type: ignore[union-attr]  # the publisher waits: the three are pending together
                b.write(data)
            assert b.wait(60)
        spool = b.executor.spool  # type: ignore[union-attr]
        counts = b.executor.counts  # type: ignore[union-attr]
    assert (counts["messages"], counts["batched"]) == ((3, 0) if one_by_one else (1, 3))
    if kind == "numpy":
        assert all(chunk.dtype == np.float32 for chunk in got)
        np.testing.assert_array_equal(
            np.concatenate(sorted(got, key=lambda c: data.tobytes().index(c.tobytes()))), data
        )
    else:
        assert b"".join(sorted(got, key=data.index)) == data
    assert set(admin.scan_iter(CHUNK_PREFIX + "*")) - before == set()
    assert len(spool) == 0


def test_a_backlogs_chunks_travel_by_claim_check_in_their_batch_message_and_are_cleaned_up(topology: Any) -> None:
    """8 KiB chunks, pending together: one batch message carrying their keys (over ``batch_claim_threshold``),
    the chunks fetched by the worker in one MGET, the keys deleted once the results are in."""
    admin = connect(topology.url)
    before = set(admin.scan_iter(CHUNK_PREFIX + "*"))
    got: list[Any] = []
    data = np.random.default_rng(2).bytes(10 * 8192)
    with ocycle.BufferEmit(
        "tests.echo",
        8192,
        clip=True,
        mode="celery",
        broker=topology.url,
        stream=f"backlog-{uuid.uuid4().hex[:6]}",
        on_done=lambda r: got.append(r[0]),
    ) as b:
        with b.executor.hub.table.lock:  # type: ignore[union-attr]  # the publisher waits: the ten are pending together
            b.write(data)
        assert b.wait(60)
        counts = b.executor.counts  # type: ignore[union-attr]
    assert (counts["messages"], counts["batched"]) == (1, 10)
    assert b"".join(sorted(got, key=data.index)) == data
    assert set(admin.scan_iter(CHUNK_PREFIX + "*")) - before == set()


def test_remote_failure_reaches_on_error_with_type_and_message_and_stream_goes_on(topology: Any) -> None:
    errors: list[BaseException] = []
    with ocycle.BufferEmit("tests.fail", 4, clip=True, mode="celery", broker=topology.url, on_error=errors.append) as b:
        b.write(b"abcdefgh")
        b.write(b"ijkl")
    assert len(errors) == 3
    assert all(isinstance(e, ocycle.RemoteTaskError) and e.type_name == "ValueError" for e in errors)
    assert "failing on purpose on a chunk of 4 elements" in str(errors[0])
    assert b.stats().failed == 3 and b.stats().done == 0


def test_thousands_in_flight_all_come_back_once(topology: Any) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def on_done(result: Any, meta: ocycle.Chunk) -> None:
        with lock:
            seen.append(meta.seq)

    n = 3000
    with ocycle.BufferEmit(
        "tests.echo", 16, clip=True, mode="celery", broker=topology.url, max_inflight=n, on_done=on_done
    ) as b:
        for i in range(n):
            b.write(i.to_bytes(16, "big"))
        assert b.stats().in_flight > 100  # writes did not wait for the workers
    assert sorted(seen) == list(range(n))
    stats = b.stats()
    assert (stats.emitted, stats.done, stats.in_flight) == (n, n, 0)


def test_write_does_not_wait_on_the_network(topology: Any) -> None:
    admin = connect(topology.url)
    got: list[Any] = []
    b = ocycle.BufferEmit("tests.echo", 8, clip=True, mode="celery", broker=topology.url, on_done=got.append)
    b.write(b"warm-up!")
    assert b.wait(30)
    admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")  # Redis answers nobody for 3 s
    paused_at = time.monotonic()
    for _ in range(50):
        b.write(b"12345678")
    written_in = time.monotonic() - paused_at
    b.close()
    assert written_in < 1.0, f"50 writes took {written_in:.2f} s while Redis was paused"
    assert len(got) == 51


def test_listener_survives_a_broker_reconnect_without_losing_results(topology: Any) -> None:
    admin = connect(topology.url)
    got: list[int] = []
    gate = threading.Event()

    def on_done(result: Any, meta: ocycle.Chunk) -> None:
        got.append(meta.seq)
        if len(got) == 20:
            gate.set()

    b = ocycle.BufferEmit(
        "tests.echo", 4, clip=True, mode="celery", broker=topology.url, on_done=on_done, max_inflight=1000
    )
    for i in range(20):
        b.write(i.to_bytes(4, "big"))
    assert gate.wait(30)
    listener = b.executor.hub.listener
    killed = admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert killed >= 1
    for i in range(20, 200):
        b.write(i.to_bytes(4, "big"))
    b.close()
    assert sorted(got) == list(range(200))
    assert listener.reconnects >= 1


def test_a_pickle_message_is_refused_and_never_executed(topology: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    task_id = str(uuid.uuid4())
    body = pickle.dumps(((Exploit(), 0.0), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}))
    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {
            "lang": "py",
            "task": "tests.echo",
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "timelimit": [None, None],
            "eta": None,
            "expires": None,
            "argsrepr": "",
            "kwargsrepr": "",
            "origin": "test",
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    admin = connect(topology.url)

    def refused() -> list[Any]:  # what the workers refused and kept for inspection
        return [r for r in map(json.loads, admin.lrange(DEAD_KEY, 0, -1)) if task_id in r["raw"]]

    admin.lpush("celery", json.dumps(message))
    wait_for(refused, 30, "a worker refusing the pickle message")
    [kept] = refused()
    assert kept["kind"] == "content-type" and "application/x-python-serialize" in kept["why"]
    assert not marker.exists()
    # and the workers still work
    got: list[Any] = []
    with ocycle.BufferEmit("tests.echo", 2, mode="celery", broker=topology.url, on_done=got.append) as b:
        b.write(b"ok")
    assert got == [[b"ok", pytest.approx(got[0][1])]]
