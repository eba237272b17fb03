"""Side-by-side throughput of ocycle_dist against ocycle 0.1.0 (serial mode, no-op callback).

Run from the repository root::

    python bench/bench_core.py                 # 7 interleaved rounds of ~0.25 s runs
    python bench/bench_core.py --rounds 11 --seconds 0.3
    python bench/bench_core.py --quick         # smoke run: 2 rounds, tiny durations

Each round times every contender once, alternating who goes first, each run on a fresh emitter with
``w = emitter.write`` bound outside the same loop (case 1p: ``emitter.write(frame)`` in a ``range`` loop, as a
user writes it). Rates and per-round ratios are reported as medians
(min-max of the ratios in brackets); machines are shared and noisy, so read ratios, not absolute times.
Output of each case is checked (same chunks) before timing. Exit code is always 0: this is a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from itertools import repeat
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's ocycle_dist

import numpy as np
import ocycle

import ocycle_dist

Callback = Callable[[Any, float], None]
Make = Callable[[Callback], Any]  # callback -> a fresh emitter with .write(frame) and .close()


def noop(value: Any, t0: float) -> None:
    """The no-op callback: ``lambda value, t0: None``."""


class ConcatChunker:
    """The minimal hand-written re-chunker: list the frames, np.concatenate, slice, carry the rest."""

    def __init__(self, callback: Callback, size: int) -> None:
        self.callback, self.size, self.n = callback, size, 0
        self.parts: list[np.ndarray] = []

    def write(self, frame: np.ndarray, t0: float | None = None) -> None:
        self.parts.append(frame)
        self.n += len(frame)
        if self.n >= self.size:
            buf, t, size = np.concatenate(self.parts), time.time() if t0 is None else t0, self.size
            while len(buf) >= size:
                self.callback(buf[:size], t)
                buf = buf[size:]
            self.parts, self.n = [buf], len(buf)

    def close(self) -> None:
        pass


@dataclass
class Case:
    name: str
    unit: str  # "writes/s" or "MB/s"
    frames: list[Any]  # distinct frames for the check; frames[0] is written in the timed loop
    ref: Make
    dist: Make
    target: float | None
    ref_name: str = "ocycle 0.1.0"
    extra: Make | None = None  # ocycle's NumpyEmit next to the concatenate reference
    plain: bool = False  # time `for _ in range(n): emitter.write(frame)` (a user's loop), not a bound `w(frame)`
    rates: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def quiet(quiet_run: bool) -> contextlib.AbstractContextManager[Any]:
    return contextlib.redirect_stdout(io.StringIO()) if quiet_run else contextlib.nullcontext()


def run(make: Make, frame: Any, n: int, hush: bool = False, plain: bool = False) -> float:
    """Seconds for ``n`` writes of ``frame`` into a fresh emitter (``plain``: the attribute looked up each time,
    in a ``range`` loop, as a user writes it)."""
    with quiet(hush):
        emitter = make(noop)
        w = emitter.write
        gc.collect()
        t = time.perf_counter()
        if plain:
            for _ in range(n):
                emitter.write(frame)
        else:
            for _ in repeat(None, n):
                w(frame)
        elapsed = time.perf_counter() - t
        emitter.close()
    return elapsed


def calibrate(make: Make, frame: Any, seconds: float, hush: bool = False, plain: bool = False) -> int:
    """Writes per run so that one run lasts about ``seconds``."""
    n = 1
    while (elapsed := run(make, frame, n, hush, plain)) < seconds / 5:
        n *= 4
    return max(1, round(n * seconds / elapsed))


def collect(make: Make, frames: list[Any], hush: bool = False) -> list[Any]:
    out: list[Any] = []
    with quiet(hush):
        emitter = make(lambda value, t0: out.append(value))
        for f in frames:
            emitter.write(f)
        emitter.close()
    return out


def same(a: list[Any], b: list[Any]) -> bool:
    if a and isinstance(a[0], np.ndarray):
        return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    return [bytes(x) for x in a] == [bytes(y) for y in b]


def bench(case: Case, rounds: int, seconds: float) -> None:
    contenders: dict[str, tuple[Make, bool]] = {"ref": (case.ref, False), "dist": (case.dist, False)}
    want = collect(case.ref, case.frames)
    got = collect(case.dist, case.frames)
    if not want or not same(want, got):
        case.notes.append(f"CHECK FAILED: {case.ref_name} gave {len(want)} chunks, ocycle_dist {len(got)}")
    if case.extra is not None:
        try:
            t = time.perf_counter()
            extra = collect(case.extra, case.frames, hush=True)
            if not same(want, extra):
                case.notes.append(f"ocycle 0.1.0 NumpyEmit: n/a (wrong output, {len(extra)} chunks)")
            elif time.perf_counter() - t > 5:
                case.notes.append("ocycle 0.1.0 NumpyEmit: n/a (absurdly slow)")
            else:
                contenders["extra"] = (case.extra, True)
        except Exception as exc:
            case.notes.append(f"ocycle 0.1.0 NumpyEmit: n/a (raises {type(exc).__name__}: {exc})")
    frame = case.frames[0]
    per_write = 1.0 if case.unit == "writes/s" else memoryview(frame).nbytes / 1e6
    counts = {k: calibrate(make, frame, seconds, hush, case.plain) for k, (make, hush) in contenders.items()}
    keys = list(contenders)
    case.rates = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotate who goes first
            make, hush = contenders[k]
            case.rates[k].append(counts[k] * per_write / run(make, frame, counts[k], hush, case.plain))


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def make_cases() -> list[Case]:
    rng = np.random.default_rng(0)

    def frames(size: int, frame: int) -> list[bytes]:
        return [os.urandom(frame) for _ in range(3 * math.ceil(size / frame) + 1)]

    audio = [rng.standard_normal((1024, 2)).astype(np.float32) for _ in range(3 * math.ceil(24000 / 1024) + 1)]
    return [
        Case("1. 64 B frames -> 4096 B chunks", "writes/s", frames(4096, 64),
             lambda cb: ocycle.BufferEmit(cb, 4096), lambda cb: ocycle_dist.BufferEmit(cb, 4096), 8),
        Case("1p. the same, a plain `for` loop calling `b.write(data)`", "writes/s", frames(4096, 64),
             lambda cb: ocycle.BufferEmit(cb, 4096), lambda cb: ocycle_dist.BufferEmit(cb, 4096), 8, plain=True),
        Case("2. 2048 B frames -> 48000 B chunks", "MB/s", frames(48000, 2048),
             lambda cb: ocycle.BufferEmit(cb, 48000), lambda cb: ocycle_dist.BufferEmit(cb, 48000), 3),
        Case("3. 1 MiB frames -> 64 KiB chunks, clip", "MB/s", frames(65536, 1 << 20),
             lambda cb: ocycle.BufferEmit(cb, 65536, clip=True),
             lambda cb: ocycle_dist.BufferEmit(cb, 65536, clip=True), 50),
        Case("4. f32 (1024, 2) frames -> 24000 rows, clip", "MB/s", audio,
             lambda cb: ConcatChunker(cb, 24000), lambda cb: ocycle_dist.NumpyEmit(cb, 24000, clip=True),
             1, "np.concatenate", lambda cb: ocycle.NumpyEmit(cb, 24000, clip=True)),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case (default 7)")
    parser.add_argument("--seconds", type=float, default=0.25, help="length of one timed run (default 0.25)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 0.02 s runs")
    args = parser.parse_args()
    rounds, seconds = (2, 0.02) if args.quick else (max(1, args.rounds), args.seconds)
    start = time.perf_counter()
    print(f"python {platform.python_version()} | numpy {np.__version__} | ocycle {version('ocycle')} | "
          f"ocycle_dist {ocycle_dist.__version__} | {os.cpu_count()} cpus")  # fmt: skip
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]), f"(rounds={rounds}, seconds={seconds})\n")
    cases = make_cases()
    print("| case | unit | ocycle 0.1.0 | ocycle_dist | ratio | target |")
    print("|---|---|---:|---:|---:|---:|")
    verdicts, notes = [], []
    for case in cases:
        bench(case, rounds, seconds)
        med = {k: statistics.median(v) for k, v in case.rates.items()}
        ratios = [d / r for d, r in zip(case.rates["dist"], case.rates["ref"], strict=True)]
        ratio = statistics.median(ratios)
        vs = "" if case.ref_name == "ocycle 0.1.0" else f" vs {case.ref_name}"
        old = med.get("extra") if case.extra else med["ref"]
        target = f">= {case.target:g}x" if case.target else "none (info)"
        print(f"| {case.name} | {case.unit} | {'n/a' if old is None else fmt(old)} | {fmt(med['dist'])} | "
              f"{ratio:.2f}x{vs} ({min(ratios):.2f}-{max(ratios):.2f}) | {target} |")  # fmt: skip
        tag = case.name.split(" ", 1)[0]
        if case.target:
            ok = "PASS" if ratio >= case.target else "MISS"
            bad = any(n.startswith("CHECK FAILED") for n in case.notes)
            verdicts.append(f"{tag} {'FAIL (output differs)' if bad else ok} ({ratio:.2f}x vs >= {case.target:g}x)")
        if case.ref_name != "ocycle 0.1.0":
            notes.append(f"{tag} ratio is ocycle_dist / {case.ref_name} re-chunker ({fmt(med['ref'])} {case.unit})")
        notes += [f"{tag} {n}" for n in case.notes]
    print("\nmedians of rates over rounds; ratio = median of per-round ratios (min-max in brackets)")
    for note in notes:
        print(note)
    print("targets: " + "; ".join(verdicts))
    print(f"total runtime {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
