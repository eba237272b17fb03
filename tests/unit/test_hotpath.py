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
