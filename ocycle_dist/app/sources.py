"""Audio sources of ``ocycle-dist stream``: raw PCM on stdin, a WAV/FLAC file, a microphone (PortAudio).

A source reads on its own thread (or PortAudio's callback) into a bounded queue; the writer takes
``(frame, t0)`` pairs with :meth:`Source.get`: ``frame`` is float32 mono (channels are mixed down: the
workers' tasks take mono), ``t0`` the wall-clock time of its first sample. :data:`END` says the source is
exhausted (or stopped, or failed: see :attr:`Source.error`).

- :class:`StdinPCM`: interleaved PCM of an ``arecord``-style format (``S16_LE``...), rate and channels, read
  from a binary stream (stdin). ``t0`` counts samples from the time the first frame arrived.
- :class:`FileSource`: a WAV/FLAC/... file (libsndfile), replayed in real time or as fast as it is taken.
- :class:`Synthetic`: a test signal (tone, noise, silence in turn), in real time or as fast as it is taken:
  ``ocycle-dist demo``'s source, ``stream --synthetic SECONDS``.

A source that ends before its own end (a file shorter than its header says, a partial sample frame at the end of
stdin) streams what it holds, then ends with an ``EOFError`` saying what is missing: the stream fails (exit 1).
- :class:`Microphone`: a ``sounddevice.InputStream`` (``pip install 'ocycle-dist[mic]'``): its callback puts
  each block, with its ADC time mapped to wall-clock time, into the queue; a full queue drops the block and
  counts it (:attr:`Source.dropped`), PortAudio's input-overflow flags are counted too (:attr:`Source.overflows`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np

from ..errors import ConfigError

END = object()  # what get() returns once the source is exhausted, stopped or failed

# arecord's format names: (numpy dtype, bytes per sample, full scale, offset)
PCM_FORMATS: dict[str, tuple[str, int, float, float]] = {
    "S8": ("i1", 1, 128.0, 0.0),
    "U8": ("u1", 1, 128.0, 128.0),
    "S16_LE": ("<i2", 2, 32768.0, 0.0),
    "S16_BE": (">i2", 2, 32768.0, 0.0),
    "S24_3LE": ("<i4", 3, 8388608.0, 0.0),  # 3 bytes a sample, sign-extended on read
    "S32_LE": ("<i4", 4, 2147483648.0, 0.0),
    "S32_BE": (">i4", 4, 2147483648.0, 0.0),
    "FLOAT_LE": ("<f4", 4, 1.0, 0.0),
    "FLOAT_BE": (">f4", 4, 1.0, 0.0),
    "FLOAT64_LE": ("<f8", 8, 1.0, 0.0),
    "FLOAT64_BE": (">f8", 8, 1.0, 0.0),
}


def _positive(name: str, value: Any, kind: type = int) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(name, value, f"a positive {'integer' if kind is int else 'number'}")
    if kind is int and int(value) != value:
        raise ConfigError(name, value, "a positive integer")
    return kind(value)


def decode_pcm(raw: bytes, fmt: str, channels: int) -> np.ndarray:
    """Interleaved PCM bytes of ``fmt`` to float32 mono in [-1, 1] (channels averaged); whole frames only."""
    dtype, width, scale, offset = PCM_FORMATS[fmt]
    usable = len(raw) - len(raw) % (width * channels)
    if width == 3:
        b = np.frombuffer(raw[:usable], dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        samples = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = np.where(samples >= 1 << 23, samples - (1 << 24), samples)
    else:
        samples = np.frombuffer(raw[:usable], dtype=dtype)
    x = (samples.astype(np.float64) - offset) / scale
    x = x.reshape(-1, channels)
    return (x.mean(axis=1) if channels > 1 else x[:, 0]).astype(np.float32)


class Source:
    """Base of the sources: a bounded queue of ``(frame, t0)`` between the reading and the writer.

    Attributes:
        description: what is read, for messages.
        rate: samples per second.
        frames: blocks read; samples: samples read.
        dropped: blocks lost because the queue was full (the writer fell behind).
        overflows: blocks the device flagged as input overflow (samples lost before they reached us).
        error: the exception that ended the reading, if any.
        paced: the writer may wait for the workers (a file or a test signal not replayed in real time): it
            waits while every consumer has chunks in flight up to its bound, so nothing is dropped.
    """

    description = "a source"
    paced = False

    def __init__(self, rate: int, channels: int, *, queue_blocks: int = 256) -> None:
        self.rate = _positive("rate", rate)
        self.channels = _positive("channels", channels)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_positive("queue_blocks", queue_blocks))
        self._stop = threading.Event()
        self._ended = False
        self.frames = self.samples = self.dropped = self.overflows = 0
        self.error: BaseException | None = None

    def start(self) -> Source:
        """Start reading."""
        return self

    def stop(self) -> None:
        """Stop reading (idempotent); :meth:`get` returns what was read, then :data:`END`."""
        self._stop.set()

    def get(self, timeout: float) -> Any:
        """The next ``(frame, t0)``, :data:`END`, or None when nothing came within ``timeout`` seconds."""
        if self._ended:
            return END
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is END:
            self._ended = True
        return item

    def _put(self, frame: np.ndarray, t0: float) -> bool:
        """From the reading thread: queue a frame, waiting for room; False once stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put((frame, t0), timeout=0.1)
            except queue.Full:
                continue
            self.frames += 1
            self.samples += len(frame)
            return True
        return False

    def _end(self, error: BaseException | None = None) -> None:
        """From the reading thread: no more frames (put even when the queue is full: the writer drains it)."""
        self.error = error
        while True:
            try:
                self._queue.put(END, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():  # the writer no longer reads: make room for END
                    with contextlib.suppress(queue.Empty):
                        self._queue.get_nowait()

    def _thread(self, target: Callable[[], None], name: str) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported by the writer through .error
                self._end(exc)
            else:
                self._end()

        threading.Thread(target=run, name=name, daemon=True).start()

    @property
    def seconds(self) -> float:
        """Seconds of audio read."""
        return self.samples / self.rate


class StdinPCM(Source):
    """Raw interleaved PCM from a binary stream (default: stdin), e.g. ``arecord -f S16_LE -r 16000 -c 1``.

    Args:
        format: one of :data:`PCM_FORMATS` (arecord's names).
        rate: samples per second per channel.
        channels: interleaved channels (mixed down to mono).
        frame: samples per frame read and written.
        stream: where to read (default: file descriptor 0, read with ``os.read``: a thread blocked in
            ``sys.stdin.buffer.read()`` would hold its lock and abort the interpreter's exit).

    The first frame's t0 is the time it arrived minus its duration (it was being recorded until then); the
    others follow it by their sample count, so t0s are sample-exact.
    """

    def __init__(
        self,
        format: str = "S16_LE",  # arecord's -f
        rate: int = 16000,
        channels: int = 1,
        frame: int = 1024,
        stream: BinaryIO | None = None,
    ) -> None:
        super().__init__(rate, channels)
        if format not in PCM_FORMATS:
            raise ConfigError("format", format, f"one of {', '.join(PCM_FORMATS)}")
        self.format = format
        self.frame = _positive("frame", frame)
        self.stream = stream
        self.description = f"raw PCM on stdin ({format}, {self.rate} Hz, {self.channels} channel(s))"
        self.trailing_bytes = 0  # bytes at the end that did not make a whole sample frame (an error: see _read)

    def start(self) -> StdinPCM:
        self._thread(self._read, "ocycle-source-stdin")
        return self

    def _read_exactly(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the input."""
        if self.stream is not None:
            return self.stream.read(n)
        pieces, got = [], 0
        while got < n:
            piece = os.read(0, n - got)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def _read(self) -> None:
        width = PCM_FORMATS[self.format][1] * self.channels
        t_first: float | None = None
        while not self._stop.is_set():
            raw = self._read_exactly(self.frame * width)
            if not raw:
                return
            self.trailing_bytes = len(raw) % width
            frame = decode_pcm(raw, self.format, self.channels)
            if len(frame):
                if t_first is None:
                    t_first = time.time() - len(frame) / self.rate
                if not self._put(frame, t_first + self.samples / self.rate):
                    return
            if self.trailing_bytes:  # the input ended inside a sample frame: not the format and channels given?
                raise EOFError(
                    f"stdin ended with {self.trailing_bytes} byte(s) that are not a whole sample frame ({self.format},"
                    f" {self.channels} channel(s): {width} bytes each), after {self.samples} samples: they were not"
                    " streamed; is the input in that format?"
                )


class FileSource(Source):
    """A sound file libsndfile reads (WAV, FLAC, OGG...), in frames of ``frame`` samples.

    Args:
        path: the file.
        realtime: hand each frame over when its last sample would have been recorded; else as fast as the
            writer takes them (it waits for the workers).
        frame: samples per frame.
    """

    def __init__(self, path: str, *, realtime: bool = False, frame: int = 1024) -> None:
        try:
            import soundfile as sf
        except OSError as exc:  # soundfile is there, the libsndfile library is not (no wheel bundles it here)
            need = f"libsndfile, to read sound files: apt-get install libsndfile1 ({exc})"
            raise ConfigError("source", path, need) from None
        try:
            info = sf.info(path)
        except Exception as exc:  # libsndfile's errors, missing files
            raise ConfigError("source", path, f"a readable WAV/FLAC file ({exc})") from None
        super().__init__(int(info.samplerate), int(info.channels))
        self.path, self.realtime, self.frame = path, bool(realtime), _positive("frame", frame)
        self.paced = not self.realtime
        self.duration = float(info.duration)
        self.frames_expected = int(info.frames)  # what libsndfile can read
        self.truncated = truncation(path, int(info.frames))  # what the header says is missing
        pace = "in real time" if realtime else "as fast as the workers take it"
        self.description = (
            f"{path} ({info.format}, {self.rate} Hz, {self.channels} channel(s), {self.duration:.1f} s), {pace}"
        )
        if self.truncated:
            self.description += f" (TRUNCATED: {self.truncated})"

    def start(self) -> FileSource:
        self._thread(self._read, "ocycle-source-file")
        return self

    def _read(self) -> None:
        import soundfile as sf

        start = time.time()
        with sf.SoundFile(self.path) as f:
            for block in f.blocks(blocksize=self.frame, dtype="float32", always_2d=True):
                frame = (block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]).astype(np.float32)
                t0 = start + self.samples / self.rate
                if self.realtime and self._stop.wait(max(0.0, t0 + len(frame) / self.rate - time.time())):
                    return
                if not self._put(frame, t0):
                    return
        if self.truncated or self.samples < self.frames_expected:
            missing = self.truncated or f"{self.frames_expected - self.samples} samples could not be read"
            raise EOFError(f"{self.path} is truncated: {missing}; the {self.seconds:.2f} s it holds were streamed")


def synthetic(seconds: float, rate: int, frame: int = 1024) -> Iterator[np.ndarray]:
    """Frames of a test signal: 4 s of a 440 Hz tone, 4 s of noise, 4 s of silence, over again."""
    rng = np.random.default_rng(0)
    total = int(seconds * rate)
    for start in range(0, total, frame):
        n = min(frame, total - start)
        t = (start + np.arange(n)) / rate
        part = int(t[0] // 4) % 3
        if part == 0:
            x = 0.3 * np.sin(2 * np.pi * 440.0 * t)
        elif part == 1:
            x = rng.uniform(-0.3, 0.3, n)
        else:
            x = np.zeros(n)
        yield x.astype(np.float32)


class Synthetic(Source):
    """:func:`synthetic`'s test signal, ``seconds`` long at ``rate``, in frames of ``frame`` samples.

    Args:
        realtime: hand each frame over when its last sample would have been recorded; else as fast as the
            writer takes them (it waits for the workers).
    """

    def __init__(self, seconds: float, rate: int, *, realtime: bool = False, frame: int = 1024) -> None:
        super().__init__(rate, 1)
        self.length = float(_positive("seconds", seconds, float))
        self.realtime, self.frame = bool(realtime), _positive("frame", frame)
        self.paced = not self.realtime
        pace = "in real time" if realtime else "as fast as the workers take it"
        self.description = f"a test signal (tone, noise, silence; {self.rate} Hz, {self.length:g} s), {pace}"

    def start(self) -> Synthetic:
        self._thread(self._read, "ocycle-source-synthetic")
        return self

    def _read(self) -> None:
        start = time.time()
        for frame in synthetic(self.length, self.rate, self.frame):
            t0 = start + self.samples / self.rate
            if self.realtime and self._stop.wait(max(0.0, t0 + len(frame) / self.rate - time.time())):
                return
            if not self._put(frame, t0):
                return


def truncation(path: str, frames: int) -> str:
    """What a WAV file's header says is missing from it ("" when nothing is, or it is no plain RIFF WAV): a file
    cut short (a recorder that died, a copy interrupted) still opens, and libsndfile reads what is there."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return ""
            size = os.fstat(f.fileno()).st_size
            width = 0
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return ""
                name, length = chunk[:4], int.from_bytes(chunk[4:], "little")
                if name == b"fmt ":
                    fmt = f.read(length + (length & 1))
                    width = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else 0  # block align
                    continue
                if name == b"data":
                    if length >= 0x7FFF0000:  # a streamed WAV (arecord to a pipe): its length is unknown
                        return ""
                    held = size - f.tell()
                    if held >= length:
                        return ""
                    declared = length // width if width else 0
                    what = f"{declared} samples" if declared else f"{length} bytes"
                    return f"its header declares {what}, the file holds {frames} ({held} of {length} bytes of audio)"
                f.seek(length + (length & 1), 1)
    except OSError:
        return ""


class Microphone(Source):
    """An input device through PortAudio (``sounddevice``): each block its callback gets goes to the queue.

    Args:
        device: a device name or index (``sounddevice.query_devices()``); None for the default input.
        rate: samples per second.
        channels: input channels (mixed down to mono).
        blocksize: samples per callback (per frame written).
        stream_factory: makes the input stream (default ``sounddevice.InputStream``); tests give their own.

    A block's t0 is its ADC time (``time_info.inputBufferAdcTime``, on the stream's clock) mapped to wall-clock
    time by the offset measured at start; where the host API gives no ADC time, the callback's time minus the
    block's duration and the input latency. A t0 less than half a block after the previous block's end (clock
    jitter), or before it, is moved to that end, so t0s never go backwards; a later one (samples lost) is kept.
    When the stream ends by itself (the device is gone), the source ends with an error.
    """

    def __init__(
        self,
        device: str | int | None = None,
        rate: int = 16000,
        channels: int = 1,
        blocksize: int = 1024,
        *,
        queue_blocks: int = 256,
        stream_factory: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(rate, channels, queue_blocks=queue_blocks)
        self.device, self.blocksize = device, _positive("blocksize", blocksize)
        if stream_factory is None:
            try:
                import sounddevice as sd
            except (ImportError, OSError) as exc:  # OSError: the PortAudio library is missing
                raise ConfigError(
                    "source",
                    "mic",
                    f"sounddevice and PortAudio: pip install 'ocycle-dist[mic]'; apt-get install libportaudio2 ({exc})",
                ) from None
            stream_factory = sd.InputStream
        self._factory = stream_factory
        self._stream: Any = None
        self._offset = 0.0  # wall-clock time minus the stream's clock
        self._next_t0 = 0.0  # where the previous block ended
        self.description = f"microphone {device if device is not None else '(default input)'}"

    def start(self) -> Microphone:
        try:
            self._stream = self._factory(
                device=self.device,
                samplerate=self.rate,
                channels=self.channels,
                dtype="float32",
                blocksize=self.blocksize,
                callback=self._callback,
                finished_callback=self._finished,
            )
        except Exception as exc:  # sounddevice.PortAudioError, ValueError for an unknown device
            raise ConfigError("device", self.device, f"an input device PortAudio can open ({exc})") from None
        self._offset = time.time() - float(self._stream.time)
        self.description = f"microphone {self._device_name()}, {self.rate} Hz, {self.channels} channel(s)"
        self.description += f", latency {self._stream.latency:.3f} s"
        self._stream.start()
        return self

    def _device_name(self) -> str:
        """The opened device's name and host API (``'system' (JACK Audio Connection Kit)``), where known."""
        try:
            import sounddevice as sd

            info = sd.query_devices(self._stream.device)
            return f"{info['name']!r} ({sd.query_hostapis(info['hostapi'])['name']})"
        except Exception:  # a test's stream, or no such query
            return repr(self.device) if self.device is not None else "(default input)"

    def stop(self) -> None:
        if not self._stop.is_set():
            super().stop()
            if self._stream is not None:
                try:
                    self._stream.stop()
                    self._stream.close()
                finally:
                    self._end()

    def _finished(self) -> None:
        """PortAudio: the stream has stopped; unless we stopped it, the device is gone."""
        if not self._stop.is_set():
            self._end(RuntimeError(f"the input stream of {self.description} ended by itself (device lost?)"))

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's thread: never blocks; a full queue drops the block (counted)."""
        if self._stop.is_set():
            return
        if getattr(status, "input_overflow", False):
            self.overflows += 1
        adc = float(getattr(time_info, "inputBufferAdcTime", 0.0) or 0.0)
        if adc > 0:
            t0 = adc + self._offset
        else:
            t0 = time.time() - frames / self.rate - float(getattr(self._stream, "latency", 0.0) or 0.0)
        if self._next_t0 and t0 < self._next_t0 + frames / self.rate / 2:  # jitter, or backwards: contiguous
            t0 = self._next_t0
        self._next_t0 = t0 + frames / self.rate
        frame = (indata.mean(axis=1) if indata.shape[1] > 1 else indata[:, 0]).astype(np.float32, copy=True)
        try:
            self._queue.put_nowait((frame, t0))
        except queue.Full:
            self.dropped += 1
            return
        self.frames += 1
        self.samples += frames
