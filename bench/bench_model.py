"""Per-chunk latency and process memory of the 2 s consumer's model (Silero VAD, ``workers/vad.py``).

Run from the repository root (needs ``pip install -e '.[audio,celery,model]'``)::

    python bench/bench_model.py               # 50 timed runs on a 2 s chunk of 16 kHz float32
    python bench/bench_model.py --runs 200 --rate 8000

In one process, as a worker process would: ``VmRSS`` (``/proc/self/status``) at start, after importing the
worker's tasks (``workers.tasks``: Celery and the app), after loading the model (onnxruntime and the ONNX
session) and after the timed runs; then the median (and p10/p90) wall time of :func:`workers.vad.detect` on
one 2 s chunk, and its ratio to the 2 s of audio it covers. The hand-set fallback is timed the same way for
comparison. The model runs on one thread, as in a worker. Exit code 0 unless the model is not installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's workers

import numpy as np

CHUNK_S = 2.0


def rss_mb() -> float:
    """This process's resident set size (``VmRSS``) in MB."""
    return _status_kb("VmRSS") / 1024


def _status_kb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def timed(fn: object, runs: int) -> list[float]:
    """Wall time of ``runs`` calls of ``fn()``, in seconds, after 3 warm-up calls."""
    assert callable(fn)
    for _ in range(3):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def summary(name: str, seconds: list[float]) -> str:
    q = statistics.quantiles(seconds, n=10)
    med = statistics.median(seconds)
    return (
        f"{name}: median {med * 1e3:.2f} ms per {CHUNK_S:g} s chunk (p10 {q[0] * 1e3:.2f}, p90 {q[-1] * 1e3:.2f} ms, "
        f"{len(seconds)} runs) = {med / CHUNK_S:.4f} of real time ({CHUNK_S / med:.0f}x faster than real time)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    parser.add_argument("--rate", type=int, default=16000, choices=(16000, 8000), help="sample rate (Hz)")
    args = parser.parse_args(argv)

    rss = {"start (python, numpy)": rss_mb()}
    from workers import audio, tasks, vad

    assert tasks.classify.name == "workers.tasks.classify"
    rss["after importing workers.tasks (celery, the app)"] = rss_mb()
    if not vad.available():
        print("the model is not installed: pip install -e '.[model]'", file=sys.stderr)
        return 2
    t = time.perf_counter()
    model = vad.load()
    load_s = time.perf_counter() - t
    rss["after loading the model (onnxruntime, session)"] = rss_mb()

    chunk = np.random.default_rng(0).uniform(-0.3, 0.3, int(CHUNK_S * args.rate)).astype(np.float32)
    result = vad.detect(chunk, rate=args.rate)
    model_s = timed(lambda: vad.detect(chunk, rate=args.rate), args.runs)
    rss[f"after {args.runs + 3} model runs"] = rss_mb()
    fallback_s = timed(lambda: audio.classify(chunk, rate=args.rate), args.runs)

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")  # fmt: skip
    print(f"# {model.name}, {result['windows']} windows of {vad.WINDOW[args.rate]} samples at {args.rate} Hz")
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, one thread")
    print(f"model load: {load_s * 1e3:.0f} ms (once per process)")
    print(summary("model", model_s))
    print(summary("hand-set fallback", fallback_s))
    base = rss["after importing workers.tasks (celery, the app)"]
    for name, mb in rss.items():
        print(f"VmRSS {name}: {mb:.1f} MB")
    print(f"model's share of a worker process: +{rss[f'after {args.runs + 3} model runs'] - base:.1f} MB "
          f"over the {base:.1f} MB of the worker's imports; VmHWM {_status_kb('VmHWM') / 1024:.1f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
