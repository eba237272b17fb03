"""ocycle_dist's Celery path against stock Celery and raw redis-py, goal by goal, with a PASS/MISS verdict each.

Run from the repository root (needs ``redis-server`` on PATH, e.g. Debian's ``apt-get install redis-server``)::

    python bench/bench_celery.py              # everything, 5 interleaved publish rounds (~2.5 min)
    python bench/bench_celery.py --rounds 9
    python bench/bench_celery.py --quick      # smoke run: small counts, 2 rounds (~45 s)
    python bench/bench_celery.py --sections publish,latency   # some sections only (see --help)
    python bench/bench_celery.py --logs DIR   # keep redis-server's and the workers' logs in DIR
    python bench/bench_celery.py --reply-secret S   # ocycle_dist's producers and workers share a secret: sealed
                                                    # messages and replies (OCYCLE_REPLY_SECRET)

Self-contained: starts its own redis-server and 8 workers (``bench/celery_bench/rig.py``), stopped at the end,
on error and on Ctrl-C. Each section is a module of ``bench/celery_bench/`` that says what it measures and
against what; sections outage and memory kill redis-server and restart it empty, a worker that exits then is started
again and reported, and the end of the output counts what the workers' logs say about the outages.
Machines are shared and noisy (2 slow cores here): read ratios, not absolute numbers. Exit code 0 unless a
contender failed (lost reply, error, time-out); a missed goal is reported, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
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

import numpy as np  # noqa: E402
import redis  # noqa: E402

import ocycle_dist  # noqa: E402
from bench._report import Verdicts  # noqa: E402
from bench.celery_bench import fleet, gateway, latency, memory, outage, publish, scaling, write_latency  # noqa: E402
from bench.celery_bench.common import OCYCLE_DB, BenchError, config  # noqa: E402
from bench.celery_bench.rig import Rig, interrupts_as_exceptions, scan_logs, worker_log_summary  # noqa: E402

SECTIONS = {
    "publish": publish,
    "write": write_latency,
    "latency": latency,
    "fleet": fleet,
    "gateway": gateway,
    "scaling": scaling,
    "outage": outage,
    "memory": memory,
}  # run order; fleet: a worker draining a backlog, a fleet of producers, the producer's CPU
perf = time.perf_counter


def environment(r: redis.Redis) -> str:
    server = r.info("server").get("redis_version", "?")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"python {platform.python_version()} | celery {version('celery')} | kombu {version('kombu')} | "
            f"redis-py {version('redis')} | redis-server {server} | msgpack {version('msgpack')} | numpy "
            f"{np.__version__} | ocycle_dist {ocycle_dist.__version__} (C hot path: "
            f"{type(ocycle_dist.BufferEmit(len, 1).windows.hot).__module__}) | {os.cpu_count()} cpus "
            f"| load average {load} "
            f"| {platform.platform()}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved publish rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, small counts")
    names = tuple(SECTIONS)
    parser.add_argument("--sections", default=",".join(names), help=f"comma-separated subset of {names}")
    parser.add_argument("--logs", help="keep the processes' logs in this directory (default: a temporary one)")
    parser.add_argument("--reply-secret", help="OCYCLE_REPLY_SECRET of ocycle_dist's producers and workers")
    args = parser.parse_args()
    if args.reply_secret is not None:  # the workers inherit the environment; the producers read it (from_env)
        os.environ["OCYCLE_REPLY_SECRET"] = args.reply_secret
    cfg = config(args.quick, args.rounds)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}: choose from {names}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = perf()
    status = 0
    timings: list[str] = []
    verdicts = Verdicts()
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
    workdir = contextlib.nullcontext(args.logs) if args.logs else tempfile.TemporaryDirectory(prefix="bench-celery-")
    with workdir as tmp, interrupts_as_exceptions():
        rig = Rig(Path(tmp))
        try:
            rig.redis.start()
            print(environment(redis.Redis.from_url(rig.url(OCYCLE_DB))))
            print("command:", " ".join([Path(sys.executable).name, *sys.argv]), f"({cfg})")
            ready = rig.start_workers()
            time.sleep(2.0)  # let the pool children finish starting before anything is timed
            print(f"8 workers ready after {ready:.1f} s (setup {perf() - start:.1f} s)")
            for section, module in SECTIONS.items():
                if section not in chosen:
                    continue
                t = perf()
                print(f"  section {section} ...", file=sys.stderr, flush=True)
                if section in ("outage", "memory"):
                    rig.stop_reference()  # stock Celery is done: its workers would only reconnect
                module.run(rig, cfg, verdicts)
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                print(f"  section {section}: {perf() - t:.1f} s", file=sys.stderr, flush=True)
                timings.append(f"{section} {perf() - t:.0f} s (load average after: {load})")
                rig.check()
            verdicts.print()
            print(f"\nsections: {'; '.join(timings)}")
            worker_log_summary(rig.workers)
        # Handled here, not only in ``finally``: leaving the except block frees the traceback's frames, and with
        # them Celery's AsyncResults, whose __del__ unsubscribes while Redis is still up (else ~20 s of retries).
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
            for note in scan_logs(rig.workers) if status else []:
                print(f"- {note}", file=sys.stderr)
            rig.stop()
    print(f"\ntotal runtime {perf() - start:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
