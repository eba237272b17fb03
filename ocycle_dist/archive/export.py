"""A time range of one stream back as one audio file: the archive files covering it decrypted, joined
sample-exactly, gaps filled with silence (or refused) and reported.

Every sample of the output is on the first file's sample grid: a file's place is its t0 (from its name) rounded to
the nearest sample of that grid; what lies between two files is a gap, what two files both cover is taken from the
earlier one. Each file decrypted must hold what its name says (frames, rate and the MD5 of its samples).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import finite
from ..errors import ConfigError
from .catalog import Catalog, Entry, Span
from .keys import pyrage
from .names import format_time, pcm_digest, safe_stream

FORMATS = {".wav": "WAV", ".flac": "FLAC"}
GAP_POLICIES = ("silence", "fail")


class ExportError(RuntimeError):
    """The range cannot be exported: a file does not decrypt with the identity, or does not hold what its name says,
    or a gap with ``--gaps fail``."""


def parse_time(value: str, param: str) -> int:
    """``--from``/``--to``: ISO 8601 (``2025-03-01T12:00:00Z``; without a zone: UTC) or seconds since the epoch;
    returns microseconds since the epoch."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if finite(seconds):
            return round(seconds * 1_000_000)
        raise ConfigError(param, value, "a time: ISO 8601 (2025-03-01T12:00:00Z) or seconds since the epoch >= 0")
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ConfigError(param, value, "a time: ISO 8601 (2025-03-01T12:00:00Z) or seconds since the epoch") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    delta = when - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class Piece:
    """A file's part in the output: its samples ``[first, last)`` go to output sample ``at``."""

    entry: Entry
    at: int
    first: int
    last: int


@dataclass
class Plan:
    """What an export takes from which file, from the names alone."""

    stream: str
    rate: int
    start_us: float  # the time of the output's first sample
    frames: int
    pieces: list[Piece] = field(default_factory=list)
    gaps: list[Span] = field(default_factory=list)
    overlaps: list[Span] = field(default_factory=list)

    def time_of(self, sample: int) -> float:
        return self.start_us + sample * 1_000_000 / self.rate


