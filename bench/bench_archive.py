"""The archive task's time with encryption against without, per 10 s chunk, side by side in one run.

Run from the repository root (needs ``pip install -e '.[audio,celery]'``)::

    python bench/bench_archive.py                 # 100 rounds; about half a minute
    python bench/bench_archive.py --rounds 100 --seconds 10

``workers.tasks.archive_flac`` is called as a worker's pool process runs it (the task function, its settings read
per chunk), on 10 s chunks of 16 kHz float32: a tone, noise, and the demo's mix. Three settings take turns, in
rotating order, on the same chunks: ``plaintext`` (``OCYCLE_ARCHIVE_PLAINTEXT=1``: FLAC written as it is, the task
without encryption) and ``OCYCLE_ARCHIVE_RECIPIENTS`` with one age X25519 recipient (the demo's) and with two (an
owner and a backup key): FLAC streamed into age as it is encoded. Each call writes a new file (a new t0), fsyncs
it and its directory, and the file is removed after. Two directories: the temporary directory's disk, and
``/dev/shm`` (memory: no disk wait, the CPU cost alone). Printed: the median (and p90) per chunk, and the ratio
encrypted / plaintext: the median of each round's ratio (the three calls of a round run back to back, so a ratio
compares calls made under the same load), target <= 1.10.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's workers

import numpy as np

TARGET = 1.10


def chunks(seconds: float, rate: int) -> dict[str, np.ndarray]:
    from ocycle_dist.app.sources import synthetic

    n = round(seconds * rate)
    t = np.arange(n) / rate
    rng = np.random.default_rng(1)
    mix = np.concatenate(list(synthetic(12.0, rate)))[:n]
    return {
        "tone": (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        "noise": rng.uniform(-0.3, 0.3, n).astype(np.float32),
        "demo mix": np.resize(mix, n).astype(np.float32),
    }


def pct(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * q))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100, help="calls per setting, chunk and directory (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="chunk length (default 10 s)")
    args = parser.parse_args()

    from pyrage import x25519

    import workers.tasks as tasks

    base = replace(tasks.settings, archive_recipients="", archive_plaintext="")
    rate = base.sample_rate
    keys = [str(x25519.Identity.generate().to_public()) for _ in range(2)]
    places = {"disk (tempdir)": Path(tempfile.mkdtemp(prefix="bench-archive-"))}
    if os.path.isdir("/dev/shm"):
        places["memory (/dev/shm)"] = Path(tempfile.mkdtemp(prefix="bench-archive-", dir="/dev/shm"))
    print(f"# archive_flac: encrypted vs plaintext, {args.seconds:g} s chunks at {rate} Hz, {args.rounds} rounds")
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| directory | chunk | plaintext | p90 | 1 recipient | p90 | 2 recipients | p90 | FLAC bytes |"
          " ratio, 1 recipient | ratio, 2 recipients |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    t0 = 1_700_000_000.0
    try:
        for place, folder in places.items():
            settings = {
                "plaintext": replace(base, archive_dir=str(folder), archive_plaintext="1"),
                "1 recipient": replace(base, archive_dir=str(folder), archive_recipients=keys[0]),
                "2 recipients": replace(base, archive_dir=str(folder), archive_recipients=",".join(keys)),
            }
            for label, chunk in chunks(args.seconds, rate).items():
                took: dict[str, list[float]] = {k: [] for k in settings}
                size: dict[str, int] = {}
                for r in range(args.rounds + 2):  # the first two rounds warm up
                    order = list(settings)[r % 3 :] + list(settings)[: r % 3]
                    for kind in order:
                        tasks.settings = settings[kind]
                        t0 += args.seconds
                        start = time.perf_counter()
                        result = tasks.archive_flac(chunk, t0)
                        elapsed = time.perf_counter() - start
                        assert not result["existed"] and result["encrypted"] == (kind != "plaintext")
                        size[kind] = result["bytes"]
                        os.unlink(result["path"])
                        if r >= 2:
                            took[kind].append(elapsed)
                median = {k: statistics.median(v) for k, v in took.items()}
                ratios = [
                    statistics.median(e / p for e, p in zip(took[k], took["plaintext"], strict=True))
                    for k in ("1 recipient", "2 recipients")
                ]
                verdicts += [r <= TARGET for r in ratios]
                cells = [f"{median[k] * 1e3:.2f} ms | {pct(took[k], 0.9) * 1e3:.2f} ms" for k in settings]
                marks = [f"{r:.3f}x {'PASS' if r <= TARGET else 'MISS'}" for r in ratios]
                print(f"| {place} | {label} | {' | '.join(cells)} | {size['plaintext']:,} | {' | '.join(marks)} |")
    finally:
        for folder in places.values():
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{sum(verdicts)}/{len(verdicts)} within the target (encrypted <= {TARGET:.2f}x plaintext per chunk)")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
