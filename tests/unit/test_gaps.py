"""Gaps in the input (an audio driver's overflow drops blocks): with ``rate``, a write whose t0 comes later
than the previous write's end by more than ``max_gap`` ends the open windows there (partial chunks) and opens
new ones at that frame, so that no chunk spans a gap; gaps are counted. Both hot paths, C and Python, filling
and keeping."""

from __future__ import annotations

import os
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist import hotpath, kinds, windows

RATE = 1000.0


@pytest.fixture(params=["c-filling", "c-keeping", "python-filling", "python-keeping"])
def appender(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    impl, how = request.param.split("-")
    if impl == "python":
        monkeypatch.setattr(windows, "appender_class", lambda: hotpath.Appender)
        monkeypatch.setattr(windows, "filler_class", lambda: hotpath.Filler)
    elif os.environ.get("OCYCLE_PURE_PYTHON") == "1":
        pytest.skip("OCYCLE_PURE_PYTHON=1: the C hot path is off")
    else:
        assert hotpath.appender_class() is not hotpath.Appender, "the C hot path is not built"
        assert hotpath.filler_class() is not hotpath.Filler, "the C hot path is not built"
    if how == "keeping":
        monkeypatch.setattr(kinds.BytesKind, "fills", lambda self, clip, size: False)


def run(writes: list[tuple[bytes, float]], **options: Any) -> tuple[list[tuple[bytes, ocycle.Chunk]], Any]:
    got: list[tuple[bytes, ocycle.Chunk]] = []
    e = ocycle.BufferEmit(lambda v, t0, meta: got.append((v, meta)), 100, clip=True, rate=RATE, **options)
    for frame, t0 in writes:
        e.write(frame, t0=t0)
    return got, e.stats()


def frames(start: float, count: int, tag: bytes) -> list[tuple[bytes, float]]:
    """``count`` contiguous 40-element frames from ``start``: 40 ms each at 1000 elements/s."""
    return [(tag * 40, start + i * 0.040) for i in range(count)]


@pytest.mark.usefixtures("appender")
def test_a_gap_ends_the_open_window_and_the_next_chunk_starts_at_the_frame_after_it() -> None:
    writes = frames(10.0, 4, b"a") + frames(10.0 + 4 * 0.040 + 0.5, 6, b"b")  # 0.5 s lost after 160 elements
    got, stats = run(writes)
    (head, head_meta), (first, first_meta), (second, second_meta) = got[:3]
    assert head == b"a" * 100 and head_meta.t0 == pytest.approx(10.0) and not head_meta.partial
    assert first == b"a" * 60 and first_meta.partial and first_meta.t0 == pytest.approx(10.1)  # ends at the gap
    assert second == b"b" * 100 and second_meta.t0 == pytest.approx(10.66)  # no chunk spans the gap
    assert (stats.gaps, stats.gap_seconds) == (1, pytest.approx(0.5))
    assert stats.written == 400 and stats.buffered == 40


@pytest.mark.usefixtures("appender")
def test_jitter_within_max_gap_is_no_gap() -> None:
    writes = [(b"x" * 40, 10.0 + i * 0.040 + (0.02 if i % 2 else 0.0)) for i in range(10)]  # +20 ms jitter
    got, stats = run(writes)
    assert stats.gaps == 0 and [len(v) for v, _ in got] == [100] * 4 and not any(m.partial for _, m in got)


@pytest.mark.usefixtures("appender")
def test_max_gap_zero_turns_it_off_and_a_stream_without_rate_has_no_gaps() -> None:
    writes = frames(10.0, 4, b"a") + frames(20.0, 6, b"b")
    got, stats = run(writes, max_gap=0)
    assert stats.gaps == 0 and [len(v) for v, _ in got] == [100] * 4
    e = ocycle.BufferEmit(lambda v, t0: None, 100, clip=True)
    for frame, t0 in writes:
        e.write(frame, t0=t0)
    assert e.stats().gaps == 0


def test_max_gap_must_be_seconds() -> None:
    for bad in (-1, float("inf"), "1", True):
        with pytest.raises(ocycle.ConfigError, match="max_gap"):
            ocycle.BufferEmit(lambda v, t0: None, 4, rate=RATE, max_gap=bad)


# ---- clock steps: a t0 that goes back, or jumps implausibly far ahead, is a discontinuity, not a refusal -------


def paced(start: float, count: int, tag: bytes) -> list[tuple[bytes, float]]:
    """``count`` contiguous 40 ms frames of a stream paced at its rate, on a clock reading ``start`` at the first."""
    return frames(start, count, tag)


@pytest.mark.usefixtures("appender")
def test_clock_steps_back_30_s_then_ahead_1e6_s_then_back_each_end_the_windows_and_chunks_keep_flowing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = 1_700_000_000.0  # time.time() on a device
    writes = paced(t, 6, b"a")  # 240 elements: two chunks of 100 and 40 open
    writes += paced(t + 0.24 - 30.0, 6, b"b")  # NTP set the clock back 30 s
    writes += paced(t + 0.48 - 30.0 + 1e6, 6, b"c")  # a wrong timestamp far ahead
    writes += paced(t + 0.72, 6, b"d")  # ... and back to the right clock
    with caplog.at_level("WARNING", logger="ocycle_dist.windows"):
        got, stats = run(writes)
    partial = [(len(v), m.t0) for v, m in got if m.partial]
    assert [len(v) for v, m in got] == [100, 100, 40, 100, 100, 40, 100, 100, 40, 100, 100]
    assert partial == [
        (40, pytest.approx(t + 0.2)),
        (40, pytest.approx(t - 29.56)),
        (40, pytest.approx(t + 1e6 - 29.32)),
    ]
    after = {tag: [m.t0 for v, m in got if v[:1] == tag and not m.partial] for tag in (b"b", b"c", b"d")}
    assert after[b"b"] == [pytest.approx(t + 0.24 - 30.0), pytest.approx(t + 0.34 - 30.0)]  # on the new clock
    assert after[b"c"] == [pytest.approx(t + 0.48 - 30.0 + 1e6), pytest.approx(t + 0.58 - 30.0 + 1e6)]
    assert after[b"d"] == [pytest.approx(t + 0.72), pytest.approx(t + 0.82)]
    assert (stats.clock_steps, stats.gaps, stats.t0_overlaps) == (3, 0, 0)
    assert stats.written == 960 and stats.buffered == 40 and stats.emitted == 11
    steps = [r for r in caplog.records if "clock stepped" in r.getMessage()]
    assert len(steps) == 1 and "stats().clock_steps" in steps[0].getMessage()  # logged once


@pytest.mark.usefixtures("appender")
def test_a_far_future_t0_first_then_the_right_clock_is_one_step_and_bad_t0s_stay_frame_errors() -> None:
    got: list[ocycle.Chunk] = []
    e = ocycle.BufferEmit(lambda v, t0, meta: got.append(meta), 100, clip=True, rate=RATE)
    e.write(b"x" * 40, t0=1e308)
    for i in range(5):
        e.write(b"y" * 40, t0=100.0 + i * 0.04)  # every later write was refused for good
    for bad in (float("nan"), float("inf"), -1.0, "noon", True):
        with pytest.raises(ocycle.FrameError):
            e.write(b"z" * 40, t0=bad)
    assert [(m.length, m.partial) for m in got] == [(40, True), (100, False), (100, False)]
    assert got[1].t0 == pytest.approx(100.0) and e.stats().clock_steps == 1 and e.stats().written == 240


def test_without_rate_a_jump_ahead_of_more_than_a_day_is_a_step_and_a_quiet_hour_is_not() -> None:
    got: list[ocycle.Chunk] = []
    e = ocycle.BufferEmit(lambda v, t0, meta: got.append(meta), 4, clip=True)
    e.write(b"ab", t0=1000.0)
    e.write(b"cd", t0=1000.0 + 3600)  # a sensor quiet for an hour: the same window
    e.write(b"ef", t0=1000.0 + 3600 + windows.STEP_AHEAD + 1)  # a clock set far ahead
    e.write(b"gh", t0=1000.0 + 3600 + windows.STEP_AHEAD + 2)
    assert [(m.length, m.partial, m.t0) for m in got] == [
        (4, False, 1000.0),
        (4, False, 1000.0 + 3600 + windows.STEP_AHEAD + 1),
    ]
    assert e.stats().clock_steps == 1
