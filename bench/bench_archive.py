"""The archive task's time with encryption against without, per 10 s chunk, side by side in one run.

Run from the repository root (needs ``pip install -e '.[audio,celery]'``)::

    python bench/bench_archive.py                 # 30 rounds; about half a minute
    python bench/bench_archive.py --rounds 100 --seconds 10

``workers.tasks.archive_flac`` is called as a worker's pool process runs it (the task function, its settings read
per chunk), on 10 s chunks of 16 kHz float32: a tone, noise, and the demo's mix. Two settings take turns, in
alternating order, on the same chunks: ``encrypted`` (``OCYCLE_ARCHIVE_RECIPIENTS``: two age X25519 recipients,
FLAC streamed into age as it is encoded) and ``plaintext`` (``OCYCLE_ARCHIVE_PLAINTEXT=1``: FLAC written as it is,
the task before encryption). Each call writes a new file (a new t0), fsyncs it and its directory, and the file is
removed after. Two directories: the temporary directory's disk, and ``/dev/shm`` (memory: no disk wait, the CPU
cost alone). Printed: median and p90 per chunk, and the ratio encrypted / plaintext (target <= 1.10).
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
    from ocycle_dist.demo import synthetic

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
    parser.add_argument("--rounds", type=int, default=30, help="calls per setting, chunk and directory (default 30)")
    parser.add_argument("--seconds", type=float, default=10.0, help="chunk length (default 10 s)")
    args = parser.parse_args()

    from pyrage import x25519

    import workers.tasks as tasks

    base = replace(tasks.settings, archive_recipients="", archive_plaintext="")
    rate = base.sample_rate
    recipients = ",".join(str(x25519.Identity.generate().to_public()) for _ in range(2))
    places = {"disk (tempdir)": Path(tempfile.mkdtemp(prefix="bench-archive-"))}
    if os.path.isdir("/dev/shm"):
        places["memory (/dev/shm)"] = Path(tempfile.mkdtemp(prefix="bench-archive-", dir="/dev/shm"))
    print(f"# archive_flac: encrypted vs plaintext, {args.seconds:g} s chunks at {rate} Hz, {args.rounds} rounds")
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| directory | chunk | plaintext median | p90 | encrypted median | p90 | FLAC bytes | .age bytes |"
          " ratio (median) | target <= 1.10 |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    verdicts = []
    t0 = 1_700_000_000.0
    try:
        for place, folder in places.items():
            settings = {
                "plaintext": replace(base, archive_dir=str(folder), archive_plaintext="1"),
                "encrypted": replace(base, archive_dir=str(folder), archive_recipients=recipients),
            }
            for label, chunk in chunks(args.seconds, rate).items():
                took: dict[str, list[float]] = {k: [] for k in settings}
                size: dict[str, int] = {}
                for r in range(args.rounds + 2):  # the first two rounds warm up
                    order = list(settings) if r % 2 else list(settings)[::-1]
                    for kind in order:
                        tasks.settings = settings[kind]
                        t0 += args.seconds
                        start = time.perf_counter()
                        result = tasks.archive_flac(chunk, t0)
                        elapsed = time.perf_counter() - start
                        assert not result["existed"] and result["encrypted"] == (kind == "encrypted")
                        size[kind] = result["bytes"]
                        os.unlink(result["path"])
                        if r >= 2:
                            took[kind].append(elapsed)
                plain, enc = statistics.median(took["plaintext"]), statistics.median(took["encrypted"])
                ratio = enc / plain
                verdicts.append(ratio <= TARGET)
                verdict = "PASS" if ratio <= TARGET else "MISS"
                print(f"| {place} | {label} | {plain * 1e3:.2f} ms | {pct(took['plaintext'], 0.9) * 1e3:.2f} ms"
                      f" | {enc * 1e3:.2f} ms | {pct(took['encrypted'], 0.9) * 1e3:.2f} ms | {size['plaintext']:,}"
                      f" | {size['encrypted']:,} | {ratio:.3f}x | {verdict} |")  # fmt: skip
    finally:
        for folder in places.values():
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{sum(verdicts)}/{len(verdicts)} within the target (encrypted <= {TARGET:.2f}x plaintext per chunk)")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
