"""The live microphone: the canonical three consumers at an accelerated real-time pace, the workers away for a
stretch and then back; ocycle_dist out of the box against stock Celery on the same stream.

Run from the repository root (needs ``redis-server`` on PATH)::

    python bench/bench_live.py                 # 20 min of audio at 20x, workers away for the middle third (~2.5 min)
    python bench/bench_live.py --quick         # smoke run: 8 min of audio at 20x (~1.5 min)
    python bench/bench_live.py --rounds 3      # medians over rounds, ratios per round
    python bench/bench_live.py --seconds 2400 --speed 40 --outage 0.25,0.75   # an outage that fills the budgets

The stream: the demo's synthetic 16 kHz float32 microphone (``ocycle_dist.app.sources.synthetic``, frames of 1024
samples) written at ``--speed`` times real time through ``ocycle_dist.app.consumers.CONSUMERS``: SPL every 0.5 s (queue
``spl``), the model every 2 s (queue ``model``, chunks expire after ``MODEL_EXPIRES`` = 6 s) and the FLAC
archive every 10 s (queue ``archive``), by one ``Tap`` in a producer process of its own (so its RSS is its
own). Default settings: the spool's byte budget (32 MiB per emitter) and the celery mode's default policy
(drop_oldest).
The model lags for real: ``bench.live.classify`` is ``workers.tasks.classify`` padded to ``--model-lag`` x its
chunk's duration at the bench's pace (2.5 x 2 s / 20 = 0.25 s a chunk by default; ``--model-lag 0``: the
model as it is). Workers: the compose file's ``worker`` (spl, archive, celery) and ``worker-model`` (model), one
process each (``-c 1``). From ``--outage`` (fractions of the stream; default the middle third) all workers are
stopped (warm shutdown: SIGTERM to each main process, as ``docker compose stop``; ``--stop kill``: SIGKILL)
and then started again; the stream goes on to the end; ``close(timeout=)`` is bounded.

The reference, stock Celery (``bench/refapp.py``: JSON, Redis result backend), streams the same frames in the
same phases: each consumer's chunk cut with numpy and sent with ``apply_async`` (the model's with the same
``expires``) to two workers on Celery's one default queue, shared by the three consumers (stock Celery's
default; same tasks, the same lagging model). Its results are read from the backend at the end; a result's
time is its ``date_done`` (a lower bound of when a producer could have it).

Phases (``bench/live_bench/analysis.py``): ``up``; ``absent``, from the stop signal to the first result after the
restart; ``catch-up``, until SPL results come within 0.5 s again; ``live``. The parts, in ``bench/live_bench/``:
``rig.py`` (redis-server, the workers, the run's schedule), ``producer.py`` (the producer process) and
``contenders.py`` (ocycle_dist's Tap, stock Celery's chunking), ``analysis.py`` and ``report.py`` (numbers, tables,
goals), ``tasks.py`` and ``reftasks.py`` (the bench's worker tasks: the lagging model; stock Celery's three).

Goals (PASS/MISS), by the names the output gives them:

- *write*: ``Tap.write()`` p99 < 1 ms and max < 20 ms in every phase.
- *memory*: the producer's peak RSS (VmHWM) <= its baseline (set up, connected, before the first write) + the three
  emitters' spool budgets (3 x 32 MiB) + slack of 16 MiB + 20 % of the budgets. The 16 MiB: what a producer grows
  by without keeping any chunk (stock Celery's grows 13-21 MB here: first-use allocations, the transient copies of
  a publish, the bench's own records in the same process). The 20 %: what the kept chunks cost beyond their bytes,
  measured with 115 MB spooled: 22 MB of RSS more, of which ~4.5 MB are Python objects (tracemalloc: ~2.9 KB a
  chunk for its Entry, Future, condition, deadline and map entries) and the rest allocator overhead and
  fragmentation.
- *SPL live*: SPL emit-to-result p99 < 0.5 s while the model lags, workers up and after the catch-up.
- *accounted*: every chunk accounted for, none lost or failed.
- *catch-up*: every chunk emitted before the workers' return has its outcome within the outage's length (the
  backlog drains faster than it built up, or repeated outages would snowball).

Machines are shared and noisy (2 cores here): read medians and ratios. Exit code 0
unless a contender failed (lost results, errors, time-outs); a missed goal is reported, not an error."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's ocycle_dist, workers and bench.*

import ocycle_dist  # noqa: E402
from bench._report import Verdicts  # noqa: E402
from bench.celery_bench.rig import interrupts_as_exceptions, scan_logs  # noqa: E402
from bench.live_bench import analysis, report  # noqa: E402
from bench.live_bench.rig import BenchError, Plan, Rig, run  # noqa: E402

perf = time.perf_counter


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--seconds", type=float, default=1200.0, help="seconds of audio (default 1200: 20 min)")
    parser.add_argument("--speed", type=float, default=20.0, help="times real time (default 20)")
    parser.add_argument("--outage", default="0.333,0.667", help="workers away from,to (fractions of the stream)")
    parser.add_argument("--model-lag", type=float, default=2.5, help="model time / its chunk's duration at --speed")
    parser.add_argument("--stop", choices=("term", "kill"), default="term", help="how the workers are stopped")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both contenders, order alternating")
    parser.add_argument("--timeout", type=float, default=120.0, help="close()/collection bound after the last write")
    parser.add_argument("--quick", action="store_true", help="smoke run: 480 s of audio at 20x")
    parser.add_argument("--only", choices=("ocycle", "celery"), help="one contender only")
    parser.add_argument("--logs", help="keep the processes' logs and each run's record (JSON) in this directory")
    args = parser.parse_args()
    a, b = (float(x) for x in args.outage.split(","))
    if not 0 < a < b < 1:
        parser.error("--outage: two fractions 0 < from < to < 1")
    seconds, speed = (480.0, 20.0) if args.quick else (args.seconds, args.speed)
    plan = Plan(seconds, speed, (a, b), args.model_lag * 2.0 / speed, args.stop, args.timeout)
    model_task = "bench.live.classify" if args.model_lag > 0 else "workers.tasks.classify"
    contenders = [c for c in ("ocycle", "celery") if args.only in (None, c)]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"python {platform.python_version()} | celery {version('celery')} | redis-py {version('redis')} | "
          f"numpy {version('numpy')} | ocycle_dist {ocycle_dist.__version__} | {os.cpu_count()} cpus | load average "
          f"{load} | {platform.platform()}")  # fmt: skip
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"stream: {seconds:g} s of 16 kHz float32 audio at {speed:g}x ({plan.wall:.0f} s), workers away from "
          f"{a:.0%} to {b:.0%} of it ({seconds * (b - a) / 60:.1f} min of audio, stop: {args.stop}), the model "
          f"{plan.model_seconds * 1e3:.0f} ms a chunk ({args.model_lag:g}x slower than its chunks arrive)")  # fmt: skip
    start = perf()
    status = 0
    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
    workdir = contextlib.nullcontext(args.logs) if args.logs else tempfile.TemporaryDirectory(prefix="bench-live-")
    with workdir as tmp, interrupts_as_exceptions():
        rig = Rig(Path(tmp), plan)
        try:
            rig.start()
            for r in range(args.rounds):
                for c in contenders if r % 2 == 0 else contenders[::-1]:
                    t = perf()
                    print(f"  round {r + 1}: {c} ...", file=sys.stderr, flush=True)
                    raw = run(rig, c, model_task)
                    if args.logs:  # the producer's whole record, for a closer look
                        (Path(tmp) / f"run-{r + 1}-{c}.json").write_text(json.dumps(raw))
                    runs[c].append(analysis.analyse(raw, plan))
                    print(f"  round {r + 1}: {c} {perf() - t:.0f} s", file=sys.stderr, flush=True)
            names = {"ocycle": "ocycle_dist", "celery": "stock Celery"}
            for c in contenders:
                report.phase_table(names[c], runs[c], plan)
                print()
                report.outcome_lines(names[c], runs[c])
            report.by_kind_table(runs, names)
            if len(contenders) == 2:
                report.comparison(runs["ocycle"], runs["celery"])
            if "ocycle" in runs:
                verdicts = Verdicts()
                report.goals(verdicts, runs["ocycle"], plan)
                report.budget_lines(runs["ocycle"])
                verdicts.print()
            failed = [f"{c}: {bad}" for c in contenders for bad in report.failures(runs[c])]
            if failed:
                raise BenchError("a contender failed: " + "; ".join(failed))
        except BenchError as exc:
            print(f"\nFAILED: {exc}", file=sys.stderr)
            status = 1
        except KeyboardInterrupt as exc:
            print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}); stopping the workers and redis-server", file=sys.stderr)
            status = 130
        except Exception:
            traceback.print_exc()
            status = 1
        finally:
            for note in scan_logs(rig.topology.workers + rig.stock) if status else []:
                print(f"- {note}", file=sys.stderr)
            rig.stop()
    print(f"\ntotal runtime {perf() - start:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
