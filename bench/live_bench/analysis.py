"""What ``bench/bench_live.py`` reads out of one run: phases, latencies, memory, outcomes.

Phases, by wall-clock time in the producer: ``up`` (workers up, the model lagging), ``absent`` (from the stop
signal until the workers are back: the first result after their start), ``catch-up`` (until the first SPL chunk
whose result comes within 0.5 s again) and ``live`` (from that chunk to the last write; never, when SPL stays
slower). A write, and a chunk, belongs to the phase it was emitted in.
"""

from __future__ import annotations

from typing import Any

from bench._report import pct

from .rig import Plan

PHASES = ("up", "absent", "catch-up", "live")
NAMES = ("spl", "classify", "archive")
LIVE = 0.5  # seconds: SPL is live when its results come within this (the goal of SPL latency)


def analyse(res: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The numbers of one run: ``m`` (flat metrics, for medians over rounds) and what the tables need."""
    marks, pm = res["marks"], res["parent_marks"]
    start, absent, written = marks["start"], marks["absent"], marks["written"]
    emitted = {k: res["emitted"][k] for k in NAMES}
    outcomes = {k: {seq: (t, kind) for seq, t, kind in res["outcomes"][k]} for k in NAMES}
    # the workers are back when the first outcome after their start comes (they answer a ping a little later)
    back = min([t for k in NAMES for t, _ in outcomes[k].values() if t > pm["starting"]] + [marks["back"]])
    # the backlog of the outage: every chunk emitted before the workers' return has its outcome
    cleared = {}
    for k in NAMES:
        before = [outcomes[k][i][0] for i, t in enumerate(emitted[k]) if t < back and i in outcomes[k]]
        cleared[k] = max(0.0, max(before, default=back) - back)
    # SPL is live again from the first chunk emitted after the return whose result comes within LIVE seconds
    spl_lat = [(t, outcomes["spl"][i][0] - t) for i, t in enumerate(emitted["spl"]) if i in outcomes["spl"]]
    live = next((t for t, x in spl_lat if t >= back and x <= LIVE), written + 1)
    bounds = {"up": (start, absent), "absent": (absent, back), "catch-up": (back, live), "live": (live, written + 1)}
    m: dict[str, float] = {"live_after": live - back if live <= written else float("nan")}
    # how fast the SPL worker went through the backlog: seconds of audio (from the stop to ``live``) per second
    m["drain_x"] = (live - absent) * plan.speed / (live - back) if back < live <= written else float("nan")

    def phase_of(t: float) -> str | None:
        return next((p for p, (a, b) in bounds.items() if a <= t < b), None)

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
    for series_ in (writes, handover, calls, spl):  # "back": catch-up and live together
        series_["back"] = series_["catch-up"] + series_["live"]
    for p in (*PHASES, "back"):
        for key, xs in (("write", writes[p]), ("handover", handover[p]), ("call", calls[p]), ("spl", spl[p])):
            if xs:
                m[f"{key}_p50_{p}"], m[f"{key}_p99_{p}"], m[f"{key}_max_{p}"] = pct(xs, 50), pct(xs, 99), max(xs)
                m[f"{key}_n_{p}"] = len(xs)
    for p in PHASES:
        a, b = bounds[p]
        m[f"wall_{p}"] = max(0.0, min(b, written) - a)
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
    budget = res.get("budget") or float("inf")  # until a budget is nearly full: it stops growing then
    full = next((x[0] for x in series if x[0] >= pm["stopped"] and max(x[2]) >= 0.9 * budget), written)
    inside = [x for x in series if pm["stopped"] <= x[0] < min(pm["starting"], written, full)]
    if len(inside) > 2 and inside[-1][0] > inside[0][0]:
        audio = (inside[-1][0] - inside[0][0]) * plan.speed
        for i, k in enumerate(NAMES):
            m[f"fill_{k}"] = (inside[-1][2][i] - inside[0][2][i]) / audio
    m["redis_peak"] = max((x[1] for x in res["redis"]), default=0)
    m["audio_absent"] = m["outage"] * plan.speed
    m["stop_took"], m["start_took"] = pm["stopped"] - pm["stopping"], back - pm["starting"]
    m["forced"] = len(res["forced"])
    m["unclaimed"] = res.get("unclaimed", 0)
    # the producer's cyclic GC runs while it writes: a full one walks every object kept for a chunk in flight
    gcs = [(t, gen, took) for t, gen, took in res.get("gc", []) if start <= t <= written]
    m["gc_full"] = sum(1 for _, gen, _ in gcs if gen == 2)
    m["gc_max"] = max((took for _, gen, took in gcs if gen == 2), default=0.0)
    slow = [(at, took) for at, took in zip(*res["writes"], strict=True) if took > 0.005]
    m["slow_writes"] = len(slow)
    m["slow_writes_gc"] = sum(1 for at, took in slow if any(at <= t <= at + took + 0.001 for t, _, _ in gcs))
    return {"m": m, "bounds": bounds, "budget": res.get("budget", 0), "policy": res.get("policy", ""),
            "counts": res.get("counts", {}), "errors": res["errors"], "pending": res["pending"]}  # fmt: skip