def _ceil_samples(delta_us: int, rate: int) -> int:
    return -((-delta_us * rate) // 1_000_000)


def plan(catalog: Catalog, *, stream: str | None, start_us: int | None, end_us: int | None) -> Plan:
    """Which samples of which files make the range ``[start_us, end_us)`` of ``stream`` (None: from its beginning,
    to its end; one stream in the archive: that one)."""
    if stream is None:
        if len(catalog.streams) != 1:
            names = ", ".join(catalog.streams) or "none"
            raise ConfigError("stream", None, f"one of the archive's streams (--stream ID): {names}")
        stream = next(iter(catalog.streams))
    summary = catalog.streams.get(stream) or catalog.streams.get(safe_stream(stream))
    if summary is None:
        raise ConfigError("stream", stream, f"a stream of {catalog.directory}: {', '.join(catalog.streams) or 'none'}")
    if start_us is not None and end_us is not None and end_us <= start_us:
        raise ConfigError("to", format_time(end_us), f"a time after --from ({format_time(start_us)})")
    lo = -math.inf if start_us is None else start_us
    hi = math.inf if end_us is None else end_us
    files = [e for e in summary.files if e.name.t0_us < hi and e.name.end_us > lo]
    if not files:
        raise ExportError(
            f"stream {summary.stream} has no audio between {format_time(start_us) if start_us is not None else '-'}"
            f" and {format_time(end_us) if end_us is not None else '-'} (it covers"
            f" {format_time(summary.start_us)} .. {format_time(round(summary.end_us))})"
        )
    rates = sorted({e.name.rate for e in files})
    if len(rates) > 1:
        raise ExportError(f"stream {summary.stream} changes sample rate in this range ({rates}): export each part")
    rate, base = rates[0], files[0].name.t0_us
    offsets = [round((e.name.t0_us - base) * rate / 1_000_000) for e in files]
    first = 0 if start_us is None else max(0, _ceil_samples(start_us - base, rate))
    stop = max(o + e.name.frames for o, e in zip(offsets, files, strict=True))
    if end_us is not None:
        stop = min(stop, _ceil_samples(end_us - base, rate))
    result = Plan(summary.stream, rate, base + first * 1_000_000 / rate, stop - first)
    at = first  # the next sample to write, counted from the first file's t0
    for offset, entry in zip(offsets, files, strict=True):
        f_start, f_end = offset, offset + entry.name.frames
        if f_start >= stop:
            break
        if result.pieces and f_start < at:  # the files before this one cover its beginning
            overlap = Span(result.time_of(max(f_start, first) - first), result.time_of(min(at, f_end) - first))
            result.overlaps.append(overlap)
        if f_end <= at:
            continue
        if f_start > at:
            result.gaps.append(Span(result.time_of(at - first), result.time_of(f_start - first)))
        take_from = max(at, f_start)
        take_to = min(f_end, stop)
        result.pieces.append(Piece(entry, take_from - first, take_from - f_start, take_to - f_start))
        at = take_to
    return result


def read_samples(entry: Entry, identities: list[Any] | None) -> tuple[np.ndarray, int]:
    """A file's samples (int16, ``(frames, channels)``) and rate, decrypted with ``identities`` if it is encrypted;
    checked against its name."""
    import soundfile as sf

    data = entry.path.read_bytes()
    if entry.name.encrypted:
        if not identities:
            raise ConfigError("identity", None, f"an age identity file (--identity) to decrypt {entry.path.name}")
        age = pyrage()
        try:
            data = age.decrypt(data, identities)
        except age.DecryptError as exc:
            raise ExportError(f"{entry.path} does not decrypt with the identity given: {exc}") from None
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ExportError(f"{entry.path} is not a readable FLAC file: {exc}") from None
    digest = pcm_digest(np.ascontiguousarray(samples, dtype="<i2").tobytes()).hex()[:8]
    if (samples.shape[0], rate, digest) != (entry.name.frames, entry.name.rate, entry.name.digest):
        raise ExportError(
            f"{entry.path} holds {samples.shape[0]} samples at {rate} Hz (MD5 {digest}), not what its name says:"
            " renamed or damaged"
        )
    return samples, rate


def export(
    catalog: Catalog,
    out: str | os.PathLike[str],
    *,
    identities: list[Any] | None,
    stream: str | None = None,
    start_us: int | None = None,
    end_us: int | None = None,
    gaps: str = "silence",
    force: bool = False,
    say: Callable[[str], None] = lambda line: None,
) -> Plan:
    """Write the range as one 16-bit WAV or FLAC file ``out`` (by its suffix; mode 0600); returns the plan done.

    Raises:
        ConfigError: a bad parameter (named): ``out``'s suffix, ``out`` exists without ``force``, ``gaps``,
            ``stream``, the range.
        ExportError: nothing to export, a gap with ``gaps="fail"``, a file that does not decrypt or is not what
            its name says. ``out`` is then not written.
    """
    target = Path(out)
    kind = FORMATS.get(target.suffix.lower())
    if kind is None:
        raise ConfigError("out", str(out), f"a file name ending in {' or '.join(FORMATS)}")
    if target.exists() and not force:
        raise ConfigError("out", str(out), "a file that does not exist yet (--force to replace it)")
    if gaps not in GAP_POLICIES:
        raise ConfigError("gaps", gaps, f"one of {', '.join(GAP_POLICIES)}")
    todo = plan(catalog, stream=stream, start_us=start_us, end_us=end_us)
    slack = 500_000 / todo.rate
    if start_us is not None and todo.start_us > start_us + slack:
        say(f"no audio before {format_time(round(todo.start_us))}: the output starts there, not at --from")
    last_us = todo.time_of(todo.frames)
    if end_us is not None and last_us < end_us - slack:
        say(f"no audio after {format_time(round(last_us))}: the output ends there, not at --to")
    for gap in todo.gaps:
        say(f"gap {gap.describe()}" + (": filled with silence" if gaps == "silence" else ""))
    for overlap in todo.overlaps:
        say(f"overlap {overlap.describe()}: taken from the earlier file")
    if todo.gaps and gaps == "fail":
        raise ExportError(f"{len(todo.gaps)} gap(s) in the range (--gaps fail): nothing written")
    import soundfile as sf

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    audio: Any = None
    try:
        written = 0
        for piece in todo.pieces:
            samples, _ = read_samples(piece.entry, identities)
            if audio is None:
                channels = samples.shape[1]
                audio = sf.SoundFile(tmp, "w", todo.rate, channels, "PCM_16", format=kind)
            elif samples.shape[1] != audio.channels:
                raise ExportError(f"{piece.entry.path} has {samples.shape[1]} channel(s), the range {audio.channels}")
            if piece.at > written:
                audio.write(np.zeros((piece.at - written, audio.channels), dtype=np.int16))
            audio.write(samples[piece.first : piece.last])
            written = piece.at + piece.last - piece.first
        if audio is not None:
            audio.close()
        os.replace(tmp, target)
    finally:
        if audio is not None and not audio.closed:
            audio.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return todo
