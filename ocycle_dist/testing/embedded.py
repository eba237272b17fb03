"""An embedded broker and worker, in this process: for the demo when no Redis is reachable.

The broker is fakeredis's TCP server on a free loopback port; the worker is a Celery worker of the
``workers`` app with the solo pool, in a thread. Real enough to run the same code path end to end, not
made for load: use a real redis-server and ``celery worker`` processes for that.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

from ..remote.settings import app_settings
from .ports import free_port


@contextmanager
def embedded_broker(port: int | None = None) -> Iterator[str]:
    """Serve a fakeredis TCP server on ``port`` (a free loopback port by default); yields its URL."""
    from fakeredis import TcpFakeServer

    if port is None:
        port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, name="ocycle-embedded-redis", daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def embedded_worker(app: Any, url: str, queues: tuple[str, ...] = ()) -> Iterator[Any]:
    """Run a Celery worker of ``app`` against ``url`` in a thread of this process (consuming ``queues`` too)."""
    from celery.contrib.testing.worker import start_worker

    app.conf.broker_url = url
    for name in ("celery", "kombu"):  # fakeredis's server drops a connection at start and at stop: benign here
        logging.getLogger(name).setLevel(logging.CRITICAL)
    app.conf.ocycle_settings = replace(app_settings(app), broker_url=url)
    with start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        shutdown_timeout=10.0,
        loglevel="WARNING",
        queues=[app.conf.task_default_queue, *queues],
    ) as w:
        yield w


@contextmanager
def embedded(app: Any, queues: tuple[str, ...] = ()) -> Iterator[str]:
    """An embedded broker with a worker of ``app`` on it (consuming ``queues`` too); yields the broker URL."""
    with ExitStack() as stack:
        url = stack.enter_context(embedded_broker())
        stack.enter_context(embedded_worker(app, url, queues))
        yield url
