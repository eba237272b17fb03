"""ocycle 0.1.0 code runs unchanged with ``import ocycle_dist as ocycle``; and what the seed got wrong.

The README examples are ported with ``time.sleep`` removed, bounded loops and a final ``close()``. Where the
seed (the real ``ocycle`` package, installed for these tests) differs, both are run side by side.
"""

from __future__ import annotations

import ast
import io
import pickle

import numpy as np
import ocycle as seed
import pytest

import ocycle_dist
import ocycle_dist as ocycle

BOTH = pytest.mark.parametrize("lib", [seed, ocycle_dist], ids=["seed", "ocycle_dist"])


# ---- module-level callbacks (picklable) ----------------------------------------------------------------


def on_process_emit(buff, t0):  # the README's process callback, verbatim but for the print
    x = buff.getvalue()
    print("Im in a process!", x, t0)
    return x[::-1]


def upper(value, t0):
    return value.upper()


class Sink:
    def __init__(self) -> None:
        self.got: list = []

    def __call__(self, value, t0):
        self.got.append((value, t0))


def _is_time(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def emitted(lines: str, label: str) -> list[str]:
    """The values printed after ``label``, the t0 left out (the README prints a value and a t0)."""
    return [
        " ".join(token for token in line[len(label) + 1 :].split(" ") if not _is_time(token))
        for line in lines.splitlines()
        if line.startswith(label + " ")
    ]


# ---- README example 1 --------------------------------------------------------------------------------------


def readme_example_1(ocycle, some_data, n_writes=9, **options):
    # this is some random data that represents our
    # incoming data buffer
    SOME_DATA = some_data  # noqa: N806 - the README's name

    # how full should the buffer be before emitting data
    CONSUME_SIZE = 29  # noqa: N806

    # a data consumer
    def create_consumer(size):
        # this is called when the buffer reaches/exceeds size.
        def callback(value, t0):
            assert len(value) >= CONSUME_SIZE
            print("Emitting:", t0, value)

        return ocycle.BufferEmit(callback, size, **options)

    buff = create_consumer(CONSUME_SIZE)

    # a generator then writes to the buffer.
    # once it is full enough it will call `callback(buff, t0)`
    for _ in range(n_writes):  # the README loops forever
        print("Writing to buffer:", SOME_DATA)
        buff.write(SOME_DATA)
    return buff


@BOTH
def test_readme_example_1_as_written_rejects_text_on_a_byte_stream(lib, capsys):
    # the README writes a str to the default (bytes) stream: the seed fails too, with a TypeError
    with pytest.raises(TypeError):
        readme_example_1(lib, "asdfghjkl;")


@BOTH
@pytest.mark.parametrize(("data", "options"), [(b"asdfghjkl;", {}), ("asdfghjkl;", {"new": io.StringIO})])
def test_readme_example_1(lib, data, options, capsys):
    readme_example_1(lib, data, **options)
    out = capsys.readouterr().out
    assert out.count("Writing to buffer:") == 9
    assert emitted(out, "Emitting:") == [str(data * 3)] * 3  # 30 >= 29: every third write


# ---- README example 2 ("Configuration Examples") --------------------------------------------------------


def readme_example_2(ocycle, n=2):
    # build a list of receivers

    buffers = []
    SIZE = 15  # noqa: N806 - the README's name

    def on_emit(label):  # callback
        return lambda buff, t0: print(label, buff.getvalue(), t0)

    # default operation (the README's callbacks call buff.getvalue(): they need asbuffer=True)
    buffers.append(ocycle.BufferEmit(on_emit("default"), size=SIZE, asbuffer=True))

    # execute the callback in a thread
    buffers.append(ocycle.BufferEmit(on_emit("im in a thread!"), size=SIZE, mode="thread", asbuffer=True))

    # the two receivers of the README's output, missing from its code
    buffers.append(ocycle.BufferEmit(lambda value, t0: print("gets value, not buffer object", value, t0), size=SIZE))
    buffers.append(ocycle.BufferEmit(on_emit("value clipped to size"), size=SIZE, clip=True, asbuffer=True))

    # execute the callback in a separate process
    # execute `on_done` in the main process
    buffers.append(
        ocycle.BufferEmit(
            on_process_emit,
            on_done=lambda res: print("The process returned:", res),
            size=SIZE,
            mode="process",
            asbuffer=True,
        )
    )

    # send data to each receiver

    def generate_data(length=4, n=1):
        for _ in range(n):
            for i in range(10):
                yield str(i).encode("utf-8") * length

    for x in generate_data(4, n):
        print("writing", x)
        for b in buffers:
            b.write(x)
        # time.sleep(1) removed

    for b in buffers:  # wait for the threads and processes (the README relied on the interpreter's exit)
        b.close()


# the README's printed output, first three chunks of each receiver
README_OUTPUT = {
    "default": ["b'0000111122223333'", "b'4444555566667777'", "b'8888999900001111'"],
    "im in a thread!": ["b'0000111122223333'", "b'4444555566667777'", "b'8888999900001111'"],
    "gets value, not buffer object": ["b'0000111122223333'", "b'4444555566667777'", "b'8888999900001111'"],
    "value clipped to size": ["b'000011112222333'", "b'344445555666677'", "b'778888999900001'"],
    "The process returned:": ["b'3333222211110000'", "b'7777666655554444'", "b'1111000099998888'"],
}


@BOTH
def test_readme_example_2(lib, capsys):
    readme_example_2(lib, n=2)
    out = capsys.readouterr().out
    stream = b"".join(str(i % 10).encode() * 4 for i in range(20))
    for label, first_three in README_OUTPUT.items():
        got = emitted(out, label)
        if label in ("im in a thread!", "The process returned:"):  # pools may finish out of order
            got = [repr(v) for v in sorted(ast.literal_eval(v) for v in got)]
            first_three = sorted(first_three)
            assert len(got) == 5
        else:
            assert got[:3] == first_three
        assert set(first_three) <= set(got)
    assert emitted(out, "default") == [repr(stream[i : i + 16]) for i in range(0, 80, 16)]
    assert emitted(out, "value clipped to size") == [repr(stream[i : i + 15]) for i in range(0, 75, 15)]


# ---- the seed's interface ----------------------------------------------------------------------------------


def test_mode_constants_match_the_seed():
    assert (ocycle.SERIAL, ocycle.THREAD, ocycle.PROCESS) == (seed.SERIAL, seed.THREAD, seed.PROCESS)
    assert ocycle.CELERY == "celery"
    sink = Sink()
    with ocycle.BufferEmit(sink, 2, clip=True, mode=ocycle.THREAD) as b:
        b.write(b"abcd", t0=1.0)
    assert sorted(sink.got) == [(b"ab", 1.0), (b"cd", 1.0)]


def test_with_gives_the_emitter():
    with ocycle.BufferEmit(upper, 4) as b:
        assert isinstance(b, ocycle.BufferEmit)
        b.write(b"abcd")
    with seed.BufferEmit(upper, 4) as seed_b:  # the seed's __enter__ returned None
        assert seed_b is None


@BOTH
@pytest.mark.parametrize("clip", [False, True])
def test_text_stream_gives_the_same_chunks_as_the_seed(lib, clip):
    sink = Sink()
    b = lib.BufferEmit(sink, 5, clip=clip, new=io.StringIO)
    for k, text in enumerate(["héllo", " wo", "rld, ", "and ", "more text"]):
        b.write(text, t0=float(k + 1))
    values = [v for v, _ in sink.got]
    assert all(type(v) is str for v in values)
    expected = ["héllo", " world, ", "and more text"] if not clip else ["héllo", " worl", "d, an", "d mor", "e tex"]
    assert values == expected


def test_on_done_gets_the_result_alone():
    results = []
    b = ocycle.BufferEmit(upper, 3, clip=True, on_done=results.append)
    b.write(b"abcdef")
    assert results == [b"ABC", b"DEF"]


@pytest.mark.parametrize("mode", ["serial", "thread"])
def test_pickle_round_trip(mode):
    original = ocycle.BufferEmit(upper, 4, clip=True, sampler=0.5, mode=mode, npool=3, stream="mic")
    original.write(b"ab", t0=1.0)
    clone = pickle.loads(pickle.dumps(original))
    original.close()
    assert isinstance(clone, ocycle.BufferEmit)
    assert (clone.size, clone.clip, clone.mode, clone.npool, clone.stream) == (4, True, mode, 3, "mic")
    assert clone.callback is upper
    assert clone.sampler() == 0.5
    results = []
    clone.on_done = results.append
    clone.write(b"wxyz", t0=10.0)
    clone.write(b"skip", t0=10.2)  # in the sampler's pause
    clone.write(b"abcd", t0=10.5)
    clone.close()
    assert sorted(results) == [b"ABCD", b"WXYZ"]
    assert clone.stats().skipped == 4


def test_pickle_round_trip_numpy():
    clone = pickle.loads(pickle.dumps(ocycle.NumpyEmit(upper, 2, dtype="int16", shape=(2,), hop=1)))
    assert type(clone) is ocycle.NumpyEmit
    assert (clone.size, clone.hop, clone.clip) == (2, 1, True)
    with pytest.raises(ocycle.FrameError):
        clone.write(np.zeros((3, 2), np.float32))


@pytest.mark.parametrize("cls", [ocycle.ListIO, seed.ListIO], ids=["ocycle_dist", "seed"])
def test_list_io_standalone(cls):
    buf = cls()
    buf.write([1, 2, 3])
    buf.write([4, 5])
    assert buf.tell() == 5
    assert buf.getvalue() == [1, 2, 3, 4, 5]
    buf.seek(1)
    assert buf.read(2) == [2, 3]
    assert buf.tell() == 3
    assert buf.read() == [4, 5]
    buf.seek(2)
    buf.write(["x"])  # overwrites at the cursor
    assert buf.getvalue() == [1, 2, "x", 4, 5]
    assert buf.getvalue(copy=False) is buf.getvalue(copy=False)
    assert buf.getvalue() is not buf.getvalue()


def test_list_io_truncate_like_bytesio():
    # ocycle_dist's ListIO follows io.BytesIO where the seed did not (its truncate moved the cursor)
    buf, ref = ocycle.ListIO(), io.BytesIO()
    for b in (buf, ref):
        b.write([1, 2, 3, 4] if b is buf else bytes([1, 2, 3, 4]))
        assert b.seek(1) == 1
        assert b.truncate() == 1
        assert b.tell() == 1
        assert b.truncate(0) == 0
        b.seek(0)
        b.write([9] if b is buf else bytes([9]))
    assert buf.getvalue() == list(ref.getvalue()) == [9]


def test_numpy_io_standalone():
    buf = ocycle.NumpyIO()
    a = np.arange(10, dtype=np.float32).reshape(5, 2)
    assert buf.write(a[:3]) == 3
    assert buf.write(a[3:]) == 2
    assert buf.tell() == 5
    value = buf.getvalue()
    assert value.dtype == np.float32 and value.shape == (5, 2)
    np.testing.assert_array_equal(value, a)
    value[0, 0] = 99  # a copy
    assert buf.getvalue()[0, 0] == 0
    buf.seek(1)
    np.testing.assert_array_equal(buf.read(2), a[1:3])
    assert buf.tell() == 3
    np.testing.assert_array_equal(buf.read(), a[3:])
    assert buf.truncate(2) == 2
    np.testing.assert_array_equal(buf.getvalue(), a[:2])
    buf.seek(0)
    buf.truncate(0)
    assert len(buf.getvalue()) == 0
    buf.write(a[4:])
    np.testing.assert_array_equal(buf.getvalue(), a[4:])
    with pytest.raises(ValueError, match="trailing shape"):
        buf.write(np.zeros((1, 3), np.float32))


@pytest.mark.parametrize("emit", [ocycle.NumpyEmit, ocycle.ListEmit])
def test_numpy_and_list_emitters_with_asbuffer(emit):
    got = []
    b = emit(lambda buf, t0: got.append((type(buf), buf.getvalue())), 2, clip=True, asbuffer=True)
    frame = np.arange(3.0) if emit is ocycle.NumpyEmit else [0.0, 1.0, 2.0]
    b.write(frame, t0=1.0)
    b.write(frame, t0=2.0)
    io_type = ocycle.NumpyIO if emit is ocycle.NumpyEmit else ocycle.ListIO
    assert [t for t, _ in got] == [io_type] * 3
    assert [list(v) for _, v in got] == [[0.0, 1.0], [2.0, 0.0], [1.0, 2.0]]


# ---- the seed's defects, fixed ----------------------------------------------------------------------------


WRITES = [(b"ab", 1.0), (b"cd", 2.0), (b"ef", 3.0), (b"gh", 4.0), (b"ij", 5.0), (b"kl", 6.0)]


@pytest.mark.parametrize("clip", [False, True])
def test_t0_is_the_time_of_the_chunks_first_element(clip):
    dist, old = Sink(), Sink()
    emitters = [ocycle.BufferEmit(dist, 4, clip=clip), seed.BufferEmit(old, 4, clip=clip)]
    for data, t0 in WRITES:
        for e in emitters:
            e.write(data, t0=t0)
    assert [v for v, _ in dist.got] == [v for v, _ in old.got] == [b"abcd", b"efgh", b"ijkl"]
    # ef arrived at 3.0 and ij at 5.0; the seed gave the time of the write that emitted the previous chunk
    assert dist.got == [(b"abcd", 1.0), (b"efgh", 3.0), (b"ijkl", 5.0)]
    assert old.got == [(b"abcd", 1.0), (b"efgh", 2.0), (b"ijkl", 4.0)]


def test_a_thread_callbacks_exception_is_reported_not_lost():
    errors = []
    b = ocycle.BufferEmit(lambda v, t0: 1 / 0, 2, mode="thread", on_error=errors.append)
    b.write(b"ab")
    b.close()
    assert [type(e) for e in errors] == [ZeroDivisionError]
    assert b.stats().failed == 1


# ---- every public member of the seed's emitters and buffers, side by side ---------------------------------

SEED_DELEGATED = {"getvalue", "tell", "read"}  # the seed's __getattr__ hands these to its current buffer


def _public(obj) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


@pytest.mark.parametrize(("name", "frame"), [("BufferEmit", b"abc"), ("NumpyEmit", np.arange(3.0)), ("ListEmit", [1])])
def test_every_public_member_of_the_seeds_emitters_exists(name, frame):
    old, new = getattr(seed, name)(upper, 4), getattr(ocycle, name)(upper, 4)
    try:
        old.write(frame, t0=1.0)
        new.write(frame, t0=1.0)
        wanted = _public(old) | SEED_DELEGATED | {"__enter__", "__exit__", "__del__", "__getstate__"}
        assert {"pool", "t0", "pause_until", "clip_value", "current", "items", "truncate", "reuse"} <= wanted
        assert sorted(n for n in wanted if not hasattr(new, n)) == []
        for member in wanted:  # callables stay callable, values stay values
            assert callable(getattr(old, member)) == callable(getattr(new, member)), member
    finally:
        old.close()
        new.close()


@pytest.mark.parametrize("name", ["NumpyIO", "ListIO"])
def test_every_public_member_of_the_seeds_buffers_exists(name):
    old, new = getattr(seed, name)(), getattr(ocycle, name)()
    assert sorted(n for n in _public(old) if not hasattr(new, n)) == []


@BOTH
@pytest.mark.parametrize("mode", ["serial", "thread"])
def test_pool_is_the_pool_and_none_after_close_and_del(lib, mode):
    from concurrent.futures import ThreadPoolExecutor

    b = lib.BufferEmit(upper, 4, mode=mode)
    assert b.pool is not None and callable(b.pool.submit) and callable(b.pool.shutdown)
    assert isinstance(b.pool, ThreadPoolExecutor) == (mode == "thread")
    b.close()
    assert b.pool is None
    b.open()
    assert b.pool is not None
    b.__del__()
    assert b.pool is None
    b.open(reopen=True)
    assert b.pool is not None
    b.close()


@BOTH
def test_attributes_read_like_the_seeds(lib):
    sampler = lambda: 0.5  # noqa: E731
    b = lib.BufferEmit(upper, 4, clip=True, asbuffer=False, npool=3, sampler=sampler, on_done=print)
    assert (b.size, b.clip_value, b.asbuffer, b.npool, b.mode, b.callback, b.on_done) == (
        4, True, False, 3, "serial", upper, print
    )  # fmt: skip
    assert b.sampler() == 0.5
    assert lib.BufferEmit(upper, 4).sampler in (None, 0)  # falsy: no sampler
    assert (b.t0, b.pause_until, b.full, b.is_pausing, len(b.items), b.last) == (0, 0, False, False, 0, None)
    assert b.new is io.BytesIO and lib.BufferEmit.new is io.BytesIO
    assert lib.BufferEmit(upper, 4, new=io.StringIO).new is io.StringIO
    assert lib.NumpyEmit.new is lib.NumpyIO and lib.ListEmit.new is lib.ListIO
    b.close()


@BOTH
def test_the_current_buffer_holds_what_is_collected(lib):
    got = Sink()
    b = lib.BufferEmit(got, 4, clip=True)
    b.write(b"ab", t0=1.0)
    assert (b.getvalue(), b.tell(), b.current.getvalue(), b.t0) == (b"ab", 2, b"ab", 1.0)
    assert b.read() == b""  # the cursor is at the end, as after a write
    b.write(b"cdef", t0=2.0)
    assert got.got == [(b"abcd", 1.0)]
    assert (b.getvalue(), b.tell(), b.full) == (b"ef", 2, False)
    assert b.last.getvalue() == b"ef"  # the seed recycles the emitted buffer as the current one


@BOTH
def test_numpy_and_list_emitters_expose_their_buffer(lib):
    n = lib.NumpyEmit(upper, 4)
    n.write(np.arange(3.0), t0=1.0)
    np.testing.assert_array_equal(n.buffer, [0.0, 1.0, 2.0])
    assert type(n.current) is lib.NumpyIO
    items = lib.ListEmit(upper, 4)
    items.write([1, 2], t0=1.0)
    assert (items.buffer, items.getvalue(), items.tell()) == ([1, 2], [1, 2], 2)


@BOTH
def test_reset_next_truncate_and_reuse(lib):
    got = Sink()
    b = lib.BufferEmit(got, 4, clip=True)
    b.write(b"abc", t0=1.0)
    b.reset()
    assert b.getvalue() == b""
    b.write(b"wxyz", t0=2.0)
    assert got.got == [(b"wxyz", 2.0 if lib is ocycle_dist else 1.0)]  # the seed kept the discarded data's t0
    b.next(b"xy")
    assert b.getvalue() == b"xy"
    b = lib.BufferEmit(got, 10)
    b.write(b"abcdef", t0=3.0)
    assert b.truncate(4) == b"ef"
    assert b.getvalue() == b"abcd"
    assert b.truncate() == b""  # nothing beyond size
    spare = io.BytesIO(b"old")
    b.reuse(spare)
    assert len(b.items) == 1 and spare.getvalue() == b""


def test_truncate_keeps_writing_after_the_elements_kept():
    # the seed left its cursor at 0 after truncate(): the next write overwrote the data kept
    got = Sink()
    b = ocycle.BufferEmit(got, 6, clip=True)
    b.write(b"abcdef"[:5], t0=1.0)
    assert b.truncate(3) == b"de"
    assert b.tell() == 3
    b.write(b"xyz", t0=2.0)
    assert got.got == [(b"abcxyz", 1.0)]
    assert b.stats().skipped == 2 and b.stats().written == 8
    old = seed.BufferEmit(Sink(), 6, clip=True)
    old.write(b"abcde")
    old.truncate(3)
    old.write(b"xyz")
    assert old.getvalue() == b"xyz"  # "abc" lost


@BOTH
def test_sampler_pause_until_and_is_pausing(lib):
    got = Sink()
    b = lib.BufferEmit(got, 2, clip=True, sampler=100.0)
    now = __import__("time").time()
    b.write(b"ab", t0=now)
    assert b.pause_until == now + 100.0
    assert b.is_pausing
    b.write(b"cd", t0=now + 1)
    assert [v for v, _ in got.got] == [b"ab"]


@BOTH
def test_numpy_io_signature_and_members(lib):
    buf = lib.NumpyIO((0, 2), 10, 0.25)  # shape, len_lookback, padding: the seed's positional order
    buf.write(np.ones((3, 2)))
    buf.readjust()
    assert (buf.size(), buf.tell(), buf.buffer.shape) == (3, 3, (3, 2))
    np.testing.assert_array_equal(buf.getvalue(), np.ones((3, 2)))
    buf.seek(1)
    assert buf.read(1).shape == (1, 2)
