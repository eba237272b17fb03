"""Audio functions behind the worker tasks of the canonical microphone use case.

One microphone feeds three consumers: a sound level every 0.5 s (:func:`spl`), a
FLAC archive every 10 s (:func:`archive_flac`) and a model every 2 s (Silero VAD, in
:mod:`workers.vad`). :func:`classify` here is only that model's fallback, a hand-set
classifier used where the model cannot be installed.
Everything here is plain numpy/soundfile, knows nothing of Celery and returns only
``str``/``int``/``float`` values, so results survive msgpack and JSON.

Conventions:
    * A chunk is a float array in [-1, 1] or int16 PCM (scaled by 1/32768), shaped
      ``(n,)`` or ``(n, channels)``, or ``bytes`` of little-endian int16 mono PCM.
    * Levels are dBFS of the RMS (a full-scale sine reads -3.01 dBFS), floored at
      :data:`FLOOR_DBFS` so that digital silence never yields ``-inf``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

Chunk = np.ndarray | bytes | bytearray | memoryview

FLOOR_DBFS = -120.0
"""Lowest level reported, in dBFS (well below the 16-bit quantisation floor)."""

LABELS = ("silence", "tone", "noise")
"""Labels of :func:`classify`, in the row order of :data:`WEIGHTS`."""

WEIGHTS = np.array(
    [
        # bias, loudness, flatness, peak_fraction
        [3.0, -6.0, 0.0, 0.0],  # silence: quiet, whatever the spectrum
        [-1.0, 2.0, -2.0, 4.0],  # tone: energy in one spectral peak
        [-1.0, 2.0, 4.0, -2.0],  # noise: flat spectrum (white noise ~0.56)
    ]
)
"""Linear model of :func:`classify` (the fallback): ``scores = softmax(WEIGHTS @ [1, *features])``.

