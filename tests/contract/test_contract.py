"""The contract every executor keeps: one suite, run once per mode (the ``mode`` fixture in conftest).

Callbacks are module-level functions so that process workers can unpickle them; results are collected by
``on_done``/``on_error``, which run in the producer process.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist import Chunk

WRITES = [(b"abc", 100.0), (b"defgh", 101.0), (b"ij", 102.0), (b"klmnopq", 103.0)]


# ---- callbacks (module level: picklable) -----------------------------------------------------------


def reverse(value: bytes, t0: float) -> bytes:
    return value[::-1]


def echo_t0(value: bytes, t0: float) -> tuple[bytes, float]:
    return value, t0


def echo_meta(value: bytes, t0: float, meta: Chunk) -> tuple[bytes, float, Chunk]:
    return value, t0, meta


def fail_on_b(value: bytes, t0: float) -> bytes:
    if value.startswith(b"b"):
        raise ValueError(f"chunk {value!r} starts with b")
    return value


def read_buffer(buffer: Any, t0: float) -> tuple[bool, bytes]:
    return callable(getattr(buffer, "read", None)), buffer.getvalue()


def tuplify(value: Any) -> Any:
    """Lists as tuples: msgpack, like JSON, brings a remote task's tuples back as lists."""
    return tuple(tuplify(v) for v in value) if isinstance(value, (list, tuple)) else value


def error_of(exc: BaseException) -> tuple[str, str]:
    """(type name, message) of a callback's exception, raised here or on a worker."""
    if isinstance(exc, ocycle.RemoteTaskError):
        return exc.type_name, exc.message
    return type(exc).__name__, str(exc)


