"""Tasks of the canonical audio use: sound level every 0.5 s, a FLAC archive every 10 s, a model every 2 s.

The model is Silero VAD (:mod:`workers.vad`, ``pip install 'ocycle-dist[model]'``), loaded once per worker
process; where it is not installed, ``classify`` falls back to a hand-set classifier and says so.

Each task is a function of ``(chunk, t0)`` and is safe to run twice on the same chunk: the results are
pure functions of the chunk, and the archive's file name comes from the chunk's stream, t0, sequence number and
samples (the same chunk finds its file written; nothing is overwritten). ``classify`` is
:func:`ocycle_dist.batched`: chunks that reach a worker together run through the model together.
"""

from __future__ import annotations

from typing import Any

from ocycle_dist.archive.keys import archive_keys
from ocycle_dist.batched import batched
from ocycle_dist.remote.protocol import META_HEADER

from . import app, audio, settings, vad


@app.task(name="workers.tasks.spl")
def spl(chunk: Any, t0: float) -> dict[str, Any]:
    """Sound level of a chunk (e.g. 0.5 s): dBFS, dB SPL and peak."""
    return {"t0": t0, **audio.spl(chunk)}


@app.task(name="workers.tasks.classify")
@batched(max_chunks=vad.MAX_BATCH)
def classify(chunks: list[Any], t0s: list[float]) -> list[dict[str, Any] | Exception]:
    """Speech probability of each chunk (e.g. 2 s) by Silero VAD: label ``speech`` or ``no_speech``.

    Batched: the chunks that reach a worker together (a batch message, a drain) run through the model in one
    ONNX run (:func:`workers.vad.detect_many`); a message alone, or a stock worker, calls it with one chunk
    (``classify(chunk, t0)``), with the same result. An invalid chunk fails alone. Without the model
    installed: the hand-set fallback (labels silence, tone, noise), whose result's ``model`` says so. See
    :func:`workers.vad.classify`.
    """
    results = vad.classify_many(chunks, rate=settings.sample_rate)
    return [r if isinstance(r, Exception) else {"t0": t0, **r} for r, t0 in zip(results, t0s, strict=True)]


@app.task(name="workers.tasks.archive_flac", bind=True)
def archive_flac(self: Any, chunk: Any, t0: float) -> dict[str, Any]:
    """Archive a chunk (e.g. 10 s) as FLAC encrypted to ``OCYCLE_ARCHIVE_RECIPIENTS`` under ``OCYCLE_ARCHIVE_DIR``.

    Unencrypted only with ``OCYCLE_ARCHIVE_PLAINTEXT=1``; with neither, the chunk is refused (``ConfigError`` naming
    ``OCYCLE_ARCHIVE_RECIPIENTS``). Returns the file's path and size (:func:`workers.audio.archive_flac`).
    """
    keys = archive_keys(settings.archive_recipients, settings.archive_plaintext)
    info = self.request.get(META_HEADER) or {}
    stream, seq = info.get("stream"), info.get("seq")
    stream = stream if isinstance(stream, str) and stream else "chunk"
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None
    result = audio.archive_flac(
        chunk, rate=settings.sample_rate, directory=settings.archive_dir, stream=stream, t0=t0, seq=seq, recipients=keys
    )
    return {"t0": t0, **result}
