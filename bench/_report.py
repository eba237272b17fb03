"""Statistics, tables and the PASS/MISS verdicts of ``bench/bench_celery.py``."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


def pct(data: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation between closest ranks, like numpy's default)."""
    if not data:
        return float("nan")
    xs = sorted(data)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def ms(x: float) -> str:
    return f"{x * 1e3:.2f} ms"


def us(x: float) -> str:
    return f"{x * 1e6:,.0f} µs" if x >= 1e-4 else f"{x * 1e6:.1f} µs"


def mb(x: float) -> str:
    return f"{x / 1e6:,.1f} MB"


def ratio_cell(ratios: list[float]) -> str:
    med = statistics.median(ratios)
    return f"{med:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else f"{med:.2f}x"


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


@dataclass
class Verdict:
    goal: str  # what is measured: "publish", "write", "drain", ...
    what: str  # the measured quantity and the target, e.g. "2 KiB chunks/s vs raw LPUSH >= 1x"
    reference: str
    measured: str
    ratio: str
    ok: bool
    margin: str  # by how much it passes or misses


@dataclass
class Verdicts:
    items: list[Verdict] = field(default_factory=list)

    def add(self, goal: str, what: str, reference: str, measured: str, ratio: str, ok: bool, margin: str) -> None:
        self.items.append(Verdict(goal, what, reference, measured, ratio, ok, margin))

    def at_least(self, goal: str, what: str, reference: str, measured: str, value: float, target: float) -> None:
        """A ratio that must be >= target; the margin is value / target."""
        self.add(
            goal, what, reference, measured, f"{value:.2f}x", value >= target, f"{value / target:.2f}x of the goal"
        )

    def at_most(self, goal: str, what: str, reference: str, measured: str, value: float, target: float) -> None:
        """A ratio (or value) that must be <= target; the margin is target / value (> 1: room left)."""
        margin = f"{value / target:.2f}x of the limit"
        self.add(goal, what, reference, measured, f"{value:.2f}x", value <= target, margin)

    def print(self) -> None:
        rows = [[v.goal, v.what, v.reference, v.measured, v.ratio, "PASS" if v.ok else "MISS", v.margin]
                for v in self.items]  # fmt: skip
        table("Summary: the goals", ["goal", "what, target", "reference", "ocycle_dist", "ratio", "verdict",
                                     "margin"], rows)  # fmt: skip
        print()
        for goal in dict.fromkeys(v.goal for v in self.items):  # in the order measured
            mine = [v for v in self.items if v.goal == goal]
            misses = [v for v in mine if not v.ok]
            detail = "; ".join(f"{v.what}: {v.margin}" for v in misses)
            print(f"goal {goal}: {'PASS' if not misses else 'MISS'} ({len(mine) - len(misses)}/{len(mine)} met"
                  + (f"; missed: {detail})" if misses else ")"))  # fmt: skip
