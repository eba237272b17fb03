"""A chunk not joined yet: the frames it is made of, for executors that join on a thread of their own.

Joining 1 MiB of frames into a new chunk takes a large share of a write's latency budget (the fresh memory's
page faults), and
a bytes join of 1 MiB or more lets other threads take the GIL meanwhile, so the writer may then wait for
it. An executor whose ``joins_later`` is True (the celery mode with a memory spool) is handed a
:class:`Pieces` instead of the value and joins it on its publisher thread; ``write()`` only slices.
"""

from __future__ import annotations

from typing import Any

from .kinds import Kind


class Pieces:
    """The parts (frames, or slices of frames) of one chunk, in order, and the kind that joins them.

    The parts are the emitter's own frames (copied or frozen when written), never changed afterwards,
    so joining later gives what joining now would.
    """

    __slots__ = ("kind", "parts")

    def __init__(self, parts: list[Any], kind: Kind) -> None:
        self.parts = parts
        self.kind = kind

    def join(self) -> Any:
        """The chunk's value: what the emitter would have handed over."""
        return self.kind.join(self.parts)

    def __len__(self) -> int:
        """Elements in the chunk."""
        return sum(len(part) for part in self.parts)

    def __repr__(self) -> str:
        return f"Pieces({len(self.parts)} {self.kind.name} parts, {len(self)} elements)"


def joined(value: Any) -> Any:
    """``value`` itself, or the joined value of :class:`Pieces`."""
    return value.join() if type(value) is Pieces else value
