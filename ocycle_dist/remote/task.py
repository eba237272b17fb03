"""The base class of chunk tasks: a chunk message run as its task, then the queue drained.

A chunk's task message names the producer's reply list in ``reply_to`` and carries the chunk's metadata in a
header ``ocycle``. :class:`ChunkTask` checks the message's seal (with a reply secret, :mod:`.intake`), fetches
a claimed chunk from Redis (:func:`.runner.unclaim`) and checks its size before the task runs; tasks stay plain
functions of ``(chunk, t0)``, given ``meta=Chunk(...)`` too when they have a ``meta`` parameter. After the
message ran, the pool process drains its queue (:mod:`.drain`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Task

from . import wire
from .drain import drain
from .intake import sealed_items
from .protocol import BATCH_TASK, META_HEADER, SEAL_HEADER, is_reply_key
from .redis_client import TRANSIENT, classify, reason
from .replies import is_bound
from .runner import broker_client, chunk_kwargs, own_claim, unclaim
from .settings import app_settings
from .worker_metrics import count

log = logging.getLogger("ocycle_dist.worker")


class ChunkTask(Task):  # type: ignore[misc]
    """Base class of the tasks of an app made by :func:`make_app`.

    After a chunk message has run (and its reply is sent), the pool process takes what else waits on its
    queue and runs it in the same call (:func:`.drain.drain`).
    """

    _started = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._started = time.monotonic()
        if args and not self._sealed(args):
            self.request.reply_to = None  # refused: nothing is replied to the list it names
            return None
        if args and isinstance(args[0], wire.Claim):  # only this task's own chunk is read, nothing else
            raw = broker_client(self.app).get(args[0].key) if own_claim(self.request.id, args[0]) else None
            args = (unclaim(self.request.id, args[0], raw), *args[1:])
        if args:
            kwargs.update(chunk_kwargs(self, args[0], self.request.get(META_HEADER), self._ocycle_limit()))
        return super().__call__(*args, **kwargs)

    _ocycle_call = __call__  # runner._call runs a chunk of a task whose class keeps this __call__ without it

    def _sealed(self, args: tuple[Any, ...]) -> bool:
        """With a reply secret, whether this message's seal checks out (:func:`.intake.sealed_items`); a chunk
        checked already in this process (a batch's, a drained one's) is not checked twice; a batch message's
        chunks are checked one by one when it runs (:func:`.batch.run_batch`)."""
        settings = app_settings(self.app)
        request = self.request
        if not settings.reply_secret or not is_reply_key(request.reply_to) or self.name == BATCH_TASK:
            return True
        if is_bound(request.id):
            return True
        item = [request.id, self.name, args[0], args[1] if len(args) > 1 else None, request.get(META_HEADER), None,
                request.reply_to, request.get(SEAL_HEADER)]  # fmt: skip
        queue = (request.delivery_info or {}).get("routing_key")
        client = broker_client(self.app)
        return bool(sealed_items(client, [item], settings.reply_secret, queue))

    def _ocycle_limit(self) -> int:
        """``max_chunk_bytes`` of the app's settings."""
        return app_settings(self.app).max_chunk_bytes

    def after_return(self, status: Any, retval: Any, task_id: Any, args: Any, kwargs: Any, einfo: Any) -> None:
        """Called by Celery's tracer in the pool process once the outcome is stored: drain the queue."""
        if self.request.get(META_HEADER) is None and self.name != BATCH_TASK:
            return  # not a chunk message (e.g. called directly)
        if self.name != BATCH_TASK:
            count("chunks", 1, "message")
        try:
            settings = app_settings(self.app)
            drain(self, broker_client(self.app), settings, time.monotonic() - self._started)
        except Exception as exc:  # the taken messages are recorded as delivered: their producers send them again
            if classify(exc) == TRANSIENT and isinstance(exc, (redis.RedisError, OSError)):
                log.warning("not draining after task %s: Redis is away (%s)", task_id, reason(exc))
            else:
                log.exception("draining the queue after task %s failed", task_id)
