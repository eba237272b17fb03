"""The worker side: a Celery app set up for ocycle_dist, and the base class of chunk tasks.

A chunk's task message carries a header ``ocycle = {reply, stream, seq, t0, length, start, partial}``.
:class:`ChunkTask` fetches a claimed chunk from Redis before the task runs, and afterwards RPUSHes
``{id, stream, seq, ok, result | error}`` to the ``reply`` list, where the producer's listener picks it
up. Tasks stay plain functions of ``(chunk, t0)``, given ``meta=Chunk(...)`` too when they have a
``meta`` parameter. Both sides accept only the msgpack content type: a pickle message is refused unread.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from celery import Celery, Task

from . import wire
from .chunk import Chunk
from .errors import EncodeError
from .redis_client import connect
from .settings import Settings

log = logging.getLogger("ocycle_dist.worker")
_clients: dict[str, Any] = {}


def _client(url: str) -> Any:
    if url not in _clients:
        _clients[url] = connect(url)
    return _clients[url]


def payload_size(value: Any) -> int:
    """Bytes of a chunk value (bytes-like, str or numpy array)."""
    nbytes = getattr(value, "nbytes", None)
    return int(nbytes) if nbytes is not None else len(value)


class ChunkTask(Task):  # type: ignore[misc]
    """Base class of the tasks of an app made by :func:`make_app`."""

    def settings(self) -> Settings:
        return getattr(self.app, "ocycle_settings", None) or Settings.from_env()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], wire.Claim):
            raw = _client(self.app.conf.broker_url).get(args[0].key)
            if raw is None:
                raise LookupError(f"chunk {args[0].key} is no longer in Redis (expired or never stored)")
            args = (wire.loads(raw), *args[1:])
        info = self.request.get("ocycle")
        if info and args:
            limit = self.settings().max_chunk_bytes
            if payload_size(args[0]) > limit:
                raise EncodeError(f"chunk of {payload_size(args[0])} bytes exceeds max_chunk_bytes={limit}")
            if "meta" in inspect.signature(self.run).parameters:
                kwargs["meta"] = Chunk(**{f: info[f] for f in Chunk._fields})
        return super().__call__(*args, **kwargs)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self._reply({"ok": True, "result": retval})

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        self._reply({"ok": False, "error": [type(exc).__name__, str(exc)]})

    def _reply(self, outcome: dict[str, Any]) -> None:
        info = self.request.get("ocycle")
        if not info:  # called by someone else than the ocycle_dist producer: nothing to route
            return
        record = {"id": self.request.id, "stream": info["stream"], "seq": info["seq"], **outcome}
        try:
            data = wire.dumps(record)
        except EncodeError as exc:
            record.pop("result", None)
            record.update(ok=False, error=["EncodeError", f"the task's result cannot be sent back: {exc}"])
            data = wire.dumps(record)
        ttl = max(1, int(self.settings().result_ttl))
        pipe = _client(self.app.conf.broker_url).pipeline(transaction=False)
        pipe.rpush(info["reply"], data)
        pipe.expire(info["reply"], ttl)
        pipe.execute()


def make_app(settings: Settings | None = None, *, name: str = "ocycle", include: tuple[str, ...] = ()) -> Celery:
    """A Celery app for ocycle_dist: msgpack only, late acks, one prefetched task per process."""
    settings = settings or Settings.from_env()
    wire.register()
    app = Celery(name, broker=settings.broker_url, include=list(include), task_cls=ChunkTask)
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": min(settings.socket_timeout, 5.0),
    }
    app.conf.update(
        task_serializer=wire.SERIALIZER,
        result_serializer=wire.SERIALIZER,
        accept_content=[wire.SERIALIZER],
        result_accept_content=[wire.SERIALIZER],
        task_default_queue=settings.queue,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=True,
        task_send_sent_event=False,
    )
    app.ocycle_settings = settings
    return app
