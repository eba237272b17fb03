"""What ``bench/bench_live.py`` reads out of one run: phases, latencies, memory, outcomes; its tables and goals.

Phases, by wall-clock time in the producer: ``up`` (workers up, the model lagging), ``absent`` (from the stop
signal until the workers are ready again), ``catch-up`` (until the last SPL chunk emitted before their return
has its result: the backlog of the outage is cleared) and ``live`` (after that, to the last write). A chunk
belongs to the phase it was emitted in.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench._report import Verdicts, mb, pct, ratio_cell, table, us

from .rig import Plan

PHASES = ("up", "absent", "catch-up", "live")
NAMES = ("spl", "classify", "archive")
MIB = 1024 * 1024
SLACK, SLACK_SHARE = 16 * MIB, 0.2  # over the budget: 16 MiB + 20 % of it (goal 2 in bench_live.py's docstring)


def s(x: float) -> str:
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def analyse(res: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The numbers of one run: ``m`` (flat metrics, for medians over rounds) and what the tables need."""
    marks = res["marks"]
    start, absent, back, written = marks["start"], marks["absent"], marks["back"], marks["written"]
    emitted = {k: res["emitted"][k] for k in NAMES}
    outcomes = {k: {seq: (t, kind) for seq, t, kind in res["outcomes"][k]} for k in NAMES}
    # the backlog of the outage: every chunk emitted before the workers' return has its outcome
    cleared = {}
    for k in NAMES:
        before = [outcomes[k][i][0] for i, t in enumerate(emitted[k]) if t < back and i in outcomes[k]]
        cleared[k] = max(0.0, max(before, default=back) - back)
    live = back + cleared["spl"]
    bounds = {"up": (start, absent), "absent": (absent, back), "catch-up": (back, live), "live": (live, written + 1)}

    def phase_of(t: float) -> str | None:
        return next((p for p, (a, b) in bounds.items() if a <= t < b), None)

    m: dict[str, float] = {}
    writes: dict[str, list[float]] = {p: [] for p in PHASES}
    handover: dict[str, list[float]] = {p: [] for p in PHASES}  # writes that handed over at least one chunk
    emit_times = {t for k in NAMES for t in emitted[k]}
    for at, took in zip(*res["writes"], strict=True):
        p = phase_of(at)
        if p is not None:
            writes[p].append(took)
            if at in emit_times:
                handover[p].append(took)
    by_kind: dict[str, list[float]] = {}  # writes by the chunks they handed over ("-", "spl", "spl+classify", ...)
    emitted_at = {k: set(emitted[k]) for k in NAMES}
    for at, took in zip(*res["writes"], strict=True):
        by_kind.setdefault("+".join(k for k in NAMES if at in emitted_at[k]) or "-", []).append(took)
    for kind, xs in by_kind.items():
        m[f"kind_n_{kind}"], m[f"kind_p50_{kind}"], m[f"kind_p99_{kind}"] = len(xs), pct(xs, 50), pct(xs, 99)
        m[f"kind_max_{kind}"] = max(xs)
    calls: dict[str, list[float]] = {p: [] for p in PHASES}
    for at, took in zip(*res["calls"], strict=True):
        p = phase_of(at)
        if p is not None:
            calls[p].append(took)
    spl: dict[str, list[float]] = {p: [] for p in PHASES}
    for i, t in enumerate(emitted["spl"]):
        out = outcomes["spl"].get(i)
        p = phase_of(t)
        if out is not None and out[1] == "done" and p is not None:
            spl[p].append(out[0] - t)
    for p in PHASES:
        for key, xs in (("write", writes[p]), ("handover", handover[p]), ("call", calls[p]), ("spl", spl[p])):
            if xs:
                m[f"{key}_p50_{p}"], m[f"{key}_p99_{p}"], m[f"{key}_max_{p}"] = pct(xs, 50), pct(xs, 99), max(xs)
                m[f"{key}_n_{p}"] = len(xs)
        a, b = bounds[p]
        m[f"wall_{p}"] = max(0.0, min(b, written) - a)
    all_writes = [x for p in PHASES for x in writes[p]]
    m["write_p99_all"], m["write_max_all"] = pct(all_writes, 99), max(all_writes)
    all_calls = [x for p in PHASES for x in calls[p]]
    if all_calls:
        m["call_p99_all"], m["call_max_all"] = pct(all_calls, 99), max(all_calls)
    # outcomes and accounting
    stats = res.get("stats") or {}
    ok = True
    for k in NAMES:
        kinds = [kind for _, kind in outcomes[k].values()]
        n = len(emitted[k])
        dropped = int(stats[k]["dropped"]) if stats else 0
        for kind in ("done", "expired", "failed"):
            m[f"{k}_{kind}"] = kinds.count(kind)
        m[f"{k}_emitted"], m[f"{k}_dropped"] = n, dropped
        m[f"{k}_lost"] = n - len(kinds) - dropped
        if stats:
            st = stats[k]
            ok &= st["emitted"] == n and st["in_flight"] == 0
            ok &= st["emitted"] == st["done"] + st["failed"] + st["dropped"] + st["expired"]
            ok &= (st["done"], st["failed"], st["expired"]) == (kinds.count("done"), kinds.count("failed"),
                                                                  kinds.count("expired"))  # fmt: skip
        ok &= m[f"{k}_lost"] == 0 and m[f"{k}_failed"] == 0
        m[f"cleared_{k}"] = cleared[k]
    ok &= res["pending"] == 0 and res["n_errors"] == 0
    m["accounted"] = float(ok)
    m["cleared"] = max(cleared.values())
    m["outage"] = back - absent
    last = max((t for k in NAMES for t, _ in outcomes[k].values()), default=written)
    m["drain"] = max(0.0, last - written)
    # memory
    baseline = res["ready"]["rss"]
    m["baseline"], m["hwm"] = baseline, res["hwm_end"]
    m["rss_over"] = res["hwm_end"] - baseline
    series = res["series"]
    m["spooled_peak"] = max((sum(x[2]) for x in series), default=0)
    for i, k in enumerate(NAMES):
        m[f"spooled_peak_{k}"] = max((x[2][i] for x in series), default=0)
    for p in PHASES:
        a, b = bounds[p]
        inside = [x for x in series if a <= x[0] < b]
        if inside:
            m[f"rss_peak_{p}"] = max(x[1] for x in inside) - baseline
            m[f"spooled_peak_{p}"] = max(sum(x[2]) for x in inside)
    # how fast the spool fills while the workers are away: bytes per second of audio
    pm = res["parent_marks"]
    inside = [x for x in series if pm["stopped"] <= x[0] < min(pm["starting"], written)]
    if len(inside) > 2 and inside[-1][0] > inside[0][0]:
        audio = (inside[-1][0] - inside[0][0]) * plan.speed
        for i, k in enumerate(NAMES):
            m[f"fill_{k}"] = (inside[-1][2][i] - inside[0][2][i]) / audio
    m["redis_peak"] = max((x[1] for x in res["redis"]), default=0)
    m["audio_absent"] = m["outage"] * plan.speed
    m["stop_took"], m["start_took"] = pm["stopped"] - pm["stopping"], pm["ready"] - pm["starting"]
    m["forced"] = len(res["forced"])
    return {"m": m, "bounds": bounds, "budget": res.get("budget", 0), "policy": res.get("policy", ""),
            "counts": res.get("counts", {}), "errors": res["errors"], "pending": res["pending"]}  # fmt: skip


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

        wall = med(runs, f"wall_{p}")
        rows.append([p, f"{wall:.1f} s ({wall * plan.speed / 60:.1f} min)", f"{med(runs, f'write_n_{p}'):,.0f}",
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
        "flight when the workers were stopped (they wait out the outage); 'catch-up' ends when the last SPL chunk "
        "emitted before the workers' return has its result"
    )
    parts = []
    for k in NAMES:
        parts.append(f"{k} " + ", ".join(f"{int(last['m'][f'{k}_{kind}'])} {kind}" for kind in
                                         ("emitted", "done", "expired", "dropped", "failed", "lost")))  # fmt: skip
    print(f"- {who}, chunks (last round): {'; '.join(parts)}")
    cleared = ", ".join(f"{k} {s(med(runs, f'cleared_{k}'))}" for k in NAMES)
    print(f"- {who}: workers away {s(med(runs, 'outage'))} ({med(runs, 'audio_absent') / 60:.1f} min of audio; "
          f"stopping them took {s(med(runs, 'stop_took'))}"
          + (f" ({sum(int(r['m']['forced']) for r in runs)} not down 10 s after SIGTERM, stopped by Worker.stop())"
             if any(r["m"]["forced"] for r in runs) else "")
          + f", starting them again {s(med(runs, 'start_took'))}); "
          f"after their return, every chunk of before it had its outcome after: {cleared}; the last result "
          f"{s(med(runs, 'drain'))} after the last write")  # fmt: skip
    if last["counts"]:
        print(f"- {who}, executor counts (last round): {last['counts']}")
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

    for p, what in (("up", "workers up"), ("absent", "workers absent"), ("live", "workers back, live again")):
        row(f"write p99, {what} (Tap.write vs chunking + apply_async)", f"write_p99_{p}", us)
        row(f"write max, {what}", f"write_max_{p}", us)
        row(
            f"per-chunk hand-over p99, {what} (writes that emit vs apply_async calls)",
            f"handover_p99_{p}",
            us,
            f"call_p99_{p}",
        )
        row(f"per-chunk hand-over max, {what}", f"handover_max_{p}", us, f"call_max_{p}")
    for p, what in (("up", "workers up"), ("live", "after the catch-up")):
        row(f"SPL emit-to-result p50, model lagging, {what} (own queue vs one shared queue)", f"spl_p50_{p}", s)
        row(f"SPL emit-to-result p99, model lagging, {what}", f"spl_p99_{p}", s)
    row("workers' return to every earlier chunk's outcome", "cleared", s)
    row("workers' return to the SPL backlog cleared", "cleared_spl", s)
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
        verdicts.at_most("1", f"Tap.write() p99 < 1 ms, {p}", "1,000 µs", us(v), v / 1e-3, 1.0)
    for p in phases:
        v = med(ours, f"write_max_{p}")
        verdicts.at_most("1", f"Tap.write() max < 20 ms, {p}", "20,000 µs", us(v), v / 20e-3, 1.0)
    budget = ours[-1]["budget"] or 64 * MIB
    base, hwm = med(ours, "baseline"), med(ours, "hwm")
    limit = base + (1 + SLACK_SHARE) * budget + SLACK
    verdicts.at_most("2", f"producer peak RSS (VmHWM) <= baseline + spool budget {budget / MIB:g} MiB + slack "
                     f"({SLACK / MIB:g} MiB + {SLACK_SHARE:.0%} of the budget)", mb(limit), mb(hwm), hwm / limit,
                     1.0)  # fmt: skip
    limit3 = base + (1 + SLACK_SHARE) * 3 * budget + SLACK
    verdicts.at_most("2", f"(info) the same with the budget as implemented, one per emitter: 3 x {budget / MIB:g} "
                     "MiB", mb(limit3), mb(hwm), hwm / limit3, 1.0)  # fmt: skip
    for p, what in (("up", "workers up"), ("live", "workers back, after the catch-up")):
        v = med(ours, f"spl_p99_{p}")
        if v != v:
            continue
        verdicts.at_most("3", f"SPL emit-to-result p99 < 0.5 s while the model lags, {what}", "0.50 s", s(v),
                         v / 0.5, 1.0)  # fmt: skip
    n = sum(int(r["m"][f"{k}_emitted"]) for r in ours for k in NAMES)
    bad = sum(int(r["m"][f"{k}_lost"] + r["m"][f"{k}_failed"]) for r in ours for k in NAMES)
    ok = all(r["m"]["accounted"] for r in ours)
    verdicts.add("4", "every chunk accounted for: emitted == done + failed + dropped + expired, none lost",
                 f"{n} chunks", f"{n - bad} accounted", f"{(n - bad) / max(1, n):.2f}x", ok,
                 f"{bad} lost or failed")  # fmt: skip
    c, o = med(ours, "cleared"), med(ours, "outage")
    verdicts.at_most("5", "every chunk emitted before the workers' return has its outcome within the outage's "
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
    print(f"- the budget ({budget / MIB:g} MiB, policy {ours[-1]['policy']!r}) is per emitter: each consumer's fills "
          f"after {', '.join(f'{k} {v:.1f} min' for k, v in holds.items())} of outage, and the three together keep "
          f"up to {3 * budget / MIB:g} MiB; one budget shared by the three would fill after "
          f"{budget / total / 60:.1f} min")  # fmt: skip


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
