"""The tables and goals of ``bench/bench_live.py``, from the runs :func:`.analysis.analyse` has read."""

from __future__ import annotations

import statistics
from typing import Any

from bench._report import Verdicts, mb, ratio_cell, table, us

from .analysis import LIVE, NAMES, PHASES
from .rig import Plan

MIB = 1024 * 1024
SLACK, SLACK_SHARE = 16 * MIB, 0.2  # over the budget: 16 MiB + 20 % of it (bench_live.py's memory goal)


def s(x: float) -> str:
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def med(runs: list[dict[str, Any]], key: str) -> float:
    xs = [r["m"][key] for r in runs if key in r["m"]]
    return statistics.median(xs) if xs else float("nan")


def phase_table(who: str, runs: list[dict[str, Any]], plan: Plan) -> None:
    """Per phase: its length, write() latency, the per-chunk hand-over, SPL latency, memory (medians over rounds)."""
    rows = []
    for p in PHASES:

        def cell(key: str, fmt: Any = us) -> str:
            v = med(runs, key)
            return fmt(v) if v == v else "-"

        wall, n = med(runs, f"wall_{p}"), med(runs, f"write_n_{p}")
        rows.append([p, f"{wall:.1f} s ({wall * plan.speed / 60:.1f} min)", f"{n:,.0f}" if n == n else "0",
                     cell(f"write_p50_{p}"), cell(f"write_p99_{p}"), cell(f"write_max_{p}"),
                     cell(f"handover_p99_{p}"), cell(f"call_p99_{p}"), cell(f"call_max_{p}"),
                     cell(f"spl_p50_{p}", s), cell(f"spl_p99_{p}", s), cell(f"spl_max_{p}", s),
                     cell(f"rss_peak_{p}", mb), cell(f"spooled_peak_{p}", mb)])  # fmt: skip
    write = "Tap.write()" if who == "ocycle_dist" else "write (numpy chunking + apply_async)"
    table(f"{who}: by phase (wall time; audio minutes at {plan.speed:g}x)",
          ["phase", "length", "writes", f"{write} p50", "p99", "max", "writes that hand over a chunk p99",
           "apply_async call p99", "apply_async max", "SPL emit-to-result p50", "p99", "max",
           "peak RSS over baseline", "peak spooled_bytes"], rows)  # fmt: skip


def outcome_lines(who: str, runs: list[dict[str, Any]]) -> None:
    last = runs[-1]
    print(
        f"- {who}: a chunk counts in the phase it was emitted in: the max SPL latency of 'up' is of the chunks in "
        "flight when the workers were stopped (they wait out the outage); 'absent' ends with the first result after "
        "their start; 'catch-up' ends with the first SPL chunk whose result comes within 0.5 s again"
    )
    parts = []
    for k in NAMES:
        parts.append(f"{k} " + ", ".join(f"{int(last['m'][f'{k}_{kind}'])} {kind}" for kind in
                                         ("emitted", "done", "expired", "dropped", "failed", "lost")))  # fmt: skip
    print(f"- {who}, chunks (last round): {'; '.join(parts)}")
    cleared = ", ".join(f"{k} {s(med(runs, f'cleared_{k}'))}" for k in NAMES)
    v = med(runs, "live_after")
    live_after = s(v) if v == v else "never"
    print(f"- {who}: workers away {s(med(runs, 'outage'))} ({med(runs, 'audio_absent') / 60:.1f} min of audio; "
          f"stopping them took {s(med(runs, 'stop_took'))}"
          + (f" ({sum(int(r['m']['forced']) for r in runs)} not down 10 s after SIGTERM, stopped by Worker.stop())"
             if any(r["m"]["forced"] for r in runs) else "")
          + f", starting them again {s(med(runs, 'start_took'))}); "
          f"after their return, every chunk of before it had its outcome after: {cleared}; SPL live again (a result "
          f"within {LIVE:g} s) after {live_after}; the last result "
          f"{s(med(runs, 'drain'))} after the last write")  # fmt: skip
    x = med(runs, "drain_x")
    if x == x and x > 1:
        print(f"- {who}: the SPL worker went through the backlog at {x:.0f}x real time: streaming at 1x, a 10 min "
              f"outage would be caught up about {600 / (x - 1):.0f} s after the workers' return")  # fmt: skip
    if last["m"]["gc_full"] or last["m"]["slow_writes"]:
        lm = last["m"]
        print(f"- {who}, last round: {lm['gc_full']:.0f} full cyclic GC runs in the producer while it wrote, the "
              f"longest {lm['gc_max'] * 1e3:.1f} ms; of the {lm['slow_writes']:.0f} writes over 5 ms, "
              f"{lm['slow_writes_gc']:.0f} overlapped a GC run")  # fmt: skip
    if last["counts"]:
        print(
            f"- {who}, executor counts (last round): {last['counts']}; replies for no chunk in flight (chunks "
            f"dropped from the spool whose tasks ran anyway, or second replies): {last['m']['unclaimed']:.0f}"
        )
    if last["errors"]:
        print(f"- {who}, errors: {last['errors']}")


