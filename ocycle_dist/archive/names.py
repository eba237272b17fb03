"""The archive's file names: each says which stream, when (t0), which chunk, how long, and a digest of its audio.

``<stream>_<t0>_<seq>_<frames>@<rate>_<digest>.flac.age`` (``.flac`` when written unencrypted), e.g.
``producer-archive_20250301T120000.000000Z_00000012_160000@16000_3fa9c1d2.flac.age``:

- ``stream``: the chunk's stream id, made safe for a file name (letters, digits, ``.``, ``_``, ``-``);
- ``t0``: the time of the chunk's first sample, UTC, to the microsecond (sample-exact up to 500 kHz);
- ``seq``: the chunk's number in its stream (``x`` when the task had no metadata);
- ``frames@rate``: samples per channel and samples per second;
- ``digest``: the first 8 hex digits of the MD5 of the samples (as FLAC's STREAMINFO has it).

The same chunk always gets the same name, so a chunk delivered twice is recognised as written; a chunk of another
run differs in t0 (the producer's clock) or in its samples, so it gets a name of its own and nothing is ever
overwritten. What ``ocycle-dist archive list`` shows (streams, time ranges, gaps) comes from the names alone:
nothing is decrypted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ENCRYPTED_SUFFIX = ".flac.age"
PLAIN_SUFFIX = ".flac"
MAX_STREAM = 100  # characters of the stream id kept in a name (file names have 255 bytes at most)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_NAME = re.compile(
    r"^(?P<stream>[A-Za-z0-9][A-Za-z0-9._-]*)_(?P<t0>\d{8}T\d{6}\.\d{6})Z_(?P<seq>\d+|x)_(?P<frames>\d+)@(?P<rate>\d+)"
    r"_(?P<digest>[0-9a-f]{8})\.flac(?P<age>\.age)?$"
)
_T0 = "%Y%m%dT%H%M%S.%f"


def safe_stream(stream: str) -> str:
    """``stream`` as the name's first part: unsafe characters as ``_``, starting with a letter or digit, and at
    most :data:`MAX_STREAM` characters (a longer one is cut and ends in a hash of the whole id)."""
    safe = _UNSAFE.sub("_", stream) or "chunk"
    if not safe[0].isalnum():
        safe = "s" + safe
    if len(safe) > MAX_STREAM:
        tail = hashlib.blake2s(stream.encode(), digest_size=4).hexdigest()
        safe = f"{safe[: MAX_STREAM - 9]}.{tail}"
    return safe


def to_us(t0: float) -> int:
    """Seconds since the epoch as whole microseconds."""
    return round(t0 * 1_000_000)


def format_time(us: int) -> str:
    """Microseconds since the epoch as ISO 8601 UTC, e.g. ``2025-03-01T12:00:00.000000Z``."""
    return (EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ArchiveName:
    """One archive file's name, and what it tells.

    Attributes:
        stream: the stream id as in the name (see :func:`safe_stream`).
        t0_us: the time of the first sample, microseconds since the epoch (UTC).
        seq: the chunk's number in its stream (None: unknown).
        frames: samples per channel.
        rate: samples per second.
        digest: 8 hex digits of the MD5 of the samples.
        encrypted: ``.flac.age`` (age-encrypted FLAC) or ``.flac``.
    """

    stream: str
    t0_us: int
    seq: int | None
    frames: int
    rate: int
    digest: str
    encrypted: bool = True

    @property
    def filename(self) -> str:
        t0 = (EPOCH + timedelta(microseconds=self.t0_us)).strftime(_T0)
        seq = "x" if self.seq is None else f"{self.seq:08d}"
        suffix = ENCRYPTED_SUFFIX if self.encrypted else PLAIN_SUFFIX
        return f"{self.stream}_{t0}Z_{seq}_{self.frames}@{self.rate}_{self.digest}{suffix}"

    @property
    def end_us(self) -> float:
        """The time just after the last sample, microseconds since the epoch (fractional)."""
        return self.t0_us + self.frames * 1_000_000 / self.rate

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def pcm_digest(pcm_le16: bytes) -> bytes:
    """The MD5 of the samples as FLAC's STREAMINFO has it: 16-bit little-endian, channels interleaved."""
    return hashlib.md5(pcm_le16, usedforsecurity=False).digest()


def make_name(
    stream: str, t0: float, seq: int | None, frames: int, rate: int, md5: bytes, *, encrypted: bool
) -> ArchiveName:
    """The name of a chunk's file (``md5``: :func:`pcm_digest` of its samples)."""
    if not (t0 >= 0 and t0 < 253402300800):  # before year 10000
        raise ValueError(f"t0={t0!r} is invalid: expected seconds since the epoch, >= 0 and before year 10000")
    return ArchiveName(safe_stream(stream), to_us(t0), seq, frames, rate, md5.hex()[:8], encrypted)


def parse(filename: str) -> ArchiveName | None:
    """The :class:`ArchiveName` a file name spells, or None for any other file."""
    m = _NAME.match(filename)
    if m is None:
        return None
    when = datetime.strptime(m["t0"], _T0).replace(tzinfo=timezone.utc) - EPOCH
    t0_us = (when.days * 86400 + when.seconds) * 1_000_000 + when.microseconds
    seq = None if m["seq"] == "x" else int(m["seq"])
    frames, rate = int(m["frames"]), int(m["rate"])
    if rate <= 0 or frames <= 0:
        return None
    return ArchiveName(m["stream"], t0_us, seq, frames, rate, m["digest"], m["age"] is not None)


def is_temporary(filename: str) -> bool:
    """Whether a file is a write in progress (or left by a worker killed while writing): ``.<name>.<random>.tmp``."""
    return filename.startswith(".") and filename.endswith(".tmp") and (".flac" in filename)
