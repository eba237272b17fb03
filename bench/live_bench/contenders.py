"""The two contenders of ``bench/bench_live.py``'s producer, and the record of what happened to each chunk.

- :class:`Ocycle`: a ``Tap`` of three ``NumpyEmit(mode="celery")`` as the demo makes them (their own queues, the
  model's chunks expire after ``MODEL_EXPIRES``), default settings: the spool's byte budget and policy.
- :class:`Stock`: stock Celery (``bench/refapp.py``: JSON, Redis result backend): each consumer's chunk cut with
  numpy and sent with ``task.apply_async(args=[float32 bytes, t0])`` on the default queue, the model's with
  the same ``expires``; outcomes read from the result backend at the end (``date_done``: when the worker
  stored it).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from array import array
from typing import Any

import numpy as np

from ocycle_dist.app.consumers import CONSUMERS, MODEL_EXPIRES

RATE = 16000
NAMES = [name for name, *_ in CONSUMERS]
perf = time.perf_counter


class Record:
    """What happened to each chunk: when emitted (by seq) and its outcome (seq -> [time, kind])."""

    def __init__(self) -> None:
        self.emitted: dict[str, array[float]] = {name: array("d") for name in NAMES}
        self.outcomes: dict[str, dict[int, tuple[float, str]]] = {name: {} for name in NAMES}
        self.errors: list[str] = []

    def on_done_for(self, name: str) -> Any:
        def on_done(result: Any, meta: Any) -> None:
            self.outcomes[name][meta.seq] = (time.time(), "done")

        return on_done

    def on_error_for(self, name: str) -> Any:
        from ocycle_dist import ExpiredError

        def on_error(exc: BaseException, meta: Any) -> None:
            expired = isinstance(exc, ExpiredError)
            self.outcomes[name][meta.seq] = (time.time(), "expired" if expired else "failed")
            if not expired:
                self.errors.append(f"{name}#{meta.seq}: {exc!r}")

        return on_error


class Ocycle:
    """The three consumers as the demo makes them, on one Tap; default settings."""

    def __init__(self, url: str, model_task: str, rec: Record) -> None:
        import ocycle_dist
        from ocycle_dist.remote.settings import Settings

        settings = Settings.from_env(broker_url=url)
        tag = uuid.uuid4().hex[:6]
        self.emitters = [
            ocycle_dist.NumpyEmit(
                model_task if queue == "model" else task, int(secs * RATE), clip=True, rate=RATE, mode="celery",
                stream=f"live-{name}-{tag}", settings=settings, queue=queue,
                expires=MODEL_EXPIRES if queue == "model" else None,
                on_done=rec.on_done_for(name), on_error=rec.on_error_for(name),
            )
            for name, task, secs, queue in CONSUMERS
        ]  # fmt: skip
        self.executors: list[Any] = [e.executor for e in self.emitters]  # CeleryExecutors
        for x in self.executors:
            x.hub.publisher.client.ping()  # connected before the baseline
        self.tap = ocycle_dist.Tap(*self.emitters).open()
        self.budget = settings.spool_max_bytes
        self.policy = self.emitters[0].policy
        self.rec = rec
        self.seqs = [0] * len(self.emitters)
        self.calls: list[array[float]] = [array("d"), array("d")]  # none: chunks are handed over inside write()

    def spooled(self) -> list[int]:
        return [x.spooled_bytes for x in self.executors]

    def write(self, frame: np.ndarray, t0: float, now: float) -> None:
        self.tap.write(frame, t0=t0)

    def after_write(self, started: float) -> None:
        for i, e in enumerate(self.emitters):
            seq = e.windows.seq
            while self.seqs[i] < seq:
                self.rec.emitted[NAMES[i]].append(started)
                self.seqs[i] += 1

    def finish(self, timeout: float) -> dict[str, Any]:
        pending = self.tap.close(flush=True, timeout=timeout)
        stats = {name: e.stats().as_dict() for name, e in zip(NAMES, self.emitters, strict=True)}
        counts = {name: dict(x.counts) for name, x in zip(NAMES, self.executors, strict=True)}
        unclaimed = self.executors[0].hub.listener.unclaimed  # replies to no chunk of ours: e.g. of dropped chunks
        return {"pending": pending, "stats": stats, "counts": counts, "budget": self.budget, "policy": self.policy,
                "unclaimed": unclaimed}  # fmt: skip


class Stock:
    """Stock Celery: each consumer's chunk cut with numpy and sent by ``apply_async`` (JSON, result backend)."""

    def __init__(self, url: str, rec: Record) -> None:
        os.environ["BENCH_REF_URL"] = url
        from bench.live_bench import reftasks

        self.app = reftasks.app
        self.rec = rec
        tasks = {"spl": reftasks.spl, "classify": reftasks.classify, "archive": reftasks.archive_flac}
        self.consumers = [
            (name, tasks[name], np.empty(int(secs * RATE), np.float32), MODEL_EXPIRES if queue == "model" else None)
            for name, _task, secs, queue in CONSUMERS
        ]
        self.fill = [0] * len(self.consumers)
        self.chunk_t0 = [0.0] * len(self.consumers)
        self.results: dict[str, list[Any]] = {name: [] for name in NAMES}
        self.calls: list[array[float]] = [array("d"), array("d")]  # (start time, seconds) of each apply_async
        reftasks.spl.apply_async(args=[b"", 0.0], queue="live-warm-up").forget()  # connect + subscribe once
        self.app.backend.client.delete("live-warm-up")  # the broker and the backend are one Redis db

    def spooled(self) -> list[int]:
        return [0, 0, 0]

    def write(self, frame: np.ndarray, t0: float, now: float) -> None:
        for i, (name, task, buf, expires) in enumerate(self.consumers):
            off, n = 0, len(frame)
            while off < n:
                pos = self.fill[i]
                if pos == 0:
                    self.chunk_t0[i] = t0 + off / RATE
                k = min(len(buf) - pos, n - off)
                buf[pos : pos + k] = frame[off : off + k]
                self.fill[i] = pos = pos + k
                off += k
                if pos == len(buf):
                    self.fill[i] = 0
                    started, t = time.time(), perf()
                    result = task.apply_async(args=[buf.tobytes(), self.chunk_t0[i]], expires=expires)
                    self.calls[1].append(perf() - t)
                    self.calls[0].append(started)
                    self.rec.emitted[name].append(now)
                    self.results[name].append(result)

    def after_write(self, started: float) -> None:
        pass

    def finish(self, timeout: float) -> dict[str, Any]:
        """Read every outcome from the result backend (``celery-task-meta-<id>``) until all are in."""
        from datetime import datetime

        client = self.app.backend.client
        todo = [(name, seq, r.id) for name, rs in self.results.items() for seq, r in enumerate(rs)]
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            left = []
            for start in range(0, len(todo), 500):
                part = todo[start : start + 500]
                metas = client.mget([f"celery-task-meta-{tid}" for _, _, tid in part])
                for (name, seq, tid), raw in zip(part, metas, strict=True):
                    if raw is None:
                        left.append((name, seq, tid))
                        continue
                    meta = json.loads(raw)
                    status_ = meta.get("status")
                    if status_ not in ("SUCCESS", "FAILURE", "REVOKED"):
                        left.append((name, seq, tid))
                        continue
                    at = datetime.fromisoformat(meta["date_done"]).timestamp()
                    kind = {"SUCCESS": "done", "REVOKED": "expired"}.get(status_, "failed")
                    self.rec.outcomes[name][seq] = (at, kind)
                    if kind == "failed":
                        self.rec.errors.append(f"{name}#{seq}: {str(meta.get('result'))[:200]}")
            todo = left
            if todo:
                time.sleep(0.2)
        return {"pending": len(todo), "stats": {}, "counts": {}, "budget": 0, "policy": ""}
