r"""The worker side: a Celery app set up for ocycle_dist (:func:`make_app`).

Its tasks are :class:`.task.ChunkTask`\ s (the claim check fetched, the size checked, ``meta``; the queue drained
after a short chunk: :mod:`.drain`), plus the batch task (:mod:`.batch`); its result backend,
:class:`.backend.ReplyBackend`, RPUSHes ``{id, ok, result | error}`` to the producer's reply list however the
task ended, where the producer's listener picks it up. With a reply secret, a chunk runs only if its message's
seal checks out (:mod:`.intake`). Its Redis transport is kombu's, repaired (:mod:`.transport`), so that a worker
survives its broker dying under it and junk on its queues. A worker refuses to start on a Redis that may evict
its queues (:func:`.redis_client.check_policy`).
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from celery import Celery, signals
from celery.exceptions import CPendingDeprecationWarning

from ..errors import ConfigError
from . import wire
from .backend import ReplyBackend
from .batch import run_batch
from .lease import install_lease
from .protocol import BATCH_TASK
from .redis_client import check_policy, connect, is_sentinel, kombu_url, sentinel_hosts
from .runner import broker_client, payload_size
from .settings import Settings, app_settings
from .task import ChunkTask
from .transport import RedisChannel, register_transports

log = logging.getLogger("ocycle_dist.worker")

__all__ = ["ChunkTask", "RedisChannel", "ReplyBackend", "make_app", "payload_size"]


def _only_declared_tasks(sender: Any, **kwargs: Any) -> None:
    """Unregister Celery's built-in tasks (``celery.map``, ``celery.accumulate``...): the app runs only the
    tasks it declares, whatever a message names."""
    for name in [n for n in sender.tasks if n.startswith("celery.")]:
        sender.tasks.unregister(name)


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
        result_backend="ocycle_dist.remote.backend:ReplyBackend",
        task_ignore_result=False,
        task_store_errors_even_if_ignored=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.worker_prefetch,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_consumer="ocycle_dist.remote.transport:Consumer",  # reconnects within a second (RECONNECT_EVERY)
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
        run_batch(self, items, broker_client(self.app), app_settings(self.app))

    install_lease(app)  # the worker's lease: its chunks are sent again within seconds if it dies
    return app
