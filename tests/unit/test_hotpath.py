"""The write() hot path: the C Appender and its Python reference behave the same."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ocycle_dist as ocycle
from ocycle_dist import hotpath, windows

C_BUILT = hotpath.appender_class() is not hotpath.Appender


def run(appender: type, monkeypatch: pytest.MonkeyPatch, frames: list[Any], **kwargs: Any) -> list[Any]:
    monkeypatch.setattr(windows, "appender_class", lambda: appender)
    got: list[Any] = []
    b = ocycle.BufferEmit(lambda value, t0, meta: got.append((value, t0, meta)), **kwargs)
    assert type(b.windows.hot) is appender
    for i, frame in enumerate(frames):
        b.write(frame, t0=float(i))
    b.close(flush=True)
    return got


@pytest.mark.skipif(not C_BUILT, reason="the C extension is not built here")
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
    data = bytes(range(256)) * 10
    frames: list[Any] = []
    pos = 0
    for n in sizes:
        frame = data[pos : pos + n]
        frames.append(bytearray(frame) if as_bytearray else frame)  # bytearray: the checked path
        pos += n
    with pytest.MonkeyPatch.context() as mp:
        in_c = run(hotpath.appender_class(), mp, frames, size=size, hop=hop, clip=clip, stream="s")
    with pytest.MonkeyPatch.context() as mp:
        in_python = run(hotpath.Appender, mp, frames, size=size, hop=hop, clip=clip, stream="s")
    assert in_c == in_python


@pytest.mark.parametrize("appender", [hotpath.Appender, hotpath.appender_class()], ids=["python", "default"])
def test_write_takes_data_and_t0_by_position_or_keyword(appender: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(windows, "appender_class", lambda: appender)
    got: list[Any] = []
    b = ocycle.BufferEmit(lambda v, t0: got.append((v, t0)), 2, clip=True)
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


def test_a_c_module_built_from_an_older_source_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    class OldAppender:  # what _speedups.c built before the t0 checks has: no last_t0, last_end, inv_rate
        __slots__ = ("due", "ends", "fast_type", "other", "segs", "threshold")

    monkeypatch.setitem(sys.modules, "ocycle_dist._speedups", types.SimpleNamespace(Appender=OldAppender))
    assert hotpath.appender_class() is hotpath.Appender


T0S = st.one_of(
    st.none(),
    st.floats(min_value=0.0, max_value=50.0),
    st.integers(min_value=-3, max_value=50),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.5, 10**400, True, "t"]),
)


def run_with_t0s(appender: type, frames: list[tuple[bytes, Any]], **kwargs: Any) -> tuple[list[Any], list[Any]]:
    """Chunks and per-write outcomes (None, or the error's type and message) of ``frames`` with their t0s."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(windows, "appender_class", lambda: appender)
        got: list[Any] = []
        outcomes: list[Any] = []
        b = ocycle.BufferEmit(lambda value, t0, meta: got.append((value, t0, meta)), **kwargs)
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


@pytest.mark.skipif(not C_BUILT, reason="the C extension is not built here")
@settings(max_examples=80, deadline=None)
@given(
    frames=st.lists(st.tuples(st.binary(max_size=9), T0S), max_size=25),
    size=st.integers(1, 8),
    clip=st.booleans(),
    rate=st.none() | st.sampled_from([1.0, 4.0]),
)
def test_c_and_python_check_t0_the_same(frames, size, clip, rate) -> None:
    kwargs = {"size": size, "clip": clip, "rate": rate, "stream": "s"}
    in_c = run_with_t0s(hotpath.appender_class(), frames, **kwargs)
    in_python = run_with_t0s(hotpath.Appender, frames, **kwargs)
    assert in_c == in_python
