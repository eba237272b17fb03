"""Section "memory": producer memory across a broker outage, against a bound of the data in flight.

A subprocess (``bench/_memchild.py``, so its RSS is its own) streams 600 s of 16 kHz float32 audio (frames of
1024) through the three demo consumers (``ocycle_dist.app.consumers.CONSUMERS``: spl 0.5 s, classify 2 s, archive_flac
10 s; max_inflight 64 each, as the demo) at 40x real time to 2 workers (queue ``q2``), with redis-server killed
for 5 s in the middle (restarted empty; ``resend_after=5``). Peak ``VmRSS`` per phase, ``VmHWM`` and peak
``spooled_bytes``, against the bound baseline + 3 x sum(max_inflight x chunk bytes) (the spool's copy, the
encoded messages of a publish batch, and slack). Goals: VmHWM within the bound; every chunk's result arrives.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from bench._report import Verdicts, mb, table

from .common import OCYCLE_DB, RATE, BenchError, Config, perf
from .rig import ROOT, Rig


def run(rig: Rig, cfg: Config, verdicts: Verdicts) -> None:
    seconds, speed, down = cfg.mem
    max_inflight = 64
    log = rig.tmp / "memchild.log"
    argv = [sys.executable, str(ROOT / "bench" / "_memchild.py"), "--url", rig.url(OCYCLE_DB), "--queue", "q2",
            "--seconds", str(seconds), "--speed", str(speed), "--max-inflight", str(max_inflight),
            "--resend-after", "5", "--timeout", "120"]  # fmt: skip
    err = open(log, "wb")  # noqa: SIM115  (closed in finally)
    child = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                             text=True, start_new_session=True)  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put("")

    def expect(kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"6: no '{kind}' from the producer in {timeout:.0f} s") from None
            word, _, rest = line.partition(" ")
            if word == kind:
                return dict(json.loads(rest))
            if word in ("error", ""):
                tail = log.read_text(errors="replace")[-2000:]
                raise BenchError(f"6: the producer failed: {rest.strip()}\n{tail}")

    def tell(msg: str) -> None:
        assert child.stdin is not None
        child.stdin.write(msg + "\n")
        child.stdin.flush()

    threading.Thread(target=pump, daemon=True).start()
    try:
        ready = expect("ready", 60)
        tell("go")
        stream_seconds = seconds / speed
        time.sleep(stream_seconds * 0.4)
        rig.redis.kill()
        tell("phase outage")
        t_down = perf()
        time.sleep(down)
        rig.redis.restart_empty()
        tell("phase restored")
        outage = perf() - t_down
        revived = rig.revive(rig.w)  # as the compose file's restart policy would
        expect("written", stream_seconds + 120)
        result = expect("result", 180)
        child.wait(30)
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, 9)
            child.wait(5)
        err.close()
    report(cfg, verdicts, ready, result, outage, revived, max_inflight)


def report(cfg: Config, verdicts: Verdicts, ready: dict[str, Any], result: dict[str, Any], outage: float,
           revived: list[str], max_inflight: int) -> None:  # fmt: skip
    seconds, speed, _ = cfg.mem
    chunk_bytes = ready["chunk_bytes"]
    inflight_bytes = max_inflight * sum(chunk_bytes)
    baseline = ready["rss"]
    bound = baseline + 3 * inflight_bytes
    peaks = result["peaks"]
    rows = []
    for ph, label in (("start", "start (set up, connected, before the first write)"),
                      ("before", "streaming, before the outage"), ("outage", f"redis-server down ({outage:.1f} s)"),
                      ("restored", "streaming, after the restart"), ("drain", "last write to last result"),
                      ("end", "after close()")):  # fmt: skip
        p = peaks.get(ph)
        if p:
            rows.append([label, mb(p["rss"]), mb(p["rss"] - baseline), mb(p["spooled"]), f"{int(p['in_flight'])}",
                         mb(bound)])  # fmt: skip
    rows.append(["VmHWM at the end (the process's peak RSS)", mb(result["hwm_end"]), mb(result["hwm_end"] - baseline),
                 "", "", mb(bound)])  # fmt: skip
    table(f"Producer memory: {seconds:g} s of 16 kHz float32 audio through spl/classify/archive_flac at "
          f"{speed:g}x real time, 2 workers, redis-server killed for {outage:.1f} s mid-stream and restarted empty",
          ["phase", "peak VmRSS", "over baseline", "peak spooled_bytes", "peak chunks in flight", "expected bound"],
          rows)  # fmt: skip
    stats = result["stats"]
    emitted = {k: int(v["emitted"]) for k, v in stats.items()}
    done = {k: int(v["done"]) for k, v in stats.items()}
    print(
        f"- expected bound: baseline {mb(baseline)} + 3 x max_inflight {max_inflight} x (chunk bytes "
        f"{' + '.join(f'{b:,}' for b in chunk_bytes)}) = {mb(baseline)} + 3 x {mb(inflight_bytes)}; the audio "
        f"streamed is {mb(seconds * RATE * 4)} (x 3 consumers if every chunk were kept); the peak is "
        f"{(result['hwm_end'] - baseline) / inflight_bytes:.2f} x the in-flight data over the baseline"
    )
    print(
        f"- RSS a quarter through the stream {mb(result['rss_quarter'])}, after the last write "
        f"{mb(result['rss_written'])}, after close() {mb(result['rss_end'])}"
    )
    print(
        f"- wrote {result['audio_seconds']:.0f} s of audio in {result['write_seconds']:.1f} s; the longest write() "
        f"blocked {result['longest_write']:.2f} s (policy 'block' at max_inflight), {result['blocked_seconds']:.1f} s "
        f"in all; last result {result['drain_seconds']:.1f} s after the last write"
    )
    print(
        f"- chunks emitted {emitted}, done {done}, errors {result['n_errors']} {result['errors']}; executor counts "
        f"{result['counts']}"
    )
    if revived:
        print(f"- workers that exited when redis-server died, started again by the bench: {', '.join(revived)}")
    complete = result["complete"] and emitted == done and not result["n_errors"]
    verdicts.at_most("memory", "producer peak RSS (VmHWM) <= baseline + 3 x max_inflight x chunk bytes", mb(bound),
                     mb(result["hwm_end"]), result["hwm_end"] / bound, 1.0)  # fmt: skip
    verdicts.add("memory", "every chunk's result arrives across the outage", f"{sum(emitted.values())} chunks",
                 f"{sum(done.values())} done", f"{sum(done.values()) / max(1, sum(emitted.values())):.2f}x", complete,
                 f"{result['n_errors']} errors")  # fmt: skip
