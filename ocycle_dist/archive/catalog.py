"""What an archive directory holds, from the file names alone (nothing is decrypted): streams, the time each
covers, gaps between files, files that overlap, and temporary files of interrupted writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .names import ArchiveName, format_time, is_temporary, parse


@dataclass(frozen=True)
class Entry:
    """One archive file: its path and what its name tells."""

    path: Path
    name: ArchiveName


@dataclass(frozen=True)
class Span:
    """A stretch of time, in microseconds since the epoch: ``[start_us, end_us)``."""

    start_us: float
    end_us: float

    @property
    def seconds(self) -> float:
        return (self.end_us - self.start_us) / 1e6

    def as_dict(self) -> dict[str, Any]:
        return {"start": format_time(round(self.start_us)), "seconds": round(self.seconds, 6)}

    def describe(self) -> str:
        return f"{format_time(round(self.start_us))} .. {format_time(round(self.end_us))} ({self.seconds:.3f} s)"


@dataclass
class StreamSummary:
    """One stream's files in time order, and the gaps and overlaps between them."""

    stream: str
    files: list[Entry]
    gaps: list[Span] = field(default_factory=list)
    overlaps: list[Span] = field(default_factory=list)

    @property
    def start_us(self) -> int:
        return self.files[0].name.t0_us

    @property
    def end_us(self) -> float:
        return max(e.name.end_us for e in self.files)

    @property
    def seconds(self) -> float:
        """Seconds of audio in the files (overlaps counted twice)."""
        return sum(e.name.seconds for e in self.files)

    @property
    def rates(self) -> list[int]:
        return sorted({e.name.rate for e in self.files})

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "start": format_time(self.start_us),
            "end": format_time(round(self.end_us)),
            "seconds": round(self.seconds, 6),
            "files": len(self.files),
            "encrypted": sum(e.name.encrypted for e in self.files),
            "rates": self.rates,
            "gaps": [span.as_dict() for span in self.gaps],
            "overlaps": [span.as_dict() for span in self.overlaps],
        }


@dataclass
class Catalog:
    """An archive directory: its streams by id, its temporary files, and how many other files it has."""

    directory: Path
    streams: dict[str, StreamSummary]
    temporary: list[Path]
    others: int


def tolerance_us(rate: int) -> float:
    """Half a sample, in microseconds: closer than this, two files are contiguous."""
    return 500_000 / rate


def summarize(stream: str, files: list[Entry]) -> StreamSummary:
    """A stream's files sorted by t0, with the gaps and overlaps between consecutive ones."""
    files = sorted(files, key=lambda e: (e.name.t0_us, e.name.seq or 0, e.name.digest))
    summary = StreamSummary(stream, files)
    end = files[0].name.end_us
    for entry in files[1:]:
        t0, slack = entry.name.t0_us, tolerance_us(entry.name.rate)
        if t0 > end + slack:
            summary.gaps.append(Span(end, t0))
        elif t0 < end - slack:
            summary.overlaps.append(Span(t0, min(end, entry.name.end_us)))
        end = max(end, entry.name.end_us)
    return summary


def scan(directory: str | os.PathLike[str]) -> Catalog:
    """The archive files in ``directory`` (not its subdirectories), by stream."""
    folder = Path(directory)
    by_stream: dict[str, list[Entry]] = {}
    temporary: list[Path] = []
    others = 0
    for item in sorted(os.scandir(folder), key=lambda d: d.name):
        if not item.is_file():
            continue
        name = parse(item.name)
        if name is not None:
            by_stream.setdefault(name.stream, []).append(Entry(Path(item.path), name))
        elif is_temporary(item.name):
            temporary.append(Path(item.path))
        else:
            others += 1
    streams = {s: summarize(s, files) for s, files in sorted(by_stream.items())}
    return Catalog(folder, streams, temporary, others)


def report(catalog: Catalog) -> list[str]:
    """``ocycle-dist archive list``'s lines."""
    files = [e for s in catalog.streams.values() for e in s.files]
    encrypted = sum(e.name.encrypted for e in files)
    lines = [
        f"archive {catalog.directory}: {len(catalog.streams)} stream(s), {len(files)} file(s)"
        f" ({encrypted} encrypted, {len(files) - encrypted} unencrypted),"
        f" {sum(e.name.seconds for e in files):.1f} s of audio"
    ]
    for s in catalog.streams.values():
        rates = "/".join(str(r) for r in s.rates)
        lines.append(
            f"{s.stream}: {format_time(s.start_us)} .. {format_time(round(s.end_us))}, {s.seconds:.1f} s in"
            f" {len(s.files)} file(s) at {rates} Hz, {len(s.gaps)} gap(s)"
            + (f", {len(s.overlaps)} overlap(s)" if s.overlaps else "")
        )
        lines.extend(f"  gap {g.describe()}" for g in s.gaps)
        lines.extend(f"  overlap {o.describe()}" for o in s.overlaps)
    if catalog.temporary:
        lines.append(
            f"{len(catalog.temporary)} temporary file(s) of writes in progress or interrupted (a worker stopped"
            " while writing; never a complete chunk under a final name): "
            + ", ".join(p.name for p in catalog.temporary[:5])
            + (" ..." if len(catalog.temporary) > 5 else "")
        )
    if catalog.others:
        lines.append(f"{catalog.others} other file(s) not named as archive files, ignored")
    return lines
