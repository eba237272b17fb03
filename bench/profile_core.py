"""The core rows of ``bench/bench_core.py`` in a plain loop, alone, for profiling the buffering core.

Run from the repository root::

    python bench/profile_core.py --case 1                 # writes/s (and MB/s) of a plain loop, 5 s
    python bench/profile_core.py --case 4 --spy out.raw   # also py-spy (--native, raw) of the loop alone
    python bench/profile_core.py --summary out.raw        # the profile's top frames, by self and inclusive time

The loop is ``for _ in range(n): b.write(data)`` (no bound method, no ``itertools.repeat``) with a no-op
serial callback, the way a user writes it. Cases (as bench_core's): 1. 64 B frames -> 4096 B chunks;
3. 1 MiB frames -> 64 KiB chunks, clip; 4. float32 (1024, 2) frames -> 24000-row chunks, clip. With
``--spy``, py-spy samples this process only while the loop runs (after the imports and a warm-up), so the
profile is the loop's. ``--root DIR`` runs another checkout's ``ocycle_dist`` (an older one, for a before/after).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def noop(value: Any, t0: float) -> None:
    """The no-op callback."""


def make(case: str) -> tuple[Any, Any, float]:
    """The emitter, the frame, and MB per write."""
    import numpy as np

    import ocycle_dist

    if case == "1":
        data: Any = os.urandom(64)
        return ocycle_dist.BufferEmit(noop, 4096), data, 64 / 1e6
    if case == "3":
        data = os.urandom(1 << 20)
        return ocycle_dist.BufferEmit(noop, 65536, clip=True), data, (1 << 20) / 1e6
    if case == "4":
        data = np.random.default_rng(0).standard_normal((1024, 2)).astype(np.float32)
        return ocycle_dist.NumpyEmit(noop, 24000, clip=True), data, data.nbytes / 1e6
    raise SystemExit(f"--case must be 1, 3 or 4, not {case!r}")


def summary(path: str, top: int = 25) -> str:
    """The top frames of a py-spy raw (collapsed stacks) profile: self and inclusive shares of the samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        names = [re.sub(r" \((?:[^()]*/)?([^/()]*)\)$", r" (\1)", f) for f in frames]
        if names:
            own[names[-1]] += n
        for name in set(names):
            inclusive[name] += n
    lines = [f"{total} samples", "", "self:"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="1", help="1, 3 or 4 (bench_core's numbering)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the loop runs (default 5)")
    parser.add_argument("--spy", help="write a py-spy --native raw profile of the loop to this file")
    parser.add_argument("--summary", help="print the summary of a raw profile and exit")
    parser.add_argument("--root", help="the checkout whose ocycle_dist runs (default: this one)")
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    sys.path.insert(0, args.root or str(Path(__file__).resolve().parent.parent))
    emitter, data, mb = make(args.case)
    w = emitter
    for _ in range(20000 if args.case == "1" else 200):  # warm up
        w.write(data)
    spy = None
    if args.spy:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")  # pip install py-spy
        spy = subprocess.Popen([exe, "record", "--native", "-r", "250", "-f", "raw", "-o", args.spy,
                                "-d", str(int(args.seconds)), "-p", str(os.getpid())],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(1.0)  # py-spy attached
    n, batch = 0, 100_000 if args.case == "1" else 200
    start = time.perf_counter()
    end = start + args.seconds
    while time.perf_counter() < end:
        for _ in range(batch):
            emitter.write(data)
        n += batch
    elapsed = time.perf_counter() - start
    if spy is not None:
        spy.wait(60)
    import ocycle_dist

    print(f"case {args.case} ({Path(ocycle_dist.__file__).parent}): {n / elapsed:,.0f} writes/s = "
          f"{n * mb / elapsed:,.0f} MB/s over {elapsed:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
