"""Encoding chunks off the writer's thread: sizes known before encoding, the one-copy array encoding, and
the executor leaving a memory spool's ``bytes`` and numpy chunks to its publisher thread."""

from __future__ import annotations

import base64
import threading
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ocycle_dist as ocycle
from ocycle_dist.errors import EncodeError
from ocycle_dist.pieces import Pieces, joined
from ocycle_dist.remote import wire
from tests.support.dist_helpers import assert_accounted, queued, reply, settled
from tests.support.helpers import wait_for
from tests.unit.test_wire import ARRAYS


def generic(value: Any) -> bytes:
    """What msgpack makes of ``value`` through the wire's ``default`` hook (a chunk nested in a message)."""
    return msgpack.packb(value, default=wire._default, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_a_chunk_array_is_encoded_as_a_nested_one_and_its_size_is_known_beforehand(array: np.ndarray) -> None:
    encoded = wire.dumps(array)
    assert encoded == generic(array)  # the one-copy path writes the very bytes msgpack would
    assert wire.encoded_size(array) == len(encoded)
    back = wire.loads(encoded)
    assert back.dtype.str == array.dtype.str and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        dtype=st.one_of(
            hnp.integer_dtypes(), hnp.floating_dtypes(), hnp.complex_number_dtypes(), hnp.byte_string_dtypes()
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
    )
)
def test_any_plain_array_encodes_to_the_generic_bytes_of_the_size_announced(array: np.ndarray) -> None:
    encoded = wire.dumps(array)
    assert encoded == generic(array) and wire.encoded_size(array) == len(encoded)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 65535, 65536, 70000])
def test_the_size_of_bytes_is_known_across_msgpacks_header_sizes(n: int) -> None:
    value = bytes(n)
    assert wire.encoded_size(value) == len(wire.dumps(value))


@pytest.mark.parametrize(
    "value",
    [
        np.zeros(2, dtype=object),
        np.zeros(2, dtype=[("x", "<f8")]),
        np.zeros(2, dtype=np.dtype("<f4", metadata={"u": 1})),
    ],
    ids=["object", "structured", "metadata"],
)
def test_an_array_the_wire_refuses_is_refused_before_encoding_too(value: Any) -> None:
    with pytest.raises(EncodeError) as before:
        wire.encoded_size(value)
    with pytest.raises(EncodeError) as encoding:
        wire.dumps(value)
    assert str(before.value) == str(encoding.value)


@pytest.mark.parametrize("value", [[1, 2], "text", bytearray(b"ab"), np.ma.masked_array([1.0]), np.float32(1)])
def test_what_only_encoding_can_size_has_no_size_beforehand(value: Any) -> None:
    assert wire.encoded_size(value) is None


