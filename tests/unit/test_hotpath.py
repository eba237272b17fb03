"""The write() hot path: the C Appender and Filler and their Python references behave the same, and filling
(each frame copied into its chunk) cuts the same chunks as keeping the frames."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ocycle_dist as ocycle
from ocycle_dist import hotpath, kinds, windows

C_BUILT = hotpath.appender_class() is not hotpath.Appender and hotpath.filler_class() is not hotpath.Filler
IMPLS = {"c": (hotpath.appender_class(), hotpath.filler_class()), "python": (hotpath.Appender, hotpath.Filler)}
needs_c = pytest.mark.skipif(not C_BUILT, reason="the C extension is not built here")


def emitter(mp: pytest.MonkeyPatch, impl: str, fill: bool, cls: Any = ocycle.BufferEmit, **kwargs: Any) -> Any:
    """An emitter on the ``impl`` hot path (``"c"`` or ``"python"``), filling or keeping its frames."""
    appender, filler = IMPLS[impl]
    mp.setattr(windows, "appender_class", lambda: appender)
    mp.setattr(windows, "filler_class", lambda: filler)
    if not fill:
        mp.setattr(kinds.BytesKind, "fills", lambda self, clip, size: False)
        mp.setattr(kinds.NumpyKind, "fills", lambda self, clip, size: False)
    b = cls(**kwargs)
    assert type(b.windows.hot) is (filler if fill else appender)
    return b


def run(impl: str, fill: bool, frames: list[Any], cls: Any = ocycle.BufferEmit, **kwargs: Any) -> list[Any]:
    """Chunks (value, t0, meta) of ``frames`` written with t0 = 0, 1, 2..., then flushed."""
    got: list[Any] = []
    with pytest.MonkeyPatch.context() as mp:
        b = emitter(mp, impl, fill, cls, callback=lambda value, t0, meta: got.append((value, t0, meta)), **kwargs)
        for i, frame in enumerate(frames):
            b.write(frame, t0=float(i))
        b.close(flush=True)
    return [(v.tolist() if isinstance(v, np.ndarray) else v, t, m) for v, t, m in got]


def byte_frames(sizes: list[int], as_bytearray: bool) -> list[Any]:
    data, frames, pos = bytes(range(256)) * 10, [], 0
    for n in sizes:
        frames.append(bytearray(data[pos : pos + n]) if as_bytearray else data[pos : pos + n])  # bytearray: checked
        pos += n
    return frames


@needs_c
@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), max_size=30),
    size=st.integers(1, 16),
    hop=st.none() | st.integers(1, 16),
    clip=st.booleans(),
    as_bytearray=st.booleans(),
)
def test_c_and_python_appenders_emit_the_same(sizes, size, hop, clip, as_bytearray) -> None:
    hop = None if hop is None else min(hop, size)
    frames = byte_frames(sizes, as_bytearray)
    kwargs = {"size": size, "hop": hop, "clip": clip, "stream": "s"}
    assert run("c", False, frames, **kwargs) == run("python", False, frames, **kwargs)


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), max_size=30),
    size=st.integers(1, 16),
    clip=st.booleans(),
    rate=st.none() | st.sampled_from([1.0, 3.0, 16.0]),
    as_bytearray=st.booleans(),
)
def test_filling_cuts_the_bytes_chunks_that_keeping_cuts(sizes, size, clip, rate, as_bytearray) -> None:
    frames = byte_frames(sizes, as_bytearray)
    kwargs = {"size": size, "clip": clip, "rate": rate, "stream": "s", "max_gap": 0.0}
    kept = run("python", False, frames, **kwargs)
    assert run("python", True, frames, **kwargs) == kept
    if C_BUILT:
        assert run("c", True, frames, **kwargs) == kept


def array_frames(spec: list[tuple[int, str]]) -> list[Any]:
    """Frames of (n, 2) float32 (``"c"``: C-contiguous; ``"strided"``: every other row of a bigger array;
    ``"f8"``: float64, the wrong dtype; ``"1d"``: the wrong shape), with distinct values."""
    frames, k = [], 0
    for n, how in spec:
        base = np.arange(2 * k, 2 * (k + n), dtype=np.float32).reshape(n, 2)
        k += n
        if how == "strided":
            wide = np.zeros((2 * n, 2), dtype=np.float32)
            wide[::2] = base
            frames.append(wide[::2])
        elif how == "f8":
            frames.append(base.astype(np.float64))
        elif how == "1d":
            frames.append(base.ravel())
        else:
            frames.append(base)
    return frames


def run_arrays(impl: str, fill: bool, frames: list[Any], **kwargs: Any) -> tuple[list[Any], list[Any]]:
    """Chunks and per-write outcomes (None or the FrameError's message) of array frames."""
    got: list[Any] = []
    outcomes: list[Any] = []
    with pytest.MonkeyPatch.context() as mp:
        b = emitter(mp, impl, fill, ocycle.NumpyEmit, callback=lambda v, t0, meta: got.append((v, t0, meta)),
                    **kwargs)  # fmt: skip
        for i, frame in enumerate(frames):
            try:
                b.write(frame, t0=float(i))
                outcomes.append(None)
            except ocycle.FrameError as exc:
                outcomes.append(str(exc))
        outcomes.append((b.stats().written, b.stats().buffered))
        b.close(flush=True)
    for v, _, _ in got:  # the stream's dtype and shape (declared, or the first frame's)
        assert v.flags.c_contiguous and v.dtype == got[0][0].dtype and v.shape[1:] == got[0][0].shape[1:]
    return [(v.tolist(), t, m) for v, t, m in got], outcomes


@settings(max_examples=80, deadline=None)
@given(
    spec=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["c", "c", "c", "strided", "f8", "1d"])), max_size=25),
    size=st.integers(1, 20),
    rate=st.none() | st.sampled_from([1.0, 8.0]),
    declared=st.booleans(),
)
def test_filling_cuts_the_array_chunks_that_keeping_cuts(spec, size, rate, declared) -> None:
    frames = array_frames(spec)
    kwargs = {"size": size, "clip": True, "rate": rate, "stream": "s", "max_gap": 0.0}
    if declared:
        kwargs.update(dtype="float32", shape=(2,))
    kept = run_arrays("python", False, frames, **kwargs)
    assert run_arrays("python", True, frames, **kwargs) == kept
    if C_BUILT:
        assert run_arrays("c", True, frames, **kwargs) == kept


