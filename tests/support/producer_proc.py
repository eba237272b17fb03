"""A producer run as a subprocess by tests/integration/test_faults.py (killed with SIGKILL, then restarted).

Writes the chunks ``--first`` .. ``--count - 1`` of a stream with an explicit id and a SQLite spool; each
chunk is 16 bytes: its number (8 bytes, big-endian) and 8 bytes of padding. Appends ``<seq> <number>`` to
``--results`` for each on_done, and after each write the number of the last chunk written to ``--progress``
(both flushed line by line, so a SIGKILL loses nothing written). A restarted producer takes over, at
construction, the chunks its predecessor left in the spool. At the end it closes the emitter (waiting for
every result) and prints one JSON line: what it adopted and its counters.

    python tests/support/producer_proc.py --broker URL --spool DIR --stream ID --results F --progress F --count N
        [--first K] [--interval S] [--task NAME] [--resend-after S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ocycle_dist as ocycle
from ocycle_dist.remote.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--progress", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--task", default="contract.slow_echo")
    parser.add_argument("--resend-after", type=float, default=None, help="default: the settings' default")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between writes (a live source)")
    args = parser.parse_args()

    lock = threading.Lock()
    results = open(args.results, "a", buffering=1)  # noqa: SIM115  (open for the process's life)
    progress = open(args.progress, "a", buffering=1)  # noqa: SIM115

    def on_done(result: Any, meta: ocycle.Chunk) -> None:
        number = int.from_bytes(result[0][:8], "big")
        with lock:
            results.write(f"{meta.seq} {number}\n")

    def on_error(exc: BaseException, meta: ocycle.Chunk) -> None:
        print(f"on_error seq={meta.seq}: {exc!r}", file=sys.stderr, flush=True)

    settings = Settings.from_env(broker_url=args.broker, resend_after=args.resend_after, spool_dir=args.spool)
    emitter = ocycle.BufferEmit(
        args.task,
        16,
        clip=True,
        mode="celery",
        settings=settings,
        stream=args.stream,
        on_done=on_done,
        on_error=on_error,
        max_inflight=args.count + 1000,
    )
    adopted = emitter.stats().emitted  # taken over from the spool at construction
    executor = emitter.executor
    for number in range(args.first, args.count):
        emitter.write(number.to_bytes(8, "big") + b"\0" * 8)
        progress.write(f"{number}\n")
        if args.interval:
            time.sleep(args.interval)
    emitter.close()
    stats = emitter.stats()
    report = {"adopted": adopted, "stats": stats.as_dict(), "counts": executor.counts, "pid": os.getpid()}
    print(json.dumps(report), flush=True)
    results.close()
    progress.close()


if __name__ == "__main__":
    main()
