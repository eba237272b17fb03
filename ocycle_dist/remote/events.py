"""Task events for the chunks a pool process runs itself: each chunk of a batch message or a drain shows in
Flower (and ``celery events``) as its own task, as a plain chunk message would.

Celery sends a task's events (``task-received``, ``task-started``, ``task-succeeded``/``task-failed``) from the
worker's main process, per message: a batch message would show as one ``ocycle.batch`` task, and drained
chunks, taken straight from the queue, not at all. When the worker sends task events (``celery worker -E``,
or ``worker_send_task_events``), :class:`ChunkEvents` sends those four for each such chunk from the pool
process, with the chunk's own task id, task name, argument summary, runtime and result: buffered, and
published together when the run ends (one Redis round trip, as Celery's own dispatcher buffers them).
Without events nothing is done per chunk.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import signals
from celery.utils.saferepr import saferepr

log = logging.getLogger("ocycle_dist.worker")

RESULT_REPR = 256  # characters of a result's repr in its event (Celery's own limit is larger)

_dispatchers: dict[tuple[int, int], Any] = {}  # one per app and process (made after the fork)


@signals.worker_init.connect
def _events_follow_the_worker(sender: Any = None, **_: Any) -> None:
    """``celery worker -E`` tells the worker, not the app: record it in the app's configuration before the pool
    processes are forked, where :func:`enabled` reads it."""
    app = getattr(sender, "app", None)
    if app is not None and getattr(sender, "task_events", None) is not None:
        app.conf.worker_send_task_events = bool(sender.task_events)


def enabled(app: Any) -> bool:
    """Whether this worker sends task events."""
    return bool(app.conf.worker_send_task_events)


def _dispatcher(app: Any, hostname: str | None) -> Any:
    key = (id(app), os.getpid())
    dispatcher = _dispatchers.get(key)
    if dispatcher is None:
        dispatcher = _dispatchers[key] = app.events.Dispatcher(
            app.connection_for_write(), hostname=hostname, enabled=True, buffer_group=["task"], buffer_limit=1 << 30
        )
    return dispatcher


def args_repr(item: list[Any]) -> str:
    """A chunk's arguments as Flower shows them: ``(<chunk stream#seq len=n>, t0)``, as the producer's plain
    chunk messages say (``argsrepr``)."""
    meta = item[4] if isinstance(item[4], dict) else {}
    return f"(<chunk {meta.get('stream')}#{meta.get('seq')} len={meta.get('length')}>, {item[3]!r})"


class ChunkEvents:
    """The events of the chunks of one run (a batch message, a drain's take); :meth:`flush` sends them."""

    def __init__(self, app: Any, hostname: str | None) -> None:
        self.app = app
        self.hostname = hostname
        self.dispatcher = _dispatcher(app, hostname)
        self.started = 0.0

    def _received(self, item: list[Any]) -> str:
        task_id = str(item[0])
        self.dispatcher.send("task-received", uuid=task_id, name=str(item[1]), args=args_repr(item), kwargs="{}",
                             root_id=task_id, parent_id=None, retries=0, eta=None, expires=item[5])  # fmt: skip
        return task_id

    def begin(self, item: list[Any]) -> None:
        """A chunk (``[task id, task name, chunk, t0, meta, expires at, ...]``) starts running."""
        self.dispatcher.send("task-started", uuid=self._received(item))
        self.started = time.monotonic()

    def expired(self, item: list[Any]) -> None:
        """A chunk not started before its ``expires``: discarded unread, as Celery reports an expired task."""
        self.dispatcher.send("task-revoked", uuid=self._received(item), terminated=False, signum=None, expired=True)

    def succeeded(self, task_id: Any, result: Any) -> None:
        runtime = time.monotonic() - self.started
        self.dispatcher.send("task-succeeded", uuid=str(task_id), result=saferepr(result, RESULT_REPR), runtime=runtime)

    def failed(self, task_id: Any, exc: BaseException) -> None:
        self.dispatcher.send("task-failed", uuid=str(task_id), exception=saferepr(exc), traceback=None)

    def flush(self) -> None:
        """Publish the buffered events (a lost connection loses them, not the chunks' outcomes)."""
        try:
            self.dispatcher.flush()
        except Exception as exc:
            log.warning("could not send the chunks' task events: %s", exc)
            _dispatchers.clear()  # a fresh connection next time


def for_run(app: Any, hostname: str | None) -> ChunkEvents | None:
    """The events of a run, or None when the worker sends no task events."""
    return ChunkEvents(app, hostname) if enabled(app) else None