def test_a_filled_array_chunk_is_a_copy_the_writer_cannot_change() -> None:
    got: list[Any] = []
    b = ocycle.NumpyEmit(lambda v, t0: got.append(v), 4, clip=True)
    frame = np.arange(6, dtype=np.int16)
    b.write(frame)
    frame[:] = -1  # the caller reuses its buffer
    b.write(frame)
    assert b.windows.fill and [v.tolist() for v in got] == [[0, 1, 2, 3], [4, 5, -1, -1], [-1, -1, -1, -1]]


@pytest.mark.parametrize("impl", ["python", "c"])
def test_a_bytes_chunk_within_one_frame_is_cut_from_it(impl: str) -> None:
    if impl == "c" and not C_BUILT:
        pytest.skip("the C extension is not built here")
    got: list[Any] = []
    with pytest.MonkeyPatch.context() as mp:
        b = emitter(mp, impl, True, callback=lambda v, t0: got.append(v), size=4, clip=True)
        whole = b"abcd"
        b.write(whole)
        b.write(b"efghijklm")
        b.write(b"nop")
    assert got == [b"abcd", b"efgh", b"ijkl", b"mnop"]
    if impl == "c":
        assert got[0] is whole  # the frame itself: it is the whole chunk


@pytest.mark.parametrize("impl", ["python", "c"])
def test_what_is_being_filled_is_read_like_what_is_kept(impl: str) -> None:
    if impl == "c" and not C_BUILT:
        pytest.skip("the C extension is not built here")
    with pytest.MonkeyPatch.context() as mp:
        b = emitter(mp, impl, True, callback=lambda v, t0: None, size=8, clip=True)
        b.write(b"abcdefghij", t0=5.0)  # one chunk out, "ij" being filled
        assert b.windows.buffered == 2 and b.t0 == 5.0 and b.getvalue() == b"ij"
        assert b.truncate(1) == b"j" and b.getvalue() == b"i"
        b.reset()
        assert b.windows.buffered == 0 and b.getvalue() == b"" and b.stats().written == 10
        a = emitter(mp, impl, True, ocycle.NumpyEmit, callback=lambda v, t0: None, size=4, clip=True)
        a.write(np.arange(6.0))
        assert a.getvalue().tolist() == [4.0, 5.0] and a.windows.hot.peek(5, 6).tolist() == [5.0]
        with pytest.raises(IndexError, match="not in the chunk being filled"):
            a.windows.hot.peek(3, 6)


