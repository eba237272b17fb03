"""The main job: one microphone-like source, three consumers, each chunk a Celery task.

Sound level (SPL) every 0.5 s, a model every 2 s and a FLAC archive every 10 s, from one ``Tap``. Each
consumer has its own Celery queue, so a model that falls behind never delays the sound level; the model's
chunks expire (discarded unstarted, counted) when its workers are more than :data:`MODEL_EXPIRES` seconds
behind. Workers consume queue groups: ``celery -A workers worker -Q spl,archive`` and ``-Q model``.
The source is a synthetic signal (tone, noise, silence in turn) or a WAV file, replayed as 1024-sample
frames with sample-accurate t0s.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..chunk import Chunk
from ..emit import NumpyEmit
from ..remote.settings import Settings
from ..tap import Tap
from .metrics import serve_address

CONSUMERS = (  # (stream, task, seconds per chunk, queue)
    ("spl", "workers.tasks.spl", 0.5, "spl"),
    ("classify", "workers.tasks.classify", 2.0, "model"),
    ("archive", "workers.tasks.archive_flac", 10.0, "archive"),
)
QUEUES = tuple(dict.fromkeys(queue for *_, queue in CONSUMERS))  # what the demo's workers must consume
MODEL_EXPIRES = 6.0  # seconds: a live model works on fresh chunks; older ones are discarded and counted


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


def wav_frames(path: str, rate: int, frame: int = 1024) -> Iterator[np.ndarray]:
    """Mono float32 frames of a WAV/FLAC file, which must be sampled at ``rate``."""
    import soundfile as sf

    with sf.SoundFile(path) as f:
        if f.samplerate != rate:
            raise ValueError(
                f"wav={path!r} is sampled at {f.samplerate} Hz; the workers expect {rate} (OCYCLE_SAMPLE_RATE)"
            )
        for block in f.blocks(blocksize=frame, dtype="float32", always_2d=True):
            yield block.mean(axis=1).astype(np.float32)


def describe(stream: str, result: Any) -> str:
    """One line for a consumer's result."""
    if stream == "spl":
        return f"{result['dbfs']:7.1f} dBFS  ({result['db_spl']:.1f} dB SPL)"
    if stream == "classify":
        return f"{result['label']:<8} p={result['scores'][result['label']]:.2f}"
    seconds = result["frames"] / result.get("rate", 1)
    again = ", written before: kept" if result.get("existed") else ""
    return f"{result['path']} ({result['bytes']:,} bytes, {seconds:.1f} s{again})"


def _progress(emitters: list[NumpyEmit], stop: threading.Event, every: float, out: Callable[[str], None]) -> None:
    """Every ``every`` seconds, one line of each consumer's counters."""
    while not stop.wait(every):
        parts = []
        for (name, *_), e in zip(CONSUMERS, emitters, strict=True):
            s = e.stats()
            parts.append(
                f"{name} {s.done}/{s.emitted} done, {s.in_flight} in flight, {s.failed} failed"
                + (f", {s.expired} expired" if s.expired else "")
                + (f", {s.dropped} dropped" if s.dropped else "")
            )
        out("progress: " + "; ".join(parts))