class Collector:
    """``on_done``/``on_error`` that keep what they get, with the chunk's metadata."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: list[tuple[Chunk, Any]] = []
        self.errors: list[tuple[Chunk, BaseException]] = []

    def on_done(self, result: Any, meta: Chunk) -> None:
        with self.lock:
            self.done.append((meta, tuplify(result)))

    def on_error(self, exc: BaseException, meta: Chunk) -> None:
        with self.lock:
            self.errors.append((meta, exc))

    @property
    def results(self) -> list[Any]:
        """Results in stream order (pools may finish out of order)."""
        return [result for _, result in sorted(self.done, key=lambda d: d[0].seq)]

    @property
    def metas(self) -> list[Chunk]:
        return sorted(meta for meta, _ in self.done)


@pytest.fixture
def got() -> Collector:
    return Collector()


def write_all(emitter: ocycle.BufferEmit, writes: list[tuple[bytes, float]] = WRITES) -> None:
    for data, t0 in writes:
        emitter.write(data, t0=t0)


# ---- chunks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clip", "expected"),
    [
        (False, [b"abcdefgh", b"ijklmnopq"]),
        (True, [b"abcd", b"efgh", b"ijkl", b"mnop"]),
    ],
)
def test_chunks_reach_on_done_with_exact_values(make_emitter, got, clip, expected):
    b = make_emitter(reverse, 4, clip=clip, on_done=got.on_done)
    write_all(b)
    b.close()
    assert got.results == [chunk[::-1] for chunk in expected]
    assert b.stats().buffered == (1 if clip else 0)


def test_hop_gives_overlapping_windows(make_emitter, got):
    b = make_emitter(reverse, 4, hop=2, on_done=got.on_done)
    write_all(b)
    b.close()
    data = b"".join(d for d, _ in WRITES)
    assert got.results == [data[s : s + 4][::-1] for s in range(0, len(data) - 3, 2)]
    assert [m.start for m in got.metas] == list(range(0, len(data) - 3, 2))


def test_t0_of_the_write_holding_the_first_element(make_emitter, got):
    b = make_emitter(echo_t0, 4, clip=True, on_done=got.on_done)
    write_all(b)
    b.close()
    # abcd starts in write 0; efgh in write 1 (e); ijkl in write 2; mnop in write 3
    assert got.results == [(b"abcd", 100.0), (b"efgh", 101.0), (b"ijkl", 102.0), (b"mnop", 103.0)]


def test_t0_with_rate_is_offset_into_the_write(make_emitter, got):
    b = make_emitter(echo_t0, 4, clip=True, rate=2.0, on_done=got.on_done)
    write_all(b)
    b.close()
    # starts 0, 4, 8, 12; writes start at 0, 3, 8, 10
    assert [t for _, t in got.results] == pytest.approx([100.0, 101.5, 102.0, 104.0])


def test_meta_reaches_callback_and_on_done(make_emitter, got):
    b = make_emitter(echo_meta, 4, clip=True, stream="mic", on_done=got.on_done)
    write_all(b)
    b.close()
    expected = [
        Chunk("mic", 0, 100.0, 4, 0, False),
        Chunk("mic", 1, 101.0, 4, 4, False),
        Chunk("mic", 2, 102.0, 4, 8, False),
        Chunk("mic", 3, 103.0, 4, 12, False),
    ]
    assert got.metas == expected
    assert [meta for _, _, meta in got.results] == expected  # the callback got the same meta
    assert all(isinstance(meta, Chunk) for meta in got.metas)


def test_on_done_without_meta_gets_only_the_result(make_emitter):
    seen: list[Any] = []
    lock = threading.Lock()

    def on_done(result):
        with lock:
            seen.append(result)

    b = make_emitter(reverse, 4, clip=True, on_done=on_done)
    b.write(b"abcdefgh", t0=1.0)
    b.close()
    assert sorted(seen) == [b"dcba", b"hgfe"]


def test_on_error_gets_the_exception_and_the_stream_goes_on(make_emitter, got):
    b = make_emitter(fail_on_b, 2, clip=True, on_done=got.on_done, on_error=got.on_error)
    b.write(b"aabbcc", t0=1.0)
    b.write(b"bbdd", t0=2.0)
    b.close()
    assert got.results == [b"aa", b"cc", b"dd"]
    errors = sorted(got.errors, key=lambda e: e[0].seq)
    assert [(meta.seq, *error_of(exc)) for meta, exc in errors] == [
        (1, "ValueError", "chunk b'bb' starts with b"),
        (3, "ValueError", "chunk b'bb' starts with b"),
    ]
    stats = b.stats()
    assert (stats.emitted, stats.done, stats.failed) == (5, 3, 2)


def test_stats_add_up(make_emitter, got):
    b = make_emitter(fail_on_b, 3, clip=True, on_done=got.on_done, on_error=got.on_error)
    for i in range(20):
        b.write(b"abxyz"[i % 5 :] + b"q", t0=float(i))
        s = b.stats()
        assert s.emitted == s.in_flight + s.done + s.failed + s.dropped
    b.close()
    s = b.stats()
    assert s.in_flight == 0
    assert s.emitted == s.done + s.failed > 0
    assert s.failed == len(got.errors) > 0
    assert s.done == len(got.done) > 0
    assert s.written == sum(len(b"abxyz"[i % 5 :]) + 1 for i in range(20))
    assert s.written == 3 * s.emitted + s.buffered


def test_close_flush_emits_the_partial_last_chunk(make_emitter, got):
    b = make_emitter(echo_meta, 4, clip=True, on_done=got.on_done)
    b.write(b"abcdef", t0=5.0)
    b.write(b"g", t0=6.0)
    b.close(flush=True)
    assert [value for value, _, _ in got.results] == [b"abcd", b"efg"]
    assert [(m.partial, m.length, m.start, m.t0) for m in got.metas] == [(False, 4, 0, 5.0), (True, 3, 4, 5.0)]
    assert b.stats().buffered == 0


def test_close_without_flush_keeps_the_partial_chunk(make_emitter, got):
    b = make_emitter(echo_meta, 4, clip=True, on_done=got.on_done)
    b.write(b"abcdef", t0=5.0)
    b.close()
    assert [m.partial for m in got.metas] == [False]
    assert b.stats().buffered == 2


def test_asbuffer_hands_a_file_like_object(make_emitter, got, mode):
    if mode == "celery":  # a remote task gets the value: a local buffer object cannot travel
        with pytest.raises(ocycle.ConfigError, match="asbuffer"):
            make_emitter(read_buffer, 4, asbuffer=True)
        return
    b = make_emitter(read_buffer, 4, clip=True, asbuffer=True, on_done=got.on_done)
    b.write(b"abcdefghij", t0=1.0)
    b.write(b"kl", t0=2.0)
    b.close()
    assert got.results == [(True, b"abcd"), (True, b"efgh"), (True, b"ijkl")]


def test_wait_returns_when_nothing_is_in_flight(make_emitter, got):
    b = make_emitter(reverse, 2, clip=True, on_done=got.on_done)
    b.write(b"abcdef", t0=1.0)
    assert b.wait(timeout=30) is True
    assert b.stats().in_flight == 0
    assert got.results == [b"ba", b"dc", b"fe"]
    b.close()


def test_context_manager_opens_and_closes(mode, mode_options, task, got):
    with ocycle.BufferEmit(task(reverse), 3, clip=True, mode=mode, on_done=got.on_done, **mode_options) as b:
        b.write(b"abcdefg", t0=1.0)
    assert got.results == [b"cba", b"fed"]
    assert b.stats().in_flight == 0
    with pytest.raises(ocycle.ClosedError):
        b.write(b"x")


# ---- overload (thread mode: callbacks that block on an Event) -------------------------------------------


class Gate:
    """A callback that records each chunk and blocks until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.ran: list[bytes] = []

    def __call__(self, value: bytes, t0: float) -> bytes:
        self.ran.append(value)
        self.started.set()
        assert self.release.wait(30), "the test never released the gate"
        return value