@pytest.mark.parametrize("impl", ["python", "c"])
@pytest.mark.parametrize("fill", [False, True], ids=["keeping", "filling"])
def test_write_takes_data_and_t0_by_position_or_keyword(impl: str, fill: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if impl == "c" and not C_BUILT:
        pytest.skip("the C extension is not built here")
    got: list[Any] = []
    b = emitter(monkeypatch, impl, fill, callback=lambda v, t0: got.append((v, t0)), size=2, clip=True)
    b.write(b"ab", 1.0)
    b.write(data=b"cd", t0=2.0)
    b.write(b"ef", t0=3.0)
    assert got == [(b"ab", 1.0), (b"cd", 2.0), (b"ef", 3.0)]
    with pytest.raises(TypeError):
        b.write(b"gh", 4.0, 5.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        b.write(b"gh", when=4.0)  # type: ignore[call-arg]


def test_pure_python_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCYCLE_PURE_PYTHON", "1")
    assert hotpath.appender_class() is hotpath.Appender
    assert hotpath.filler_class() is hotpath.Filler


def test_a_c_module_built_from_an_older_source_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    class OldAppender:  # what _speedups.c built before the t0 checks has: no last_t0, last_end, inv_rate
        __slots__ = ("due", "ends", "fast_type", "other", "segs", "threshold")

    monkeypatch.setitem(sys.modules, "ocycle_dist._speedups", types.SimpleNamespace(Appender=OldAppender))
    assert hotpath.appender_class() is hotpath.Appender
    assert hotpath.filler_class() is hotpath.Filler  # a module without a Filler: the Python one


T0S = st.one_of(
    st.none(),
    st.floats(min_value=0.0, max_value=50.0),
    st.integers(min_value=-3, max_value=50),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.5, 10**400, True, "t"]),
)


def run_with_t0s(impl: str, fill: bool, frames: list[tuple[bytes, Any]], **kwargs: Any) -> tuple[list[Any], list[Any]]:
    """Chunks and per-write outcomes (None, or the error's type and message) of ``frames`` with their t0s."""
    with pytest.MonkeyPatch.context() as mp:
        got: list[Any] = []
        outcomes: list[Any] = []
        b = emitter(mp, impl, fill, callback=lambda value, t0, meta: got.append((value, t0, meta)), **kwargs)
        for frame, t0 in frames:
            try:
                b.write(frame, t0=t0)
                outcomes.append(None)
            except ocycle.FrameError as exc:
                outcomes.append(str(exc))
        stats = b.stats()
        outcomes.append((stats.written, stats.buffered, stats.t0_overlaps))
        b.close(flush=True)
    now = [isinstance(t, float) and t > 1e6 for _, t, _ in got]  # time.time(): from a write without t0
    return [(v, None, m._replace(t0=None)) if n else (v, t, m) for (v, t, m), n in zip(got, now, strict=True)], outcomes


@settings(max_examples=80, deadline=None)
@given(
    frames=st.lists(st.tuples(st.binary(max_size=9), T0S), max_size=25),
    size=st.integers(1, 8),
    clip=st.booleans(),
    rate=st.none() | st.sampled_from([1.0, 4.0]),
)
def test_c_and_python_check_t0_the_same_keeping_or_filling(frames, size, clip, rate) -> None:
    kwargs = {"size": size, "clip": clip, "rate": rate, "stream": "s"}
    want = run_with_t0s("python", False, frames, **kwargs)
    assert run_with_t0s("python", True, frames, **kwargs) == want
    if C_BUILT:
        assert run_with_t0s("c", False, frames, **kwargs) == want
        assert run_with_t0s("c", True, frames, **kwargs) == want


def test_which_streams_fill_and_which_keep_their_frames() -> None:
    def fills(cls: Any = ocycle.BufferEmit, **kwargs: Any) -> bool:
        return bool(cls(lambda v, t0: None, **kwargs).windows.fill)

    assert fills(size=4096) and fills(size=65536, clip=True) and fills(size=256 * 1024)
    assert not fills(size=256 * 1024 + 1)  # a large bytes chunk keeps its frames: the writer never copies them
    assert not fills(size=8, hop=4) and not fills(size=8, sampler=1.0)
    assert fills(ocycle.NumpyEmit, size=1 << 20, clip=True)  # numpy frames are copied on write anyway
    assert not fills(ocycle.NumpyEmit, size=8)  # unclipped: the chunk's length is known at its last write
    assert not fills(ocycle.ListEmit, size=8, clip=True) and not fills(size=8, clip=True, new=io.StringIO)
