"""Worker liveness: each worker keeps a short lease in Redis naming the chunks it holds; producers watch them.

Celery alone gets a dead worker's tasks back only after the Redis visibility timeout (an hour by default):
a worker SIGKILLed whole (an OOM kill, a lost container) leaves its prefetched and running tasks in kombu's
``unacked`` hash. Here:

- **Worker side** (:class:`LeaseKeeper`, a thread in the worker's main process, started by
  :class:`LeaseStep`): every ``lease/3`` seconds it writes ``ocycle:lease:<hostname>`` with a time to live of
  ``lease`` seconds (server-side, so no clock is compared), holding the ids of the tasks it holds: prefetched
  and running. It runs beside the pool, so a long task does not stop the renewals. On a warm shutdown the lease
  is deleted; on a kill it lapses.
- **Producer side** (:class:`.liveness.LeaseWatch`, one per process and broker): for each chunk sent and not
  answered, it notes which worker holds it. When that worker's lease lapses, the chunk is sent again at once. A
  chunk delivered (in ``unacked_index``) but named by no lease after a few renewals was taken by a worker that
  died before naming it: sent again too. A chunk held by a live worker is never sent again because of this,
  however long its task runs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from . import wire
from .protocol import BATCH_HEADER, UNACKED_INDEX_KEY, WORKERS_KEY, lease_key

log = logging.getLogger("ocycle_dist.lease")

MAX_LEASE_BYTES = 1 << 20  # a lease larger than this is ignored: a hostile or broken writer
WORKERS_TTL = 24 * 3600  # seconds the set of lease holders lives after the last renewal


class LeaseKeeper:
    """Keeps this worker's lease alive while it runs.

    Args:
        client: a ``redis.Redis`` for this thread only.
        hostname: the worker's node name (``name@host``).
        held: returns the ids of the tasks the worker holds now.
        lease: seconds the lease lives; renewed every third of that.
    """

    def __init__(self, client: Any, hostname: str, held: Any, lease: float) -> None:
        self.client, self.hostname, self.held, self.lease = client, hostname, held, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ocycle-lease", daemon=True)
        self.renewals = 0

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def renew(self) -> None:
        """Write the lease now (the ids held, a time to live of ``lease`` seconds)."""
        record = {"worker": self.hostname, "tasks": sorted(self.held())}
        pipe = self.client.pipeline(transaction=False)
        pipe.set(lease_key(self.hostname), wire.dumps(record), px=max(1, int(self.lease * 1000)))
        pipe.sadd(WORKERS_KEY, self.hostname)
        pipe.expire(WORKERS_KEY, WORKERS_TTL)  # gone a day after the last worker
        pipe.execute()
        self.renewals += 1

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.renew()
                if failing:
                    log.info("worker lease of %s renewed again", self.hostname)
                failing = False
            except Exception as exc:  # Redis away: the lease lapses, producers resend; keep trying
                if not failing:
                    log.warning("could not renew the worker lease of %s: %s", self.hostname, exc)
                failing = True
            self._stop.wait(self.lease / 3)

    def stop(self) -> None:
        """Stop renewing and delete the lease (a warm shutdown: nothing held any more)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.lease)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(lease_key(self.hostname))
            pipe.srem(WORKERS_KEY, self.hostname)
            pipe.execute()
        except Exception:  # it lapses anyway
            log.debug("could not delete the lease of %s", self.hostname)
        finally:
            self.client.close()


def held_task_ids() -> set[str]:
    """Ids of the tasks this worker process holds: received (prefetched) or running."""
    from celery.worker import state

    for _ in range(5):  # the worker's loop may change the set while this thread copies it
        try:
            held: set[str] = set()
            for request in list(state.reserved_requests):
                batch = request._request_dict.get(BATCH_HEADER) if hasattr(request, "_request_dict") else None
                if batch:  # a batch message: name its chunks, which the producers wait on
                    held.update(str(item[0]) for item in batch)
                else:
                    held.add(request.id)
            return held
        except RuntimeError:
            continue
    return set()


def _lease_step() -> type:
    from celery import bootsteps

    from .redis_client import connect
    from .settings import app_settings

    class LeaseStep(bootsteps.StartStopStep):  # type: ignore[misc]
        """Worker bootstep: a :class:`LeaseKeeper` for the worker's life (after its pool has started)."""

        requires = ("celery.worker.components:Pool",)

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.keeper: LeaseKeeper | None = None

        def start(self, worker: Any) -> None:
            settings = app_settings(worker.app)
            if settings.worker_lease <= 0:
                return
            client = connect(
                worker.app.conf.broker_url,
                socket_timeout=min(settings.socket_timeout, 2.0),
                master_name=settings.sentinel_master,
            )
            self.keeper = LeaseKeeper(client, worker.hostname, held_task_ids, settings.worker_lease).start()

        def stop(self, worker: Any) -> None:
            if self.keeper is not None:
                self.keeper.stop()
                self.keeper = None

    return LeaseStep


def install_lease(app: Any) -> None:
    """Add the lease bootstep to a Celery app's workers."""
    app.steps["worker"].add(_lease_step())


class Leases:
    """What the workers' leases said at one moment: the task ids and delivery tags each live worker names,
    and the deliveries kombu records (``unacked_index``)."""

    def __init__(self, held: dict[str, tuple[set[str], list[str]]], delivered: list[str], at: float) -> None:
        self.held, self.delivered, self.at = held, delivered, at


def read_leases(client: Any) -> Leases:
    """Read every worker's lease and the deliveries, in two round trips; forget the names of the holders whose
    lease has lapsed (a killed worker, a pool process that ended: each is named once, its lease written first)."""
    workers = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in client.smembers(WORKERS_KEY))
    pipe = client.pipeline(transaction=False)
    if workers:
        pipe.mget([lease_key(w) for w in workers])
    pipe.zrange(UNACKED_INDEX_KEY, 0, -1)
    replies = pipe.execute()
    raw, delivered = (replies[0], replies[1]) if workers else ([], replies[0])
    lapsed = [worker for worker, value in zip(workers, raw, strict=True) if value is None]
    if lapsed:
        try:
            client.srem(WORKERS_KEY, *lapsed)
        except Exception as exc:  # the next reader prunes them
            log.debug("could not forget %d lapsed lease holders: %s", len(lapsed), exc)
    held: dict[str, tuple[set[str], list[str]]] = {}
    for worker, value in zip(workers, raw, strict=True):
        if value is None or len(value) > MAX_LEASE_BYTES:
            continue
        try:
            record = wire.loads(value)
            held[worker] = ({str(t) for t in record.get("tasks", ())}, [str(t) for t in record.get("tags", ())])
        except Exception:  # a broken lease names nothing
            continue
    tags = [tag.decode() if isinstance(tag, bytes) else str(tag) for tag in delivered]
    return Leases(held, tags, time.monotonic())