KINDS = {
    "-": "nothing (the frame is only buffered)",
    "spl": "an SPL chunk (0.5 s, 32 kB)",
    "spl+classify": "SPL + model chunks (+128 kB)",
    "spl+classify+archive": "SPL + model + archive chunks (+640 kB)",
}


def by_kind_table(runs: dict[str, list[dict[str, Any]]], names: dict[str, str]) -> None:
    """Write latency by what the write handed over (every phase): where the tail comes from."""
    rows = []
    for kind, label in KINDS.items():
        row = [label]
        for c in runs:
            n = med(runs[c], f"kind_n_{kind}")
            total = sum(med(runs[c], f"kind_n_{k}") for k in KINDS if med(runs[c], f"kind_n_{k}") > 0)
            row += [f"{n / total:.1%}" if n == n else "-"] + [
                us(v) if (v := med(runs[c], f"kind_{q}_{kind}")) == v else "-" for q in ("p50", "p99", "max")
            ]
        rows.append(row)
    header = ["the write handed over"]
    for c in runs:
        header += [f"{names[c]}: share of writes", "p50", "p99", "max"]
    table("Writes by what they handed over (every phase; medians over rounds)", header, rows)


def comparison(ours: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    """ocycle_dist against stock Celery, medians over rounds; ratio = ocycle_dist / stock (lower is better)."""
    rows = []

    def row(label: str, key: str, fmt: Any, ref_key: str | None = None) -> None:
        ref_key = ref_key or key
        a, b = med(ref, ref_key), med(ours, key)
        if a != a and b != b:
            return  # the phase did not happen (a short run)
        ratios = [o["m"][key] / r["m"][ref_key] for o, r in zip(ours, ref, strict=True)
                  if key in o["m"] and ref_key in r["m"] and r["m"][ref_key] > 0]  # fmt: skip
        rows.append(
            [label, fmt(a) if a == a else "-", fmt(b) if b == b else "-", ratio_cell(ratios) if ratios else "-"]
        )

    for p, what in (("up", "workers up"), ("absent", "workers absent"), ("back", "workers back")):
        row(f"write p99, {what} (Tap.write vs chunking + apply_async)", f"write_p99_{p}", us)
        row(f"write max, {what}", f"write_max_{p}", us)
        row(
            f"per-chunk hand-over p99, {what} (writes that emit vs apply_async calls)",
            f"handover_p99_{p}",
            us,
            f"call_p99_{p}",
        )
        row(f"per-chunk hand-over max, {what}", f"handover_max_{p}", us, f"call_max_{p}")
    for p, what in (("up", "workers up"), ("back", "emitted after the workers' return"),
                    ("live", "after the catch-up (stock: never within 0.5 s)")):  # fmt: skip
        row(f"SPL emit-to-result p50, model lagging, {what} (own queue vs one shared queue)", f"spl_p50_{p}", s)
        row(f"SPL emit-to-result p99, model lagging, {what}", f"spl_p99_{p}", s)
    row("workers' return to every earlier chunk's outcome", "cleared", s)
    row(f"workers' return to SPL live again (a result within {LIVE:g} s)", "live_after", s)
    row("last write to last result", "drain", s)
    row("producer peak RSS over baseline (VmHWM)", "rss_over", mb)
    row("Redis peak used_memory", "redis_peak", mb)
    row("model chunks done", "classify_done", lambda x: f"{x:.0f}")
    row("model chunks expired", "classify_expired", lambda x: f"{x:.0f}")
    table("ocycle_dist vs stock Celery, same stream, same phases (medians over rounds; ratio: ocycle_dist / stock, "
          "per round)", ["what", "stock Celery", "ocycle_dist", "ratio"], rows)  # fmt: skip


def goals(verdicts: Verdicts, ours: list[dict[str, Any]], plan: Plan) -> None:
    phases = [p for p in PHASES if med(ours, f"write_n_{p}") > 0]  # those a short run had
    for p in phases:
        v = med(ours, f"write_p99_{p}")
        verdicts.at_most("write", f"Tap.write() p99 < 1 ms, {p}", "1,000 µs", us(v), v / 1e-3, 1.0)
    for p in phases:
        v = med(ours, f"write_max_{p}")
        verdicts.at_most("write", f"Tap.write() max < 20 ms, {p}", "20,000 µs", us(v), v / 20e-3, 1.0)
    budget = ours[-1]["budget"] or 32 * MIB  # one per emitter: the three consumers may keep 3 x budget
    base, hwm = med(ours, "baseline"), med(ours, "hwm")
    limit = base + (1 + SLACK_SHARE) * 3 * budget + SLACK
    verdicts.at_most("memory", f"producer peak RSS (VmHWM) <= baseline + 3 spool budgets of {budget / MIB:g} MiB "
                     f"+ slack ({SLACK / MIB:g} MiB + {SLACK_SHARE:.0%} of the budgets)", mb(limit), mb(hwm),
                     hwm / limit, 1.0)  # fmt: skip
    for p, what in (("up", "workers up"), ("live", "workers back, after the catch-up")):
        v = med(ours, f"spl_p99_{p}")
        if v != v:
            continue
        verdicts.at_most("SPL live", f"SPL emit-to-result p99 < 0.5 s while the model lags, {what}", "0.50 s", s(v),
                         v / 0.5, 1.0)  # fmt: skip
    n = sum(int(r["m"][f"{k}_emitted"]) for r in ours for k in NAMES)
    bad = sum(int(r["m"][f"{k}_lost"] + r["m"][f"{k}_failed"]) for r in ours for k in NAMES)
    ok = all(r["m"]["accounted"] for r in ours)
    verdicts.add("accounted", "every chunk accounted for: emitted == done + failed + dropped + expired, none lost",
                 f"{n} chunks", f"{n - bad} accounted", f"{(n - bad) / max(1, n):.2f}x", ok,
                 f"{bad} lost or failed")  # fmt: skip
    c, o = med(ours, "cleared"), med(ours, "outage")
    verdicts.at_most("catch-up", "every chunk emitted before the workers' return has its outcome within the outage's "
                     "length", s(o), s(c), c / o, 1.0)  # fmt: skip


def budget_lines(ours: list[dict[str, Any]]) -> None:
    """How fast the spool fills while the workers are away, and how long each budget lasts."""
    budget = ours[-1]["budget"] or 64 * MIB
    fills = {k: med(ours, f"fill_{k}") for k in NAMES}
    if any(v != v for v in fills.values()):
        return
    total = sum(fills.values())
    each = ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in fills.items())
    holds = {k: budget / v / 60 for k, v in fills.items() if v > 0}
    print(
        f"- while the workers are away the producer keeps {total / 1e3:.0f} kB per second of audio ({each}); "
        f"peak spooled_bytes {mb(med(ours, 'spooled_peak'))} ("
        + ", ".join(f"{k} {mb(med(ours, f'spooled_peak_{k}'))}" for k in NAMES)
        + ")"
    )
    holds_s = ", ".join(f"{k} {v:.1f} min" for k, v in holds.items())
    print(
        f"- the budget ({budget / MIB:g} MiB, policy {ours[-1]['policy']!r}) is per emitter: each consumer's, from "
        f"empty, fills after {holds_s} of outage, and the three together keep up to {3 * budget / MIB:g} MiB; one "
        f"budget shared by the three would fill after {budget / total / 60:.1f} min"
    )


def failures(runs: list[dict[str, Any]]) -> list[str]:
    """What makes the numbers meaningless: results lost, chunks failed, errors, chunks still pending at the end."""
    out = []
    for i, r in enumerate(runs):
        m = r["m"]
        for k in NAMES:
            if m[f"{k}_lost"] or m[f"{k}_failed"]:
                out.append(f"round {i + 1}: {k}: {m[f'{k}_lost']:.0f} lost, {m[f'{k}_failed']:.0f} failed")
        if r["pending"]:
            out.append(f"round {i + 1}: {r['pending']} chunks pending at the end")
        if r["errors"]:
            out.append(f"round {i + 1}: errors {r['errors'][:2]}")
    return out