Hand-set, not trained. Loudness maps -60..0 dBFS onto 0..1, so silence wins below about
-45 dBFS (roughly 49 dB SPL with the default 94 dB offset).
"""
WEIGHTS.flags.writeable = False

LOUDNESS_RANGE_DB = 60.0
_PCM16_SCALE = 32768.0


def as_float(chunk: Chunk) -> np.ndarray:
    """Convert a chunk to a new float32 array of shape ``(n,)`` or ``(n, channels)``.

    Args:
        chunk: A float32/float64 array in [-1, 1], an int16 PCM array, or ``bytes``
            of little-endian int16 mono PCM. Float values are not clipped.

    Returns:
        A float32 array that shares no memory with ``chunk``.

    Raises:
        ValueError: If ``chunk`` has another type, dtype or shape, is empty, or holds
            NaN or infinite values.
    """
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        raw = bytes(chunk)
        if len(raw) % 2:
            raise ValueError(f"chunk: int16 PCM bytes need an even length, got {len(raw)}")
        arr = np.frombuffer(raw, dtype="<i2")
    elif isinstance(chunk, np.ndarray):
        arr = chunk
    else:
        kind = type(chunk).__name__
        # ValueError, not TypeError: callers catch one exception for any bad chunk.
        raise ValueError(f"chunk must be a numpy array or int16 PCM bytes, got {kind}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"chunk must have shape (n,) or (n, channels), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"chunk must hold at least one sample, got shape {arr.shape}")
    if arr.dtype.kind == "i" and arr.dtype.itemsize == 2:
        return arr.astype(np.float32) * np.float32(1 / _PCM16_SCALE)
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
        raise ValueError(f"chunk dtype must be float32, float64 or int16, got {arr.dtype}")
    out = np.array(arr, dtype=np.float32, order="C")
    if not np.isfinite(out).all():
        raise ValueError("chunk holds NaN or infinite values")
    return out


def spl(chunk: Chunk, *, offset_db: float = 94.0) -> dict[str, float | int]:
    """Measure the RMS and peak level of a chunk.

    All channels are pooled into one level.

    Args:
        chunk: Audio, see :func:`as_float`.
        offset_db: Calibration: the dB SPL that reads as 0 dBFS.

    Returns:
        ``{"n": frames, "dbfs": rms level, "db_spl": dbfs + offset_db,
        "peak_dbfs": peak level}``; levels are floored at :data:`FLOOR_DBFS`.

    Raises:
        ValueError: If ``chunk`` is invalid or ``offset_db`` is not finite.
    """
    if not math.isfinite(offset_db):
        raise ValueError(f"offset_db must be finite, got {offset_db!r}")
    x = as_float(chunk).astype(np.float64)
    dbfs = _db(math.sqrt(float(np.mean(np.square(x)))))
    return {
        "n": int(x.shape[0]),
        "dbfs": dbfs,
        "db_spl": dbfs + float(offset_db),
        "peak_dbfs": _db(float(np.max(np.abs(x)))),
    }


def archive_flac(
    chunk: Chunk,
    *,
    rate: int,
    directory: str | Path,
    stream: str,
    t0: float,
    seq: int | None = None,
    recipients: list[str] | None,
) -> dict[str, str | int | bool]:
    """Archive a chunk as 16-bit FLAC encrypted to age ``recipients`` (``<name>.flac.age``), or unencrypted
    (``<name>.flac``) when ``recipients`` is None, in ``directory``.

    The name says the chunk's stream, t0, number, length and a digest of its samples
    (:mod:`ocycle_dist.archive.names`): the same chunk gets the same name and is found written, a chunk of another
    run gets a name of its own; no file is ever overwritten, and a final name only ever holds a complete file
    (:func:`ocycle_dist.archive.writer.write_chunk`: encrypted as it is encoded, no plaintext on disk).

    Args:
        chunk: Audio, see :func:`as_float`; float values are clipped to [-1, 1).
        rate: Sample rate in Hz.
        directory: Target directory, created if missing.
        stream: The chunk's stream id (made safe for a file name).
        t0: Seconds since the epoch of the chunk's first sample.
        seq: The chunk's number in its stream (None: unknown).
        recipients: age X25519 public keys (``age1...``, checked by
            :func:`ocycle_dist.archive.keys.parse_recipients`), or None: unencrypted.

    Returns:
        ``{"path", "bytes", "frames", "rate", "encrypted", "existed"}``.

    Raises:
        ValueError: If ``chunk``, ``rate``, ``t0`` or ``recipients`` is invalid.
        soundfile.LibsndfileError: If libsndfile refuses the data (e.g. > 8 channels).
    """
    from ocycle_dist.archive.writer import write_chunk

    rate = _check_rate(rate)
    if recipients is not None and not recipients:
        raise ValueError("recipients must hold at least one age public key, or be None for an unencrypted archive")
    pcm = _to_pcm16(as_float(chunk))
    return write_chunk(pcm, rate=rate, directory=directory, stream=stream, t0=t0, seq=seq, keys=recipients)


def classify(chunk: Chunk, *, rate: int) -> dict[str, object]:
    """Label a chunk (meant for 2 s) as silence, tone or noise: the FALLBACK of the 2 s consumer.

    Hand-set, not trained: ``workers.tasks.classify`` runs Silero VAD (:mod:`workers.vad`)
    and calls this only where the model is not installed (its result then says so).

    Channels are averaged and the DC offset removed. The features are the RMS level,
    loudness (the level mapped from -60..0 dBFS onto 0..1), the spectral flatness of
    a Hann-windowed rFFT (geometric / arithmetic mean power: ~0 for a sine, ~0.56 for
    white noise) and the peak fraction (share of the power within 2 bins of the
    strongest bin). :data:`WEIGHTS` scores ``[1, loudness, flatness, peak_fraction]``;
    the scores are the softmax of those. ``centroid_hz`` and ``peak_hz`` are
    reported, not scored.

    Args:
        chunk: Audio, see :func:`as_float`.
        rate: Sample rate in Hz.

    Returns:
        ``{"label": str, "scores": {label: probability}, "features": {name: float}}``
        with features ``rms_dbfs``, ``loudness``, ``flatness``, ``peak_fraction``,
        ``centroid_hz`` and ``peak_hz``.

    Raises:
        ValueError: If ``chunk`` or ``rate`` is invalid.
    """
    rate = _check_rate(rate)
    x = as_float(chunk).astype(np.float64)
    mono = x.mean(axis=1) if x.ndim == 2 else x
    mono = mono - mono.mean()
    rms = math.sqrt(float(np.mean(np.square(mono))))
    rms_dbfs = _db(rms)
    features = {
        "rms_dbfs": rms_dbfs,
        "loudness": min(max(1.0 + rms_dbfs / LOUDNESS_RANGE_DB, 0.0), 1.0),
        "flatness": 0.0,
        "peak_fraction": 0.0,
        "centroid_hz": 0.0,
        "peak_hz": 0.0,
    }
    power = np.abs(np.fft.rfft(mono * np.hanning(mono.size))[1:]) ** 2
    total = float(power.sum())
    if rms_dbfs > FLOOR_DBFS and total > 0.0:
        freqs = np.fft.rfftfreq(mono.size, 1.0 / rate)[1:]
        k = int(np.argmax(power))
        log_power = np.log(np.maximum(power, total * 1e-30))
        features["flatness"] = float(np.exp(np.mean(log_power)) / np.mean(power))
        features["peak_fraction"] = float(power[max(k - 2, 0) : k + 3].sum() / total)
        features["centroid_hz"] = float((freqs * power).sum() / total)
        features["peak_hz"] = float(freqs[k])
    inputs = [
        1.0,
        features["loudness"],
        features["flatness"],
        features["peak_fraction"],
    ]
    logits = WEIGHTS @ np.array(inputs)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return {
        "label": LABELS[int(np.argmax(probs))],
        "scores": {label: float(p) for label, p in zip(LABELS, probs, strict=True)},
        "features": features,
    }


def tone(
    seconds: float,
    rate: int,
    freq: float = 440.0,
    amplitude: float = 0.3,
    dtype: DTypeLike = np.float32,
) -> np.ndarray:
    """Synthesise a sine.

    Args:
        seconds: Duration; the length is ``round(seconds * rate)`` frames.
        rate: Sample rate in Hz.
        freq: Frequency in Hz.
        amplitude: Peak amplitude in [0, 1].
        dtype: float32, float64, or int16 (PCM scaled by 32768, clipped).

    Returns:
        A mono array of shape ``(n,)``.

    Raises:
        ValueError: If an argument is out of range or ``dtype`` is unsupported.
    """
    t = np.arange(_frames(seconds, rate)) / rate
    return _convert(_check_amplitude(amplitude) * np.sin(2 * np.pi * freq * t), dtype)


def noise(
    seconds: float,
    rate: int,
    amplitude: float = 0.3,
    dtype: DTypeLike = np.float32,
    *,
    seed: int | None = None,
) -> np.ndarray:
    """Synthesise white noise, uniform in [-amplitude, amplitude].

    Args:
        seconds: Duration; the length is ``round(seconds * rate)`` frames.
        rate: Sample rate in Hz.
        amplitude: Peak amplitude in [0, 1].
        dtype: float32, float64, or int16 (PCM scaled by 32768, clipped).
        seed: Seed for a reproducible signal.

    Returns:
        A mono array of shape ``(n,)``.

    Raises:
        ValueError: If an argument is out of range or ``dtype`` is unsupported.
    """
    n = _frames(seconds, rate)
    amplitude = _check_amplitude(amplitude)
    return _convert(np.random.default_rng(seed).uniform(-amplitude, amplitude, n), dtype)


def _db(amplitude: float) -> float:
    """Return ``20 * log10(amplitude)`` floored at :data:`FLOOR_DBFS`."""
    return max(20.0 * math.log10(amplitude), FLOOR_DBFS) if amplitude > 0.0 else FLOOR_DBFS


def _to_pcm16(x: np.ndarray) -> np.ndarray:
    """Scale floats by 32768, round and clip to int16."""
    return np.clip(np.rint(x.astype(np.float64) * _PCM16_SCALE), -32768, 32767).astype(np.int16)


def _convert(x: np.ndarray, dtype: DTypeLike) -> np.ndarray:
    """Return float signal ``x`` as float32, float64 or int16 PCM."""
    dt = np.dtype(dtype)
    if dt == np.int16:
        return _to_pcm16(x)
    if dt in (np.float32, np.float64):
        return x.astype(dt)
    raise ValueError(f"dtype must be float32, float64 or int16, got {dt}")


def _check_rate(rate: int) -> int:
    """Return ``rate`` as an int if it is a positive integer, else raise ValueError."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"rate must be a positive int, got {rate!r}")
    return int(rate)


def _check_amplitude(amplitude: float) -> float:
    """Return ``amplitude`` if it lies in [0, 1], else raise ValueError."""
    if not 0.0 <= amplitude <= 1.0:
        raise ValueError(f"amplitude must be in [0, 1], got {amplitude!r}")
    return float(amplitude)


def _frames(seconds: float, rate: int) -> int:
    """Return the frame count of ``seconds`` at ``rate``, validating both."""
    rate = _check_rate(rate)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
    return round(seconds * rate)