def run(
    broker: str,
    *,
    seconds: float = 12.0,
    progress: float = 2.0,
    wav: str | None = None,
    realtime: bool = False,
    rate: int = 16000,
    settings: Settings | None = None,
    out: Callable[[str], None] = print,
    metrics: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """Stream the source (``rate`` samples/s) through the three consumers on ``broker``; return their counters.
    With ``metrics`` (``(host, port)``), their Prometheus metrics are served there meanwhile."""

    settings = settings or Settings.from_env(broker_url=broker)
    lock = threading.Lock()
    start_t = time.time()
    results: dict[str, list[Any]] = {name: [] for name, *_ in CONSUMERS}

    def on_done_for(name: str) -> Callable[..., None]:
        def on_done(result: Any, meta: Chunk) -> None:
            with lock:
                results[name].append(result)
                out(f"[{name:<8} #{meta.seq:<3} t0=+{meta.t0 - start_t:6.2f}s] {describe(name, result)}")

        return on_done

    def on_error(exc: BaseException, meta: Chunk) -> None:
        say(f"[{meta.stream:<8} #{meta.seq:<3}] FAILED: {exc}")

    def say(line: str) -> None:  # one line at a time: print() from two threads can interleave within a line
        with lock:
            out(line)

    emitters = [
        NumpyEmit(
            task,
            int(secs * rate),
            clip=True,
            rate=rate,
            mode="celery",
            stream=f"{socket.gethostname()}-{name}",
            settings=settings,
            queue=queue,
            expires=MODEL_EXPIRES if queue == "model" else None,
            on_done=on_done_for(name),
            on_error=on_error,
        )
        for name, task, secs, queue in CONSUMERS
    ]
    try:
        stop_metrics = serve_address(emitters, metrics)
    except BaseException:
        for e in emitters:
            e.close(wait=False)
        raise
    frames = wav_frames(wav, rate) if wav else synthetic(seconds, rate)
    written = 0
    stop = threading.Event()
    reporter = threading.Thread(target=_progress, args=(emitters, stop, progress, say), daemon=True)
    reporter.start()
    with Tap(*emitters) as tap:
        for frame in frames:
            t0 = start_t + written / rate
            if realtime:
                time.sleep(max(0.0, t0 - time.time()))
            tap.write(frame, t0=t0)
            written += len(frame)
        tap.close(flush=True)
    stop.set()
    reporter.join()
    stop_metrics()
    stats = {name: e.stats() for (name, *_), e in zip(CONSUMERS, emitters, strict=True)}
    out(f"streamed {written / rate:.1f} s of audio at {rate} Hz in {time.time() - start_t:.1f} s")
    for name, _, secs, queue in CONSUMERS:
        s = stats[name]
        out(
            f"  {name:<8} every {secs:>4} s, queue {queue!r}: {s.emitted} chunks, {s.done} done, {s.failed} failed,"
            f" {s.dropped} dropped, {s.expired} expired"
        )
    return {name: stats[name] for name, *_ in CONSUMERS}


def main_demo(
    broker: str | None, seconds: float, wav: str | None, realtime: bool, metrics: tuple[str, int] | None = None
) -> int:
    """The ``ocycle-dist demo`` command: a real broker when given or reachable, else an embedded one."""
    import workers

    from ..archive.keys import embedded_archive_env
    from ..remote.redis_client import check_url, reachable, redact
    from .embedded import embedded, lacks

    rate = workers.settings.sample_rate
    url = broker or os.environ.get("OCYCLE_BROKER_URL") or Settings().broker_url
    check_url(url)  # malformed: a ConfigError (exit 2), not "unreachable"
    if reachable(url):
        print(
            f"broker: {redact(url)} (workers must consume queues {','.join(QUEUES)}: celery -A workers worker -Q ...)"
        )
        run(url, seconds=seconds, wav=wav, realtime=realtime, rate=rate, metrics=metrics)
        return 0
    if broker:
        print(f"broker {redact(broker)} is not reachable")
        return 2
    lacking = lacks()
    if lacking:
        print(f"no broker reachable at {redact(url)}, and no embedded one can start here: {'; '.join(lacking)}")
        return 2
    print(f"no broker reachable at {redact(url)}: starting an embedded broker and worker", flush=True)
    env = embedded_archive_env(lambda line: print(line, flush=True))
    with embedded(QUEUES, env=env) as local:
        print(f"embedded broker: {local.server} on {local.url}")
        print(f"embedded workers: {local.workers}", flush=True)
        run(local.url, seconds=seconds, wav=wav, realtime=realtime, rate=rate, metrics=metrics)
    return 0