class Threads:
    """Wraps ``wire.dumps`` and ``Pieces.join``: the name of the thread that joined or encoded each numpy chunk."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_first: float | None = None) -> None:
        self.names: list[str] = []
        self.joins: list[str] = []
        self.fail_first = fail_first
        real_dumps, real_join = wire.dumps, Pieces.join

        def dumps(value: Any) -> bytes:
            if isinstance(value, (np.ndarray, Pieces)):
                self.names.append(threading.current_thread().name)
                if self.fail_first is not None and joined(value)[0] == self.fail_first:
                    raise EncodeError("this chunk cannot be encoded")
            return real_dumps(value)

        def join(pieces: Pieces) -> Any:
            self.joins.append(threading.current_thread().name)
            return real_join(pieces)

        monkeypatch.setattr(wire, "dumps", dumps)
        monkeypatch.setattr(Pieces, "join", join)


@pytest.mark.parametrize("hop", [4, 2], ids=["filled", "kept"])
def test_a_numpy_chunk_is_encoded_by_the_publisher_thread_not_the_writers(
    make: Any, admin: Any, monkeypatch: pytest.MonkeyPatch, hop: int
) -> None:
    threads = Threads(monkeypatch)
    emitter, got = make(new=ocycle.NumpyIO, size=4, hop=hop)
    n = 12 // hop - (4 // hop - 1)  # chunks the one write completes: 3 back to back, 5 overlapping
    emitter.write(np.arange(12, dtype="<f4"), t0=1.0)  # completed on this thread
    messages = wait_for(lambda: len(q := queued(admin)) == n and q, what="the chunks sent")
    assert threads.names == ["ocycle-publisher"] * n  # encoded there
    if hop == 4:  # back to back: each frame was copied into its chunks as it was written, nothing to join
        assert emitter.windows.fill and threads.joins == []
    else:  # overlapping: the frames are kept, and joined there: write() only sliced them
        assert not emitter.windows.fill and threads.joins == ["ocycle-publisher"] * n
    for i, message in enumerate(messages):
        args, _, _ = wire.loads(base64.b64decode(message["body"]))
        np.testing.assert_array_equal(args[0], np.arange(hop * i, hop * i + 4, dtype="<f4"))
        reply(admin, emitter.stream, message["headers"]["id"], result=i)
    assert emitter.wait(10)
    settled(emitter)
    assert got.done_seqs == list(range(n))
    assert_accounted(emitter, n)


def test_a_chunk_its_publisher_cannot_encode_fails_alone(
    make: Any, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    Threads(monkeypatch, fail_first=4.0)  # the second chunk starts with 4.0
    emitter, got = make(new=ocycle.NumpyIO, size=4)
    emitter.write(np.arange(12, dtype="<f4"), t0=1.0)
    settled(emitter)
    wait_for(lambda: len(got.errors) == 1, what="the second chunk failed")
    ((seq, exc),) = got.errors
    assert seq == 1 and isinstance(exc, EncodeError) and "cannot be encoded" in str(exc)
    messages = wait_for(lambda: len(q := queued(admin)) == 2 and q, what="the other two sent")
    assert [m["headers"]["ocycle"]["seq"] for m in messages] == [0, 2]
    for message in messages:
        reply(admin, emitter.stream, message["headers"]["id"], result="ok")
    assert emitter.wait(10)
    settled(emitter)
    assert got.done_seqs == [0, 2] and emitter.executor.spooled_bytes == 0
    assert_accounted(emitter, 3)


def test_an_oversized_numpy_chunk_fails_by_its_size_without_being_encoded(
    make: Any, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = Threads(monkeypatch)
    emitter, got = make(new=ocycle.NumpyIO, size=600, settings={"max_chunk_bytes": 2000})
    emitter.write(np.zeros(600, dtype="<f8"), t0=1.0)  # 4800 bytes: over the limit, known before encoding
    settled(emitter)
    ((seq, exc),) = got.errors
    assert seq == 0 and isinstance(exc, EncodeError) and "exceeds max_chunk_bytes=2000" in str(exc)
    assert threads.names == [] and queued(admin) == []
    assert_accounted(emitter, 1)


def test_the_budget_counts_a_chunk_waiting_to_be_encoded_by_its_encoded_size(make: Any, admin: Any) -> None:
    emitter, _ = make(new=ocycle.NumpyIO, size=1000)
    chunk = np.ones(1000, dtype="<f4")
    emitter.write(chunk, t0=1.0)
    assert emitter.executor.spooled_bytes == len(wire.dumps(chunk))  # before and after the publisher encodes it
    wait_for(lambda: queued(admin), what="the chunk sent")
    assert emitter.executor.spooled_bytes == len(wire.dumps(chunk))


# ---- chunks stored raw under their claim check -----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [bytes(range(256)) * 8, np.arange(1000).astype(">i2").reshape(500, 2), np.linspace(0, 1, 600, dtype="<f4")],
    ids=["bytes", "int16-stereo-big-endian", "float32"],
)
def test_a_claimed_chunk_is_stored_as_its_raw_bytes_and_comes_back_whole(make: Any, admin: Any, value: Any) -> None:
    numpy = isinstance(value, np.ndarray)
    emitter, _ = make(
        new=ocycle.NumpyIO if numpy else None, size=len(value), settings={"claim_threshold": 100, "result_ttl": 60}
    )
    emitter.write(value, t0=1.0)
    (message,) = wait_for(lambda: queued(admin), what="the chunk sent")
    (claim, t0), _, _ = wire.loads(base64.b64decode(message["body"]))
    assert isinstance(claim, wire.Claim) and claim.key == f"ocycle:chunk:{message['headers']['id']}"
    stored = admin.get(claim.key)
    if numpy:
        assert claim.form == ["ndarray", value.dtype.str, list(value.shape)] and stored == value.tobytes()
        back = wire.claimed(claim, stored)
        assert back.dtype.str == value.dtype.str and back.shape == value.shape
        np.testing.assert_array_equal(back, value)
    else:
        assert claim.form == ["bytes"] and stored == value and wire.claimed(claim, stored) == value
    assert 0 < admin.ttl(claim.key) <= 60 and t0 == 1.0


def test_a_claimed_chunk_of_a_durable_spool_is_stored_encoded(make: Any, admin: Any, tmp_path: Any) -> None:
    emitter, _ = make(size=1000, settings={"claim_threshold": 100}, spool=tmp_path)
    emitter.write(b"z" * 1000, t0=1.0)
    (message,) = wait_for(lambda: queued(admin), what="the chunk sent")
    (claim, _), _, _ = wire.loads(base64.b64decode(message["body"]))
    assert claim.form is None and admin.get(claim.key) == wire.dumps(b"z" * 1000)
    assert wire.claimed(claim, admin.get(claim.key)) == b"z" * 1000


@pytest.mark.parametrize(
    ("form", "raw", "why"),
    [
        (["ndarray", "<f4", [3]], b"\0" * 8, "does not match its dtype and shape"),
        (["ndarray", "|O", [1]], b"\0" * 8, "refused"),
        (["ndarray", "<f3", [1]], b"\0" * 3, "unknown dtype"),
        (["ndarray", "<f4", [-1]], b"", "refused"),
        (["ndarray", "<f4", "3"], b"\0" * 12, "unknown form"),
        (["pickle"], b"\x80\x04N.", "unknown form"),
        ([], b"", "unknown form"),
    ],
)
def test_a_claimed_value_that_does_not_match_its_form_is_refused(form: Any, raw: bytes, why: str) -> None:
    with pytest.raises(EncodeError, match=why):
        wire.claimed(wire.Claim("ocycle:chunk:x", form), raw)


def test_a_raw_claimed_value_over_the_decoding_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_BYTES", 1000)
    with pytest.raises(EncodeError, match="over the limit of 1000 bytes"):
        wire.claimed(wire.Claim("ocycle:chunk:x", ["bytes"]), b"\0" * 1001)


@pytest.mark.parametrize(
    "payload", [msgpack.packb(["k", "bytes"]), msgpack.packb([1, ["bytes"]]), msgpack.packb(["k"] * 100)]
)
def test_a_malformed_claim_on_the_wire_is_refused(payload: bytes) -> None:
    with pytest.raises(EncodeError):
        wire.loads(msgpack.packb(msgpack.ExtType(3, payload)))


# ---- chunks joined by the executor (Pieces) ---------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=6),
    dtype=st.sampled_from([None, "<i2", ">f8", "<c8", "|S3", "<M8[us]"]),
    trailing=st.sampled_from([(), (2,), (0,), (3, 2)]),
)
def test_the_size_of_pieces_is_the_size_of_their_joined_value(lengths: list[int], dtype: Any, trailing: Any) -> None:
    if dtype is None:
        pieces = Pieces([bytes(n) for n in lengths], ocycle.BufferEmit(len, 1).windows.kind)
    else:
        kind = ocycle.NumpyEmit(len, 1).windows.kind
        pieces = Pieces([np.zeros((n, *trailing), dtype=dtype) for n in lengths], kind)
    assert wire.encoded_size(pieces) == len(wire.dumps(pieces.join())) == len(wire.dumps(pieces))


class Joining(ocycle.executors.ChunkExecutor):
    """An executor that joins later: records what ``submit`` was given, joins it, runs the callback."""

    joins_later = True

    def __init__(self) -> None:
        self.given: list[Any] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        from concurrent.futures import Future

        self.given.append(args[0])
        future: Future[Any] = Future()
        future.set_result(fn(args[0].join(), *args[1:]))
        return future


def test_an_executor_that_joins_later_gets_pieces_and_one_that_does_not_gets_values() -> None:
    got: list[Any] = []
    joining = Joining()
    b = ocycle.BufferEmit(lambda chunk, t0: got.append(chunk), 6, clip=True, hop=4, mode=joining)
    b.write(b"abcd", t0=1.0)
    b.write(b"efgh", t0=2.0)  # completes "abcdef" from two frames
    b.write(b"ijkl", t0=3.0)  # completes "efghij": frames shared by two chunks
    b.close()
    assert [type(v) for v in joining.given] == [Pieces, Pieces] and got == [b"abcdef", b"efghij"]
    assert [len(v) for v in joining.given] == [6, 6]
    b.open(mode="serial")  # the windows were told to leave the join to the executor: the emitter joins
    b.write(b"mnop", t0=4.0)
    b.close()
    assert got == [b"abcdef", b"efghij", b"ijklmn"]
    assert all(type(v) is bytes for v in got)
