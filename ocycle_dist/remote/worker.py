"""The worker side: a Celery app set up for ocycle_dist, and the base class of chunk tasks.

A chunk's task message names the producer's reply list in ``reply_to`` and carries the chunk's metadata
in a header ``ocycle``. :class:`ChunkTask` fetches a claimed chunk from Redis before the task runs;
:class:`ReplyBackend`, the app's result backend, RPUSHes ``{id, ok, result | error}`` to the reply list
however the task ended, where the producer's listener picks it up. Tasks stay plain functions of
``(chunk, t0)``, given ``meta=Chunk(...)`` too when they have a ``meta`` parameter. Both sides accept only
the msgpack content type: a pickle message is refused unread. With a reply secret, a chunk runs only if its
message's seal checks out (:mod:`.intake`).

The app's Redis transport is kombu's with two repairs (:class:`RedisChannel`), so that a worker survives its
broker dying under it (see :func:`register_transports`) and junk on its queues (:mod:`.intake`). A worker refuses
to start on a Redis that may evict its queues (:func:`.redis_client.check_policy`).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
import warnings
from queue import Empty
from typing import Any

import redis
from celery import Celery, Task, signals, states
from celery.app.task import Context
from celery.backends.base import DisabledBackend
from celery.exceptions import CPendingDeprecationWarning, NotRegistered, TaskRevokedError
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis

from ..errors import ClaimGoneError, ConfigError, EncodeError
from . import wire
from .batch import chunk_kwargs, describe, drain, payload_size, run_batch
from .intake import NOT_JSON, UNKNOWN_TASK, JunkError, check, refuse, sealed_items
from .lease import install_lease
from .protocol import (
    BATCH_HEADER,
    BATCH_TASK,
    META_HEADER,
    SEAL_HEADER,
    claim_key,
    is_reply_key,
    reply_error,
    reply_expired,
    reply_ok,
)
from .redis_client import TRANSIENT, check_policy, classify, connect, is_sentinel, kombu_url, reason, sentinel_hosts
from .replies import ReplyWriter, is_bound
from .settings import Settings, app_settings
from .worker_metrics import count

log = logging.getLogger("ocycle_dist.worker")
_clients: dict[str, Any] = {}


def _client(url: str, master_name: str | None = None) -> Any:
    if url not in _clients:
        _clients[url] = connect(url, master_name=master_name)
    return _clients[url]


__all__ = ["ChunkTask", "ReplyBackend", "make_app", "payload_size"]


class ChunkTask(Task):  # type: ignore[misc]
    """Base class of the tasks of an app made by :func:`make_app`.

    After a chunk message has run (and its reply is sent), the pool process takes what else waits on its
    queue and runs it in the same call (:func:`.batch.drain`).
    """

    _started = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._started = time.monotonic()
        if args and not self._sealed(args):
            self.request.reply_to = None  # refused: nothing is replied to the list it names
            return None
        if args and isinstance(args[0], wire.Claim):
            if args[0].key != claim_key(str(self.request.id)):  # only this task's own chunk, nothing else
                raise EncodeError(f"claim check {args[0].key[:80]!r} is not this task's chunk: refused")
            raw = _client(self.app.conf.broker_url, app_settings(self.app).sentinel_master).get(args[0].key)
            if raw is None:
                raise ClaimGoneError(f"chunk {args[0].key} is no longer in Redis (evicted, expired or never stored)")
            args = (wire.claimed(args[0], raw), *args[1:])
        if args:
            kwargs.update(chunk_kwargs(self, args[0], self.request.get(META_HEADER), self._ocycle_limit()))
        return super().__call__(*args, **kwargs)

    _ocycle_call = __call__  # batch._call runs a chunk of a task whose class keeps this __call__ without it

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
        client = _client(self.app.conf.broker_url, settings.sentinel_master)
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
            drain(
                self,
                _client(self.app.conf.broker_url, settings.sentinel_master),
                settings,
                time.monotonic() - self._started,
            )
        except Exception as exc:  # the taken messages are recorded as delivered: their producers send them again
            if classify(exc) == TRANSIENT and isinstance(exc, (redis.RedisError, OSError)):
                log.warning("not draining after task %s: Redis is away (%s)", task_id, reason(exc))
            else:
                log.exception("draining the queue after task %s failed", task_id)


_describe = describe


class ReplyBackend(DisabledBackend):  # type: ignore[misc]
    """A Celery result backend that RPUSHes each task's outcome to the reply list named in its message.

    Celery calls it for every way a task ends: returned, raised, killed by its hard time limit, and even
    for a task name the worker does not know, so the producer hears of each. Messages without an ocycle
    reply list (plain ``apply_async``) are not stored: results of this app go to producers only. A reply that
    cannot be written (Redis away) is retried, then left to the producer's recovery (:mod:`.replies`): it
    never raises, so Celery never turns it into a failed task.
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
                self._fail_batch(batch, result, reply)
            return result
        if state == states.SUCCESS:
            record = reply_ok(task_id, result)
        elif state == states.REVOKED and isinstance(result, TaskRevokedError) and str(result) == "expired":
            record = reply_expired(task_id)  # not started before its `expires` header: discarded unread
        elif state in (states.FAILURE, states.REVOKED):
            record = reply_error(task_id, type(result).__name__, _describe(result))
        else:  # STARTED, RETRY: not an outcome
            return result
        writer = self._writer()
        writer.add(reply, record)
        writer.send()
        return result

    def _writer(self) -> ReplyWriter:
        settings = app_settings(self.app)
        client = _client(self.app.conf.broker_url, settings.sentinel_master)
        return ReplyWriter(client, settings.result_ttl, settings.reply_secret)

    def _fail_batch(self, batch: list[Any], exc: Any, reply: str) -> None:
        """Every chunk of a failed batch message (its time limit) fails with its error (those already answered
        keep their first outcome: the producer ignores a second reply)."""
        writer = self._writer()
        for task_id, _stream in batch:
            writer.add(reply, reply_error(str(task_id), type(exc).__name__, _describe(exc)))
        writer.send()


