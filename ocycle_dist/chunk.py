"""Per-chunk metadata."""

from __future__ import annotations

from typing import NamedTuple


class Chunk(NamedTuple):
    """What is known of one emitted chunk.

    A callback (or ``on_done``/``on_error``) gets it when it has a parameter named ``meta``.

    Attributes:
        stream: the emitter's stream id.
        seq: the chunk's sequence number in its stream, from 0; a dropped chunk leaves a gap.
        t0: the time of the chunk's first element (exact with ``rate``: the write's t0 + offset / rate).
        length: the number of elements in the chunk.
        start: the absolute index, in the stream, of the chunk's first element.
        partial: True for a chunk shorter than ``size`` emitted by ``flush()``/``close(flush=True)``.
    """

    stream: str
    seq: int
    t0: float
    length: int
    start: int
    partial: bool = False
