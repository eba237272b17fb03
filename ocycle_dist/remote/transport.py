"""kombu's Redis transport and Celery's consumer, repaired: a worker survives its broker dying under it and
junk on its queues.

:class:`RedisChannel` and :class:`SentinelChannel` close cleanly after a lost connection and check each message
before kombu decodes it (:mod:`.intake`); :class:`RedisQoS` refuses junk in kombu's ``unacked`` hash;
:class:`Consumer` reconnects within a second and answers a task it does not have. :func:`register_transports`
makes the broker URLs' schemes use them.
"""

from __future__ import annotations

import functools
import json
import logging
from queue import Empty
from typing import Any

from celery import signals
from celery.app.task import Context
from celery.exceptions import NotRegistered
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis

from .intake import NOT_JSON, UNKNOWN_TASK, JunkError, check, refuse
from .runner import broker_client

log = logging.getLogger("ocycle_dist.worker")


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
        refuse(broker_client(self.app), raw,
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