def test_drop_newest_counts_and_never_runs_the_dropped():
    gate = Gate()
    got = Collector()
    b = ocycle.BufferEmit(gate, 2, clip=True, mode="thread", max_inflight=1, policy="drop_newest", on_done=got.on_done)
    try:
        b.write(b"aa", t0=1.0)
        assert gate.started.wait(30)
        b.write(b"bbcc", t0=2.0)  # both chunks find the only slot taken
        assert b.stats().dropped == 2
        assert b.stats().in_flight == 1
    finally:
        gate.release.set()
        b.close()
    assert gate.ran == [b"aa"]
    assert got.results == [b"aa"]
    s = b.stats()
    assert (s.emitted, s.done, s.dropped, s.in_flight) == (3, 1, 2, 0)


def test_drop_oldest_drops_a_queued_chunk_not_the_running_one():
    gate = Gate()
    got = Collector()
    b = ocycle.BufferEmit(
        gate, 2, clip=True, mode="thread", npool=1, max_inflight=2, policy="drop_oldest", on_done=got.on_done
    )
    try:
        b.write(b"aa", t0=1.0)
        assert gate.started.wait(30)  # aa runs on the only worker
        b.write(b"bb", t0=2.0)  # queued
        b.write(b"cc", t0=3.0)  # full: bb, queued and not started, is dropped
        assert b.stats().dropped == 1
    finally:
        gate.release.set()
        b.close()
    assert gate.ran == [b"aa", b"cc"]
    assert got.results == [b"aa", b"cc"]
    assert [m.seq for m in got.metas] == [0, 2]
    s = b.stats()
    assert (s.emitted, s.done, s.dropped, s.in_flight) == (3, 2, 1, 0)


def test_block_makes_write_wait_for_a_free_slot():
    gate = Gate()
    got = Collector()
    b = ocycle.BufferEmit(gate, 2, clip=True, mode="thread", max_inflight=1, policy="block", on_done=got.on_done)
    returned = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            b.write(b"bb", t0=2.0)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
        returned.set()

    try:
        b.write(b"aa", t0=1.0)
        assert gate.started.wait(30)
        thread = threading.Thread(target=writer)
        thread.start()
        # a negative check: the write must not return while the slot is taken
        assert not returned.wait(0.3)
        assert gate.ran == [b"aa"]
        assert b.stats().in_flight == 1
    finally:
        gate.release.set()
    assert returned.wait(30)
    thread.join(30)
    b.close()
    assert failures == []
    assert gate.ran == [b"aa", b"bb"]
    assert got.results == [b"aa", b"bb"]
    assert b.stats().dropped == 0
