"""Properties of the re-chunking, for any sequence of writes (hypothesis), checked against simple models.

Every stream kind (bytes, text, lists, numpy) goes through the same properties: nothing is lost, added or
reordered; chunks have the promised sizes; windows start where they should; each chunk's t0 is the t0 of
the write holding its first element, plus the offset into that write over ``rate``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ocycle_dist as ocycle
from ocycle_dist import Chunk

SETTINGS = settings(max_examples=60, deadline=None)

write_sizes = st.lists(st.integers(min_value=0, max_value=40), max_size=25)
sizes = st.integers(min_value=1, max_value=24)


# ---- stream kinds: how to make frames of n elements and compare chunks ----------------------------------


@dataclass
class Kind:
    name: str
    cls: type[ocycle.BufferEmit]
    options: dict[str, Any]
    frame: Callable[[int, int], Any]  # (first element index, n) -> a frame of n distinct elements
    concat: Callable[[list[Any]], Any]
    as_plain: Callable[[Any], Any]  # a comparable value (numpy arrays to nested lists)


def _numpy_frame(i: int, n: int) -> np.ndarray:
    return np.arange(2 * i, 2 * (i + n), dtype=np.float32).reshape(n, 2)


KINDS = [
    Kind(
        "bytes",
        ocycle.BufferEmit,
        {},
        lambda i, n: bytes((i + k) % 251 for k in range(n)),
        b"".join,
        lambda v: v,
    ),
    Kind(
        "text",
        ocycle.BufferEmit,
        {"new": io.StringIO},
        lambda i, n: "".join(chr(0x100 + i + k) for k in range(n)),
        "".join,
        lambda v: v,
    ),
    Kind(
        "list",
        ocycle.ListEmit,
        {},
        lambda i, n: [(i + k, "x")[k % 2] for k in range(n)],
        lambda parts: [x for p in parts for x in p],
        lambda v: v,
    ),
    Kind(
        "numpy",
        ocycle.NumpyEmit,
        {},
        _numpy_frame,
        lambda parts: np.concatenate(parts, axis=0) if parts else np.zeros((0, 2), np.float32),
        lambda v: v.tolist(),
    ),
]


each_kind = pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])


def make_frames(kind: Kind, lengths: list[int]) -> list[Any]:
    frames, i = [], 0
    for n in lengths:
        frames.append(kind.frame(i, n))
        i += n
    return frames


class Recorder:
    """A serial callback keeping each chunk with its t0 and metadata."""

    def __init__(self) -> None:
        self.chunks: list[tuple[Any, float, Chunk]] = []

    def __call__(self, value: Any, t0: float, meta: Chunk) -> None:
        self.chunks.append((value, t0, meta))

    @property
    def values(self) -> list[Any]:
        return [v for v, _, _ in self.chunks]

    @property
    def metas(self) -> list[Chunk]:
        return [m for _, _, m in self.chunks]


def feed(kind: Kind, size: int, lengths: list[int], t0s: list[float] | None = None, **options: Any):
    rec = Recorder()
    emitter = kind.cls(rec, size, **kind.options, **options)
    frames = make_frames(kind, lengths)
    for k, frame in enumerate(frames):
        emitter.write(frame, t0=float(k) if t0s is None else t0s[k])
    return emitter, rec, frames


def check_type(kind: Kind, value: Any) -> None:
    if kind.name == "numpy":
        assert isinstance(value, np.ndarray)
        assert value.dtype == np.float32
        assert value.shape[1:] == (2,)
    else:
        assert type(value) is {"bytes": bytes, "text": str, "list": list}[kind.name]


# ---- properties ------------------------------------------------------------------------------------------


@each_kind
@SETTINGS
@given(lengths=write_sizes, size=sizes)
def test_unclipped_chunks_end_at_the_write_that_filled_them(kind, lengths, size):
    emitter, rec, frames = feed(kind, size, lengths)
    # the model: collect writes until the collection holds >= size, emit it all
    expected, held = [], []
    for frame in frames:
        held.append(frame)
        if sum(map(len, held)) >= size:
            expected.append(kind.concat(held))
            held = []
    assert [kind.as_plain(v) for v in rec.values] == [kind.as_plain(v) for v in expected]
    for value in rec.values:
        check_type(kind, value)
        assert len(value) >= size
    emitted = sum(len(v) for v in rec.values)
    assert kind.as_plain(kind.concat([*rec.values, *held])) == kind.as_plain(kind.concat(frames))
    assert [m.start for m in rec.metas] == [sum(len(v) for v in rec.values[:k]) for k in range(len(rec.values))]
    assert [m.seq for m in rec.metas] == list(range(len(rec.values)))
    assert not any(m.partial for m in rec.metas)
    stats = emitter.stats()
    assert stats.buffered == sum(map(len, held)) < size
    assert stats.written == emitted + stats.buffered == sum(lengths)
    assert stats.emitted == stats.done == len(rec.values)


@each_kind
@SETTINGS
@given(lengths=write_sizes, size=sizes)
def test_clipped_chunks_are_exactly_size(kind, lengths, size):
    emitter, rec, frames = feed(kind, size, lengths, clip=True)
    data = kind.concat(frames)
    whole = len(data) // size
    assert len(rec.values) == whole
    for k, (value, _, meta) in enumerate(rec.chunks):
        check_type(kind, value)
        assert len(value) == size == meta.length
        assert meta.start == k * size
        assert kind.as_plain(value) == kind.as_plain(data[k * size : (k + 1) * size])
    assert kind.as_plain(kind.concat(rec.values)) == kind.as_plain(data[: whole * size])
    assert emitter.stats().buffered == len(data) - whole * size


@each_kind
@SETTINGS
@given(lengths=write_sizes, size=sizes, hop_fraction=st.floats(min_value=0.0, max_value=1.0))
def test_hop_windows_are_slices_starting_at_multiples_of_hop(kind, lengths, size, hop_fraction):
    hop = max(1, min(size, round(size * hop_fraction)))
    _, rec, frames = feed(kind, size, lengths, hop=hop)
    data = kind.concat(frames)
    starts = list(range(0, len(data) - size + 1, hop))
    assert [m.start for m in rec.metas] == starts
    for value, _, meta in rec.chunks:
        check_type(kind, value)
        assert meta.start % hop == 0
        assert meta.length == size
        assert kind.as_plain(value) == kind.as_plain(data[meta.start : meta.start + size])


@each_kind
@SETTINGS
@given(
    lengths=write_sizes,
    size=sizes,
    clip=st.booleans(),
    hop_fraction=st.none() | st.floats(min_value=0.0, max_value=1.0),
    rate=st.none() | st.floats(min_value=0.5, max_value=48_000.0),
    data=st.data(),
)
def test_t0_is_the_first_elements_time(kind, lengths, size, clip, hop_fraction, rate, data):
    t0s = sorted(data.draw(st.lists(st.floats(0, 1e9), min_size=len(lengths), max_size=len(lengths))))  # never back
    hop = None if hop_fraction is None else max(1, min(size, round(size * hop_fraction)))
    _, rec, _ = feed(kind, size, lengths, t0s, clip=clip, hop=hop, rate=rate)
    bounds = []  # (start, end, t0) of each non-empty write
    pos = 0
    for n, t in zip(lengths, t0s, strict=True):
        if n:
            bounds.append((pos, pos + n, t))
        pos += n
    for _, t0, meta in rec.chunks:
        (write_start, _, write_t0) = next(b for b in bounds if b[0] <= meta.start < b[1])
        expected = write_t0 + (meta.start - write_start) / rate if rate else write_t0
        assert t0 == meta.t0 == pytest.approx(expected, rel=1e-12, abs=1e-9)


@each_kind
@SETTINGS
@given(lengths=write_sizes)
def test_a_tap_gives_each_emitter_what_a_standalone_one_gets(kind, lengths):
    configs = [
        {"size": 3, "clip": True},
        {"size": 7},
        {"size": 16, "hop": 5, "rate": 10.0},
        {"size": 5, "clip": True, "rate": 10.0},  # fills, and has not checked the Tap's first frame itself
    ]
    tapped = [Recorder() for _ in configs]
    alone = [Recorder() for _ in configs]
    tap = ocycle.Tap(
        *(
            kind.cls(r, stream=f"s{k}", **kind.options, **c)
            for k, (r, c) in enumerate(zip(tapped, configs, strict=True))
        )
    )
    solo = [
        kind.cls(r, stream=f"s{k}", **kind.options, **c) for k, (r, c) in enumerate(zip(alone, configs, strict=True))
    ]
    for k, frame in enumerate(make_frames(kind, lengths)):
        tap.write(frame, t0=100.0 + k)
        for emitter in solo:
            emitter.write(frame, t0=100.0 + k)
    for a, b in zip(tapped, alone, strict=True):
        assert [(kind.as_plain(v), t, m) for v, t, m in a.chunks] == [(kind.as_plain(v), t, m) for v, t, m in b.chunks]

    def counts(stats: ocycle.Stats) -> dict[str, float]:  # all but the timings
        return {k: v for k, v in stats.as_dict().items() if not k.startswith("latency")}

    assert {s: counts(st) for s, st in tap.stats().items()} == {e.stream: counts(e.stats()) for e in solo}


def test_a_tap_keeps_one_frame_object_for_every_emitter_that_keeps_frames():
    recs = [Recorder() for _ in range(3)]
    emitters = [ocycle.ListEmit(r, size, clip=True) for r, size in zip(recs, (3, 7, 16), strict=True)]
    tap = ocycle.Tap(*emitters)
    written = []
    for k in range(5):
        written.append(list(f"{k}{k}{k}-"))  # 000-111-222-333-444-
        tap.write(written[-1], t0=float(k))
    # every emitter still holds the last frames; map each held frame by the position it ends at
    held = [dict(zip(e.windows.ends[1:], e.windows.segs, strict=True)) for e in emitters]
    common = set(held[0]) & set(held[1]) & set(held[2])
    assert common, "the emitters should share frames that are still buffered"
    for end in common:
        frame = held[0][end]
        assert type(frame) is list and all(frame is not w for w in written)  # frozen once: the caller's is not kept
        assert held[1][end] is frame
        assert held[2][end] is frame
    assert [["".join(v) for v in r.values] for r in recs] == [
        ["000", "-11", "1-2", "22-", "333", "-44"],
        ["000-111", "-222-33"],
        ["000-111-222-333-"],
    ]


def test_a_tap_checks_each_frame_against_every_emitters_dtype_before_any_gets_it():
    recs = [Recorder() for _ in range(3)]
    free = ocycle.NumpyEmit(recs[0], 4, clip=True)  # takes its dtype from the first frame
    declared = ocycle.NumpyEmit(recs[1], 4, clip=True, dtype="float32", shape=())
    kept = ocycle.NumpyEmit(recs[2], 4)  # keeps its frames (unclipped)
    tap = ocycle.Tap(free, declared, kept)
    with pytest.raises(ocycle.FrameError, match="dtype float64"):
        tap.write(np.zeros(4, dtype=np.float64))
    assert [e.stats().written for e in (free, declared, kept)] == [0, 0, 0]
    tap.write(np.arange(6, dtype=np.float32))
    tap.write(np.arange(6, 8, dtype=np.float32))
    for rec in recs:
        assert [v.tolist() for v in rec.values] == ([[0, 1, 2, 3, 4, 5]] if rec is recs[2] else
                                                    [[0, 1, 2, 3], [4, 5, 6, 7]])  # fmt: skip
        assert all(v.dtype == np.float32 for v in rec.values)


def test_emitters_that_fill_copy_each_frame_as_it_is_written():
    recs = [Recorder() for _ in range(3)]
    emitters = [ocycle.BufferEmit(r, size, clip=True) for r, size in zip(recs, (3, 7, 16), strict=True)]
    assert all(e.windows.fill for e in emitters)
    tap, alone = ocycle.Tap(*emitters[:2]), emitters[2]
    frame = bytearray(4)
    for k in range(5):
        frame[:] = b"%d%d%d-" % (k, k, k)  # 000-111-222-333-444-, the caller reusing one buffer
        tap.write(frame, t0=float(k))
        alone.write(frame, t0=float(k))
    assert [r.values for r in recs] == [
        [b"000", b"-11", b"1-2", b"22-", b"333", b"-44"],
        [b"000-111", b"-222-33"],
        [b"000-111-222-333-"],
    ]


@SETTINGS
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=12), max_size=30),
    size=st.integers(min_value=1, max_value=16),
    clip=st.booleans(),
    dt=st.sampled_from([0.1, 0.25, 0.4, 0.7, 1.0, 1.5]),
)
def test_sampler_skips_writes_during_the_pause_and_counts_them(lengths, size, clip, dt):
    rec = Recorder()
    emitter = ocycle.BufferEmit(rec, size, clip=clip, sampler=1.0)
    frames = make_frames(KINDS[0], lengths)
    # the model: after an emit at write time t, writes before t + 1.0 are skipped, and so is the
    # clipped leftover of the emitting write; collection restarts with the first write after the pause
    expected, skipped, held, pause_until = [], 0, b"", None
    for k, frame in enumerate(frames):
        t = k * dt
        emitter.write(frame, t0=t)
        if pause_until is not None and t < pause_until:
            skipped += len(frame)
            continue
        pause_until = None
        if not held:
            start_t = t
        held += frame
        if len(held) >= size:
            chunk = held[:size] if clip else held
            expected.append((chunk, start_t))
            skipped += len(held) - len(chunk)
            held, pause_until = b"", t + 1.0
    assert [(v, t) for v, t, _ in rec.chunks] == expected
    stats = emitter.stats()
    assert stats.skipped == skipped
    assert stats.buffered == len(held)
    emitted_elements = sum(len(v) for v in rec.values)
    assert stats.written == emitted_elements + stats.skipped + stats.buffered == sum(lengths)


def test_sampler_pause_is_measured_from_the_emitting_write():
    rec = Recorder()
    emitter = ocycle.BufferEmit(rec, 4, clip=True, sampler=1.0)
    emitter.write(b"abcdef", t0=10.0)  # emits abcd; ef is the clipped leftover: skipped
    emitter.write(b"gh", t0=10.5)  # in the pause: skipped
    emitter.write(b"ijkl", t0=10.99)  # in the pause: skipped
    emitter.write(b"mnop", t0=11.0)  # the pause is over: emits mnop
    assert [(v, t) for v, t, _ in rec.chunks] == [(b"abcd", 10.0), (b"mnop", 11.0)]
    stats = emitter.stats()
    assert (stats.skipped, stats.written, stats.buffered) == (8, 16, 0)


@pytest.mark.parametrize("dtype", [">i2", "<i2", ">f8", "<M8[ms]", "|S2"])
@pytest.mark.parametrize("frames", [1, 3], ids=["one-frame-a-chunk", "three-frames-a-chunk"])
def test_chunks_keep_the_streams_dtype_byte_order_included(dtype: str, frames: int) -> None:
    got: list[Any] = []
    data = np.arange(24).astype(dtype).reshape(12, 2)
    b = ocycle.NumpyEmit(lambda chunk, t0: got.append(chunk), 6, clip=True)
    for frame in np.split(data, 2 * frames):
        b.write(frame, t0=0.0)
    b.close()
    assert [chunk.dtype.str for chunk in got] == [np.dtype(dtype).str] * 2
    np.testing.assert_array_equal(np.concatenate(got), data)