def _only_declared_tasks(sender: Any, **kwargs: Any) -> None:
    """Unregister Celery's built-in tasks (``celery.map``, ``celery.accumulate``...): the app runs only the
    tasks it declares, whatever a message names."""
    for name in [n for n in sender.tasks if n.startswith("celery.")]:
        sender.tasks.unregister(name)


# ---- the broker transport ---------------------------------------------------------------------------------


class _ClosingChannel:
    """What :class:`RedisChannel` and :class:`SentinelChannel` add to kombu's Redis channels.

    On a lost broker connection Celery 5.7 (``Consumer.on_connection_error_after_connected``) first collects
    the connection, then closes it. Collecting closes the task channel: kombu first reads the channel's
    pending BRPOP, which fails on the dead socket, and the rest of ``close()`` is skipped: the channel stays
    open with its unacknowledged messages while the transport is detached (``transport.client = None``).
    Closing the connection then closes that channel again, and restoring its unacknowledged messages builds
    a Redis pool from ``transport.client.hostname``: ``AttributeError``, which is not a connection error, so
    it escapes Celery's ``ignore_errors`` and the worker exits with "Unrecoverable error: AttributeError
    'NoneType' object has no attribute 'hostname'". A worker holding a late-ack task with prefetch room
    left (so a BRPOP is pending) dies that way whenever Redis goes away, whatever
    ``worker_cancel_long_running_tasks_on_connection_loss`` says; so does a task acked through the old channel.

    Here ``close()`` finishes after a failed BRPOP read (the unacknowledged messages are restored while the
    transport is still attached, if Redis answers), and a channel whose transport is detached raises a
    connection error instead of ``AttributeError``: Celery logs it ("Couldn't ack") and reconnects.
    """

    closed: bool
    connection: Any  # the transport
    connection_errors: tuple[type[BaseException], ...]
    client: Any
    sep: str
    _queue_cycle: Any
    _in_poll: Any

    def _brpop_read(self, **options: Any) -> bool:
        """kombu's, with each message checked before kombu decodes it: junk is refused (:mod:`.intake`), kept
        for inspection, and the worker serves on (kombu's raised out of the worker's loop: it exited)."""
        try:
            try:
                got = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next round reconnects
                raise
            if not got:
                raise Empty()
            dest, item = got
            queue = (dest.decode() if isinstance(dest, bytes) else str(dest)).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            try:
                message = check(item, task_queue=not queue.endswith(".pidbox"))
            except JunkError as junk:
                with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
                    refuse(client, item, junk, queue)
                return True
            self.connection._deliver(message, queue)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.6
            if flush is not None:
                flush()

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        except self.connection_errors:
            if self.closed:
                raise
            super().close()  # type: ignore[misc]  # the pending BRPOP is gone: restore, release the pools

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            import redis

            raise redis.ConnectionError("the broker connection of this channel is closed")
        return super()._connparams(asynchronous)  # type: ignore[misc]


class RedisQoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's bookkeeping of unacknowledged deliveries, which refuses junk in its ``unacked`` hash (anyone who can
    write the hash can put it there) rather than raising out of the worker's loop when it restores it."""

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        try:
            super().restore_by_tag(tag, client, leftmost)
        except (ValueError, TypeError) as exc:  # the entry is not [message, exchange, routing key] in JSON
            with self.channel.conn_or_acquire(client) as conn:
                raw = conn.hget(self.unacked_key, tag)
                self._remove_from_indices(tag).execute()
                junk = JunkError(NOT_JSON, f"an unacknowledged delivery that cannot be restored ({exc})")
                refuse(conn, raw, junk, None)


class RedisChannel(_ClosingChannel, kombu_redis.Channel):
    """kombu's Redis channel that survives the loss of its connection (:class:`_ClosingChannel`) and junk on its
    queues."""

    QoS = RedisQoS


class SentinelChannel(_ClosingChannel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel that survives the loss of its connection (:class:`_ClosingChannel`) and junk on its
    queues."""

    QoS = RedisQoS


RECONNECT_EVERY = (0.2, 0.2, 1.0)  # seconds: the first retry, the step, the most between two (Celery's: 2, 2, 30)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, reconnecting to a lost broker within a second of its return (or of Sentinel naming a
    promoted master), rather than on Celery's back-off of 2, 4, 6... seconds: a worker away from a broker that is
    back runs nothing, and what it held waits meanwhile."""

    def ensure_connected(self, conn: Any) -> Any:
        start, step, most = RECONNECT_EVERY
        conn.ensure_connection = functools.partial(
            conn.ensure_connection, interval_start=start, interval_step=step, interval_max=most
        )
        return super().ensure_connected(conn)

    def on_unknown_task(self, body: Any, message: Any, exc: Any) -> None:
        """A task this worker does not have: answered ``NotRegistered`` (its producer hears of it; one without the
        batch task sends those chunks one message each), and refused as junk (:mod:`.intake`): logged once, not
        with a traceback per message, counted, kept."""
        headers = message.headers or {}
        name, task_id = headers.get("task"), headers.get("id")
        queue = (message.delivery_info or {}).get("routing_key")
        raw = json.dumps(getattr(message, "_raw", None) or {"headers": headers}, default=repr)
        settings = app_settings(self.app)
        refuse(_client(self.app.conf.broker_url, settings.sentinel_master), raw,
               JunkError(UNKNOWN_TASK, f"task {str(name)[:100]!r} is not registered here"), queue)  # fmt: skip
        message.reject_log_error(log, self.connection_errors)
        self.app.backend.mark_as_failure(
            task_id, NotRegistered(name), request=Context(
                task=name, id=task_id, reply_to=message.properties.get("reply_to"), root_id=headers.get("root_id"),
                correlation_id=message.properties.get("correlation_id"), chord=None, errbacks=None,
            ),
        )  # fmt: skip
        if self.event_dispatcher:
            self.event_dispatcher.send("task-failed", uuid=task_id, exception=f"NotRegistered({name!r})")
        signals.task_unknown.send(sender=self, message=message, exc=exc, name=name, id=task_id)


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def register_transports() -> None:
    """Make ``redis://``, ``rediss://`` and ``sentinel://`` broker URLs use this module's transports.

    By URL scheme rather than with Celery's ``broker_transport``: kombu switches a connection with several
    URLs (Sentinel's ``sentinel://a;sentinel://b``) to the next one by its scheme when a connect fails.
    """
    from kombu import transport

    for scheme, cls in (("redis", RedisTransport), ("rediss", RedisTransport), ("sentinel", SentinelTransport)):
        transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{cls.__name__}"
        cache = getattr(transport, "_transport_cache", {})
        if cache.get(scheme) not in (None, cls):  # resolved before this ran: forget kombu's class
            del cache[scheme]


EX_CONFIG = 78  # a worker refusing to start: its configuration cannot work (sysexits.h)


@signals.celeryd_after_setup.connect
def _refuse_an_evicting_broker(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """At a worker's start: read its broker's ``maxmemory-policy``; one that may evict any key (the queues too) makes
    the worker exit (code 78) naming the policy and the fix, unless ``allow_eviction``; one that may evict the keys
    with a time to live is said (:func:`.redis_client.check_policy`). A broker away is not checked (it may come)."""
    settings = getattr(getattr(instance, "app", None), "conf", {}).get("ocycle_settings")
    if not isinstance(settings, Settings):
        return
    client = connect(settings.broker_url, socket_timeout=2.0, master_name=settings.sentinel_master)
    try:
        memory = client.info("memory")
    except Exception as exc:  # away, or an ACL without +info
        log.warning("could not read the broker's maxmemory-policy at start (%s): not checked", exc)
        return
    finally:
        client.close()
    try:
        said = check_policy(
            memory.get("maxmemory_policy"), memory.get("maxmemory_human"), settings.broker_url, settings.allow_eviction
        )
    except ConfigError as exc:
        print(f"worker {sender}: refusing to start: {exc}", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(EX_CONFIG) from None
    if said is not None:
        log.warning("%s", said)


@signals.celeryd_after_setup.connect
def _quiet_the_cancel_notice(**_: Any) -> None:
    """A worker warns on every reconnect that the default of ``worker_cancel_long_running_tasks_on_connection_loss``
    (set explicitly by :func:`make_app`) changes in Celery 6; its logging setup has just turned such warnings on."""
    warnings.filterwarnings("ignore", category=CPendingDeprecationWarning, module=r"celery\.worker\.consumer")


def make_app(settings: Settings | None = None, *, name: str = "ocycle", include: tuple[str, ...] = ()) -> Celery:
    """A Celery app for ocycle_dist: msgpack only, results to the producers' reply lists, late acks."""
    settings = settings or Settings.from_env()
    wire.register()
    register_transports()
    # kombu's Redis transport spells a Unix socket redis+socket://: the same unix:// URL serves both sides
    app = Celery(name, broker=kombu_url(settings.broker_url), include=list(include), task_cls=ChunkTask)
    transport: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": min(settings.socket_timeout, 5.0),
    }
    if is_sentinel(settings.broker_url):
        sentinel_hosts(settings.broker_url)  # a ConfigError now rather than a worker retrying forever
        transport["master_name"] = settings.sentinel_master
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
        worker_consumer=f"{__name__}:Consumer",  # reconnects within a second (RECONNECT_EVERY)
        # A task running when Redis goes away finishes and replies (its reply list does not need the lost
        # connection); cancelling it kills its pool process, and the worker then runs nothing until Celery's
        # pool maintenance replaces it (up to 5 s), which makes a recovery slower.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,  # events cost the worker throughput; `celery worker -E` turns them on
        task_send_sent_event=False,
    )
    app.conf.ocycle_settings = settings
    wire.set_limits(max_bytes=settings.max_chunk_bytes + 64 * 1024)  # decoding refuses more, unread
    app.on_after_finalize.connect(_only_declared_tasks, weak=False)

    @app.task(name=BATCH_TASK, bind=True, shared=False)  # type: ignore[untyped-decorator]
    def batch(self: Any, items: list[list[Any]]) -> None:
        """Run the chunks of a batch message, each with its own outcome (see :mod:`.batch`)."""
        settings = app_settings(self.app)
        run_batch(self, items, _client(self.app.conf.broker_url, settings.sentinel_master), settings)

    install_lease(app)  # the worker's lease: its chunks are sent again within seconds if it dies
    return app
