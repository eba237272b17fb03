"""Writing one chunk to the archive: FLAC encrypted to age recipients as it is encoded, under its final name only
when complete, never over an existing file.

The FLAC encoder (libsndfile) writes into :class:`_FlacSink`, and age (``pyrage.encrypt_io``) reads the bytes from
:class:`_FlacReader` as they come, driving the encoder a block at a time: the plaintext FLAC is never on disk and
never whole in memory (a block of it at a time). The file on disk is ciphertext from its first byte: a hidden
temporary file (``.<name>.<random>.tmp``), fsynced, then linked to its final name (``link()`` fails when the name
exists: nothing is ever overwritten) and the temporary name removed. A worker killed at any moment leaves at most a
temporary file; a final name always holds a complete file.

A FLAC encoder writes its header (STREAMINFO) first and fills in the sample count and the MD5 of the samples when it
closes, seeking back. Encrypted as it goes, the header has gone by then: so the sink fills both in itself when the
header passes (the chunk's length and MD5 are known before encoding) and, when the encoder seeks back, checks that
what it rewrites is what was sent (the minimum and maximum frame sizes stay 0, "unknown", as FLAC allows).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .keys import pyrage, recipients
from .names import ArchiveName, is_temporary, make_name, pcm_digest

BLOCK = 65536  # samples per channel handed to the encoder at a time (its FLAC is what is in memory at once)
STALE_TEMP = 60.0  # seconds: a temporary file of the same chunk older than this was left by a killed worker
HEAD = 42  # bytes: "fLaC", the STREAMINFO block's header (4) and body (34)
_FRAME_SIZES = range(12, 18)  # STREAMINFO's min/max frame size: left 0 (unknown)
_NO_LINK = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


class ArchiveWriteError(RuntimeError):
    """The FLAC encoder did something the streaming encryption cannot follow; nothing was written."""


def patch_streaminfo(head: bytes, frames: int, rate: int, channels: int, md5: bytes) -> bytes:
    """A FLAC file's first 42 bytes with the total sample count and MD5 filled in, frame sizes 0 (unknown).

    Raises:
        ArchiveWriteError: ``head`` is not ``fLaC`` and a STREAMINFO block of this rate, channels, 16 bits.
    """
    if head[:4] != b"fLaC" or head[4] & 0x7F != 0 or int.from_bytes(head[5:8], "big") != 34:
        raise ArchiveWriteError(f"the encoder's output does not start with a FLAC STREAMINFO block: {head[:8]!r}")
    packed = int.from_bytes(head[18:26], "big")
    found = (packed >> 44, ((packed >> 41) & 0x7) + 1, ((packed >> 36) & 0x1F) + 1)
    if found != (rate, channels, 16):
        raise ArchiveWriteError(f"the encoder's STREAMINFO says (rate, channels, bits) = {found}, not {rate, channels}")
    packed = (packed & ~((1 << 36) - 1)) | frames
    out = bytearray(head)
    out[12:18] = bytes(6)
    out[18:26] = packed.to_bytes(8, "big")
    out[26:42] = md5
    return bytes(out)


class _FlacSink:
    """The file-like object the FLAC encoder writes to: the header is held until complete, filled in, then every
    byte goes to :attr:`out` (what age reads next). Errors are kept in :attr:`error` (the encoder calls this from
    C, where an exception would be lost) and make every later write fail."""

    def __init__(self, frames: int, rate: int, channels: int, md5: bytes) -> None:
        self.frames, self.rate, self.channels, self.md5 = frames, rate, channels, md5
        self.pos = self.length = 0
        self.head = bytearray()
        self.sent_head: bytes | None = None
        self.out: deque[bytes] = deque()  # what age reads next, in the pieces the encoder wrote
        self.error: BaseException | None = None

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, size: int = -1) -> bytes:
        self._fail(ArchiveWriteError("the FLAC encoder tried to read back what it wrote"))
        return b""

    def flush(self) -> None:
        pass

    def write(self, data: Any) -> int:
        if self.error is not None:
            return 0
        data = bytes(data)
        try:
            if self.pos == self.length:
                self._append(data)
            elif self.pos < self.length:
                self._rewrite(data)
            else:
                raise ArchiveWriteError(f"the FLAC encoder left a hole at byte {self.length}")
        except ArchiveWriteError as exc:
            self._fail(exc)
            return 0
        return len(data)

    def _append(self, data: bytes) -> None:
        size = len(data)
        if self.sent_head is None:
            take = HEAD - len(self.head)
            self.head += data[:take]
            data = data[take:]
            if len(self.head) == HEAD:
                self.sent_head = patch_streaminfo(bytes(self.head), self.frames, self.rate, self.channels, self.md5)
                self.out.append(self.sent_head)
        if data:
            self.out.append(data)
        self.pos = self.length = self.pos + size

    def _rewrite(self, data: bytes) -> None:
        end = self.pos + len(data)
        if self.sent_head is None or end > HEAD:
            raise ArchiveWriteError(f"the FLAC encoder rewrote bytes {self.pos}..{end}, already encrypted")
        for offset, byte in enumerate(data, self.pos):
            if offset not in _FRAME_SIZES and self.sent_head[offset] != byte:
                raise ArchiveWriteError(
                    f"the FLAC encoder's header byte {offset} ({byte}) differs from the one encrypted"
                    f" ({self.sent_head[offset]}): the sample count or MD5 computed here is not the encoder's"
                )
        self.pos = end

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc


class _FlacReader:
    """What ``pyrage.encrypt_io`` reads: the FLAC of ``pcm``, encoded a block at a time as it is read."""

    def __init__(self, pcm: np.ndarray, rate: int, md5: bytes) -> None:
        import soundfile as sf

        self.pcm, self.at, self.done = pcm, 0, False
        self.error: BaseException | None = None
        channels = 1 if pcm.ndim == 1 else pcm.shape[1]
        self.sink = _FlacSink(pcm.shape[0], rate, channels, md5)
        self.flac = sf.SoundFile(self.sink, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16")

    def read(self, size: int = -1) -> bytes:
        """The next bytes of the FLAC stream, up to ``size`` (fewer is allowed: one piece the encoder wrote)."""
        try:
            out = self.sink.out
            while not out and not self.done:
                self._encode_more()
            if not out:
                return b""
            piece = out.popleft()
            if size is not None and 0 < size < len(piece):
                out.appendleft(piece[size:])
                piece = piece[:size]
            return piece
        except BaseException as exc:  # age sees an I/O error; the caller re-raises this one
            self.error = self.error or exc
            raise

    def _encode_more(self) -> None:
        if self.at < len(self.pcm):
            self.flac.write(self.pcm[self.at : self.at + BLOCK])
            self.at += BLOCK
        else:
            self.flac.close()
            self.done = True
            if self.sink.sent_head is None:
                self.sink._fail(ArchiveWriteError("the FLAC encoder wrote no complete header"))
        if self.sink.error is not None:
            raise self.sink.error

    def close(self) -> None:
        if not self.flac.closed:
            self.flac.close()


def _encrypt_flac(pcm: np.ndarray, rate: int, md5: bytes, keys: Sequence[str], out: Any) -> None:
    reader = _FlacReader(pcm, rate, md5)
    try:
        pyrage().encrypt_io(reader, out, recipients(keys))
    except Exception as exc:
        raise (reader.error or exc) from None
    finally:
        reader.close()
    if reader.error is not None or not reader.done or reader.sink.out:
        raise reader.error or ArchiveWriteError("age stopped reading before the end of the FLAC stream")


def write_chunk(
    pcm: np.ndarray,
    *,
    rate: int,
    directory: str | os.PathLike[str],
    stream: str,
    t0: float,
    seq: int | None,
    keys: Sequence[str] | None,
) -> dict[str, Any]:
    """Archive 16-bit samples as ``<name>.flac.age`` encrypted to ``keys`` (or ``<name>.flac`` when ``keys`` is
    None: unencrypted, only when asked for) in ``directory`` (made if missing).

    Args:
        pcm: int16 samples, shape ``(n,)`` or ``(n, channels)``.
        rate: samples per second.
        directory: the archive directory.
        stream, t0, seq: the chunk's stream id, the time of its first sample, its number (see ``names``).
        keys: age public keys (``age1...``, checked: ``keys.parse_recipients``), or None for plaintext.

    Returns:
        ``{"path", "bytes", "frames", "rate", "encrypted", "existed"}``: ``existed`` when the same chunk was
        archived before (its name exists: it is left as it is).
    """
    if pcm.dtype != np.int16 or pcm.ndim not in (1, 2) or pcm.shape[0] == 0:
        raise ValueError(f"pcm must be int16 samples of shape (n,) or (n, channels), got {pcm.dtype} {pcm.shape}")
    pcm = np.ascontiguousarray(pcm, dtype="<i2")
    md5 = pcm_digest(pcm.tobytes())
    name = make_name(stream, t0, seq, pcm.shape[0], rate, md5, encrypted=keys is not None)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name.filename
    if target.exists():
        return _result(target, name, existed=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name.filename}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            if keys is None:
                import soundfile as sf

                sf.write(out, pcm, rate, format="FLAC", subtype="PCM_16")
            else:
                _encrypt_flac(pcm, rate, md5, keys, out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        existed = not _publish(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(folder)
    _remove_stale_temps(folder, name.filename)
    return _result(target, name, existed=existed)


def _publish(tmp: str, target: Path) -> bool:
    """Give the complete ``tmp`` its final name unless that name exists; False when it did."""
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
    # a filesystem without hard links: rename, which could replace a file made in between by another writer
    # of the same chunk (the same samples under the same name)
    if target.exists():
        return False
    os.rename(tmp, target)
    return True


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temps(folder: Path, filename: str) -> None:
    """Remove temporary files of this chunk left by a worker killed while writing it (older than STALE_TEMP)."""
    now = time.time()
    for path in folder.glob(f".{filename}.*.tmp"):
        with contextlib.suppress(OSError):
            if is_temporary(path.name) and now - path.stat().st_mtime > STALE_TEMP:
                path.unlink()


def _result(target: Path, name: ArchiveName, *, existed: bool) -> dict[str, Any]:
    return {
        "path": str(target),
        "bytes": target.stat().st_size,
        "frames": name.frames,
        "rate": name.rate,
        "encrypted": name.encrypted,
        "existed": existed,
    }
