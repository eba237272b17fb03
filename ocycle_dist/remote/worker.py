"""The worker side: a Celery app set up for ocycle_dist, and the base class of chunk tasks.

A chunk's task message names the producer's reply list in ``reply_to`` and carries the chunk's metadata
in a header ``ocycle``. :class:`ChunkTask` fetches a claimed chunk from Redis before the task runs;
:class:`ReplyBackend`, the app's result backend, RPUSHes ``{id, ok, result | error}`` to the reply list
however the task ended, where the producer's listener picks it up. Tasks stay plain functions of
``(chunk, t0)``, given ``meta=Chunk(...)`` too when they have a ``meta`` parameter. Both sides accept only
the msgpack content type: a pickle message is refused unread.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

from celery import Celery, Task, states
from celery.backends.base import DisabledBackend
from celery.exceptions import TaskRevokedError

from ..chunk import Chunk
from ..errors import EncodeError
from . import wire
from .batch import describe, drain, encode_record, run_batch
from .lease import install_lease
from .protocol import (
    BATCH_HEADER,
    BATCH_TASK,
    META_HEADER,
    claim_key,
    is_reply_key,
    mac_key,
    reply_error,
    reply_expired,
    reply_key,
    reply_ok,
    token_of,
)
from .redis_client import connect, kombu_url
from .settings import Settings, app_settings

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
    """Base class of the tasks of an app made by :func:`make_app`.

    After a chunk message has run (and its reply is sent), the pool process takes what else waits on its
    queue and runs it in the same call (:func:`.batch.drain`).
    """

    _started = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._started = time.monotonic()
        if args and isinstance(args[0], wire.Claim):
            if args[0].key != claim_key(str(self.request.id)):  # only this task's own chunk, nothing else
                raise EncodeError(f"claim check {args[0].key[:80]!r} is not this task's chunk: refused")
            raw = _client(self.app.conf.broker_url).get(args[0].key)
            if raw is None:
                raise LookupError(f"chunk {args[0].key} is no longer in Redis (expired or never stored)")
            args = (wire.loads(raw), *args[1:])
        info = self.request.get(META_HEADER)
        if info and args:
            limit = app_settings(self.app).max_chunk_bytes
            if payload_size(args[0]) > limit:
                raise EncodeError(f"chunk of {payload_size(args[0])} bytes exceeds max_chunk_bytes={limit}")
            if "meta" in inspect.signature(self.run).parameters:
                kwargs["meta"] = Chunk(**{f: info[f] for f in Chunk._fields})
        return super().__call__(*args, **kwargs)

    def after_return(self, status: Any, retval: Any, task_id: Any, args: Any, kwargs: Any, einfo: Any) -> None:
        """Called by Celery's tracer in the pool process once the outcome is stored: drain the queue."""
        if self.request.get(META_HEADER) is None and self.name != BATCH_TASK:
            return  # not a chunk message (e.g. called directly)
        try:
            settings = app_settings(self.app)
            drain(self, _client(self.app.conf.broker_url), settings, time.monotonic() - self._started)
        except Exception:  # the taken messages are recorded as delivered: their producers send them again
            log.exception("draining the queue after task %s failed", task_id)


_describe = describe


class ReplyBackend(DisabledBackend):  # type: ignore[misc]
    """A Celery result backend that RPUSHes each task's outcome to the reply list named in its message.

    Celery calls it for every way a task ends: returned, raised, killed by its hard time limit, and even
    for a task name the worker does not know, so the producer hears of each. Messages without an ocycle
    reply list (plain ``apply_async``) are not stored: results of this app go to producers only.
    """

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        reply = getattr(request, "reply_to", None)
        if not isinstance(reply, str) or not is_reply_key(reply):
            return result
        batch = getattr(request, BATCH_HEADER, None)
        if batch:  # a batch message: its chunks were answered one by one; a failure of the whole fails the rest
            if state in (states.FAILURE, states.REVOKED):
                self._fail_batch(batch, result, token_of(reply))
            return result
        if state == states.SUCCESS:
            record = reply_ok(task_id, result)
        elif state == states.REVOKED and isinstance(result, TaskRevokedError) and str(result) == "expired":
            record = reply_expired(task_id)  # not started before its `expires` header: discarded unread
        elif state in (states.FAILURE, states.REVOKED):
            record = reply_error(task_id, type(result).__name__, _describe(result))
        else:  # STARTED, RETRY: not an outcome
            return result
        settings = app_settings(self.app)
        data = encode_record(record, mac_key(settings.reply_secret, token_of(reply)))
        pipe = _client(self.app.conf.broker_url).pipeline(transaction=False)
        pipe.rpush(reply, data)
        pipe.expire(reply, max(1, int(settings.result_ttl)))
        pipe.execute()
        return result

    def _fail_batch(self, batch: list[Any], exc: Any, token: str) -> None:
        """Every chunk of a failed batch message fails with its error (those already answered keep their first
        outcome: the producer ignores a second reply)."""
        settings = app_settings(self.app)
        mac = mac_key(settings.reply_secret, token)
        pipe = _client(self.app.conf.broker_url).pipeline(transaction=False)
        for task_id, stream in batch:
            key = reply_key(str(stream), token)
            pipe.rpush(key, encode_record(reply_error(str(task_id), type(exc).__name__, _describe(exc)), mac))
            pipe.expire(key, max(1, int(settings.result_ttl)))
        pipe.execute()


def _only_declared_tasks(sender: Any, **kwargs: Any) -> None:
    """Unregister Celery's built-in tasks (``celery.map``, ``celery.accumulate``...): the app runs only the
    tasks it declares, whatever a message names."""
    for name in [n for n in sender.tasks if n.startswith("celery.")]:
        sender.tasks.unregister(name)


def make_app(settings: Settings | None = None, *, name: str = "ocycle", include: tuple[str, ...] = ()) -> Celery:
    """A Celery app for ocycle_dist: msgpack only, results to the producers' reply lists, late acks."""
    settings = settings or Settings.from_env()
    wire.register()
    # kombu's Redis transport spells a Unix socket redis+socket://: the same unix:// URL serves both sides
    app = Celery(name, broker=kombu_url(settings.broker_url), include=list(include), task_cls=ChunkTask)
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
        result_backend="ocycle_dist.remote.worker:ReplyBackend",
        task_ignore_result=False,
        task_store_errors_even_if_ignored=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.worker_prefetch,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=False,  # events cost the worker ~30% (measured); `celery worker -E` turns them on
        task_send_sent_event=False,
    )
    app.conf.ocycle_settings = settings
    wire.set_limits(max_bytes=settings.max_chunk_bytes + 64 * 1024)  # decoding refuses more, unread
    app.on_after_finalize.connect(_only_declared_tasks, weak=False)

    @app.task(name=BATCH_TASK, bind=True, shared=False)  # type: ignore[untyped-decorator]
    def batch(self: Any, items: list[list[Any]]) -> None:
        """Run the chunks of a batch message, each with its own outcome (see :mod:`.batch`)."""
        run_batch(self, items, _client(self.app.conf.broker_url), app_settings(self.app))

    install_lease(app)  # the worker's lease: its chunks are sent again within seconds if it dies
    return app
