"""A worker's Prometheus endpoint (``OCYCLE_WORKER_METRICS_PORT``; needs ``prometheus-client``, the
``metrics`` extra): what its pool processes did, and the backlog of the queues it consumes.

- ``ocycle_worker_chunks_total{path}``: chunks run, by how they came: ``message`` (a plain task message),
  ``batch`` (a chunk of a batch message), ``drain`` (taken from the queue by a pool process after a short
  chunk, :func:`.drain.drain`).
- ``ocycle_worker_reply_retries_total``: reply writes tried again after a broker error.
- ``ocycle_worker_junk_messages_total{kind}``: messages refused (:mod:`.intake`): not a task message this app can
  take (``not-json``, ``not-an-object``, ``no-headers``, ``bad-properties``, ``bad-base64``, ``content-type``), a task
  it does not have (``unknown-task``), a chunk whose seal fails (``forged``); kept in the dead-letter list.
- ``ocycle_queue_messages{queue}`` and ``ocycle_queue_oldest_age_seconds{queue}`` of the worker's queues
  (:mod:`.backlog`): what an autoscaler scales the workers on.

The counters are counted in the pool processes and served by the worker's main process: prometheus_client's
multiprocess mode, each process writing its counters to a file in ``PROMETHEUS_MULTIPROC_DIR`` (made here
when not set, before the pool starts). Nothing is counted without a port: :func:`count` is then a no-op.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import tempfile
from typing import Any

from celery import signals

log = logging.getLogger("ocycle_dist.worker")

PATHS = ("message", "batch", "drain")
_counters: dict[str, Any] = {}


def count(name: str, n: int = 1, label: str | None = None) -> None:
    """Add ``n`` to the counter ``name`` (``chunks`` with its path, ``reply_retries``, ``junk_messages`` with its
    kind); nothing when the worker serves no metrics."""
    counter = _counters.get(name)
    if counter is not None and n:
        (counter.labels(label) if label else counter).inc(n)


def _make_counters() -> None:
    from prometheus_client import Counter

    _counters["chunks"] = Counter("ocycle_worker_chunks", "chunks run by this worker, by how they came", ["path"])
    for path in PATHS:
        _counters["chunks"].labels(path)
    _counters["reply_retries"] = Counter("ocycle_worker_reply_retries", "reply writes tried again after a broker error")
    _counters["junk_messages"] = Counter(
        "ocycle_worker_junk_messages", "messages refused: not a task message, an unknown task, a failed seal", ["kind"]
    )


def serve(app: Any, port: int, queues: list[str], addr: str = "0.0.0.0") -> Any:  # in its container
    """Serve ``/metrics`` on ``port`` from this (the worker's main) process; returns the HTTP server."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    from .backlog import BacklogCollector
    from .redis_client import connect
    from .settings import app_settings

    settings = app_settings(app)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    clients: list[Any] = []

    def client() -> Any:
        if not clients:
            clients.append(connect(settings.broker_url, socket_timeout=3.0, master_name=settings.sentinel_master))
        return clients[0]

    registry.register(BacklogCollector(client, queues))
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server


@signals.worker_init.connect
def _serve_if_asked(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before the pool processes are forked: set up the counters and the
    endpoint when the app's settings give a port."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    from .settings import app_settings

    port = app_settings(app).worker_metrics_port
    if not port:
        return
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:  # the files of an earlier run of this worker would add to the counts
        for stale in glob.glob(os.path.join(folder, "*.db")):
            os.unlink(stale)
    else:
        folder = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ocycle-metrics-")
    os.makedirs(folder, exist_ok=True)
    try:
        if "prometheus_client.values" in sys.modules:  # imported already (Flower's celery command does): the
            from prometheus_client import values  # kind of value its metrics keep was chosen without the folder

            values.ValueClass = values.get_value_class()
        _make_counters()
        queues = sorted({q.name for q in app.amqp.queues.consume_from.values()} or {app.conf.task_default_queue})
        serve(app, port, queues)
    except ImportError:
        log.warning("worker metrics need prometheus-client: pip install 'ocycle-dist[metrics]'")
        _counters.clear()
        return
    except OSError as exc:
        log.warning("worker metrics: cannot serve on port %s: %s", port, exc)
        return
    log.info("worker metrics on :%s/metrics (queues %s)", port, ",".join(queues))
