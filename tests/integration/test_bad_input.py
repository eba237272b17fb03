"""The bad-input table of docs/errors.md, a test per row not covered elsewhere (see test_errors, test_unit_dist).

Each error names what is wrong, is raised at the call that caused it, and loses no earlier chunk.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import ocycle_dist as ocycle
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import RedisServer, Worker


@pytest.fixture(scope="module")
def strict_worker(topology: Any) -> Iterator[Settings]:
    """A worker on its own queue that accepts chunks of at most 1000 bytes, with tests.support.bad_tasks."""
    env = {"OCYCLE_QUEUE": "strict", "OCYCLE_MAX_CHUNK_BYTES": "1000"}
    include = ("tests.support.tasks", "tests.support.bad_tasks")
    worker = Worker(topology.url, name="strict", env=env, include=include).start()
    try:
        yield Settings(broker_url=topology.url, queue="strict")
    finally:
        worker.stop()


def collect(emitter_kwargs: dict[str, Any]) -> tuple[list[Any], list[BaseException], dict[str, Any]]:
    done: list[Any] = []
    errors: list[BaseException] = []
    return done, errors, {**emitter_kwargs, "on_done": done.append, "on_error": errors.append}


def test_malformed_broker_url_fails_at_construction() -> None:
    with pytest.raises(ocycle.ConfigError, match=r"broker='redis//localhost' is invalid"):
        ocycle.BufferEmit("tests.echo", 4, mode="celery", broker="redis//localhost")
    with pytest.raises(ocycle.ConfigError, match=r"broker='http://x' is invalid: expected a redis://"):
        ocycle.BufferEmit("tests.echo", 4, mode="celery", broker="http://x")


@pytest.mark.parametrize("task", [42, None, 3.5, b"tests.echo"])
def test_a_task_that_is_not_a_name_or_a_task_fails_at_construction(task: Any) -> None:
    with pytest.raises(ocycle.ConfigError, match=r"callback=.* is invalid"):
        ocycle.BufferEmit(task, 4, mode="celery", broker="redis://127.0.0.1:9/0")


def test_a_chunk_over_the_producers_limit_is_a_failed_chunk_and_the_others_are_processed(topology: Any) -> None:
    done, errors, kw = collect({})
    settings = Settings(broker_url=topology.url, max_chunk_bytes=100)
    b = ocycle.BufferEmit("tests.echo", 50, mode="celery", settings=settings, **kw)
    b.write(b"x" * 50, t0=1.0)  # 50 bytes: fits
    b.write(b"w" * 30, t0=2.0)  # opens the next window
    b.write(b"y" * 90, t0=3.0)  # 120 bytes in one chunk (no clip): over; write() returns, on_error gets it
    b.write(b"z" * 60, t0=4.0)  # the stream goes on
    b.close()
    assert sorted(r[0] for r in done) == [b"x" * 50, b"z" * 60]  # workers answer in any order
    assert len(errors) == 1 and isinstance(errors[0], ocycle.EncodeError)
    assert re.fullmatch(r"chunk of 12\d bytes exceeds max_chunk_bytes=100", str(errors[0]))
    stats = b.stats()
    assert (stats.emitted, stats.done, stats.failed, stats.dropped, stats.in_flight) == (3, 2, 1, 0, 0)


def test_a_chunk_over_the_workers_limit_is_refused_there(strict_worker: Settings) -> None:
    done, errors, kw = collect({})
    with ocycle.BufferEmit("tests.echo", 600, clip=True, mode="celery", settings=strict_worker, **kw) as b:
        b.write(b"a" * 600)  # under 1000 bytes: runs
        b.write(b"b" * 600 + b"c" * 600)  # two chunks of 600: run
    assert len(done) == 3 and errors == []
    big = ocycle.BufferEmit("tests.echo", 1500, mode="celery", settings=strict_worker, **kw)
    big.write(b"d" * 1500)
    big.close()
    assert len(errors) == 1 and isinstance(errors[0], ocycle.RemoteTaskError)
    assert errors[0].type_name == "EncodeError"
    assert "exceeds max_chunk_bytes=1000" in errors[0].message


def test_a_result_that_cannot_be_encoded_reaches_on_error(strict_worker: Settings) -> None:
    done, errors, kw = collect({})
    with ocycle.BufferEmit("bad.unencodable", 4, mode="celery", settings=strict_worker, **kw) as b:
        b.write(b"abcd")
    assert done == [] and len(errors) == 1
    assert errors[0].type_name == "EncodeError"  # type: ignore[attr-defined]
    assert "the task's result cannot be sent back" in str(errors[0])


def test_numpy_object_arrays_are_refused_at_write_and_nothing_earlier_is_lost() -> None:
    got: list[Any] = []
    b = ocycle.NumpyEmit(lambda v, t0: got.append(v), 4, clip=True)
    b.write(np.arange(3.0))
    with pytest.raises(ocycle.FrameError, match="dtype object"):
        b.write(np.array([object(), object()]))
    b.write(np.arange(3.0, 6.0))
    assert len(got) == 1 and got[0].tolist() == [0.0, 1.0, 2.0, 3.0]


class LogSignal(logging.Handler):
    """Counts the log records containing ``text`` and sets ``seen`` at the first."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.count, self.seen = text, 0, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1
            self.seen.set()


def test_unreachable_broker_at_start_keeps_write_returning_and_says_so_once() -> None:
    from ocycle_dist.testing import free_port

    settings = Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    signal = LogSignal("Redis unreachable")
    logger = logging.getLogger("ocycle_dist.celery")
    logger.addHandler(signal)
    b = ocycle.BufferEmit("tests.echo", 4, clip=True, mode="celery", settings=settings)
    try:
        for _ in range(50):
            b.write(b"abcdefgh")
        assert signal.seen.wait(10)
        stats = b.stats()
        assert stats.in_flight == 100 and stats.spooled_bytes > 0 and stats.dropped == 0
        for _ in range(50):
            b.write(b"abcdefgh")
        assert signal.count == 1
    finally:
        logger.removeHandler(signal)
        b.executor.shutdown(wait=False, cancel_futures=True)
        b.close(wait=False)
    assert b.stats().dropped == 200  # given up on purpose: counted


def test_a_unix_socket_url_serves_the_producer_and_the_workers(redis_server_required: None) -> None:
    with RedisServer(password="sock-pw", unixsocket=True) as server:
        url = server.unix_url  # unix://:sock-pw@/tmp/.../redis.sock?db=0, redis-py's spelling
        env = {"OCYCLE_QUEUE": "unixq"}
        worker = Worker(url, name="unixsock", env=env, include=("tests.support.tasks",)).start()
        try:
            done, errors, kw = collect({})
            settings = Settings(broker_url=url, queue="unixq")
            with ocycle.BufferEmit("tests.echo", 4, clip=True, mode="celery", settings=settings, **kw) as b:
                b.write(b"abcdefgh", t0=1.0)
            assert sorted(r[0] for r in done) == [b"abcd", b"efgh"] and errors == []
            log = worker.log.read_text()
            assert "Connected to redis+socket://" in log and "No such transport" not in log
        finally:
            worker.stop()
            worker.log.unlink(missing_ok=True)
