"""The Celery worker app: ``celery -A workers worker``. Configured from ``OCYCLE_*`` like the producer.

A worker consuming the archive's queue (:data:`ARCHIVE_QUEUE`) checks at start that the archive has recipients to
encrypt to (``OCYCLE_ARCHIVE_RECIPIENTS``) or was explicitly made unencrypted (``OCYCLE_ARCHIVE_PLAINTEXT=1``), and
refuses to start otherwise, saying which setting is missing or wrong.
"""

import sys
from typing import Any

from celery.signals import celeryd_after_setup

from ocycle_dist.errors import ConfigError
from ocycle_dist.remote.worker import make_app

from .settings import AppSettings

ARCHIVE_QUEUE = "archive"  # the queue of workers.tasks.archive_flac's chunks (ocycle_dist.app.consumers.CONSUMERS)

app = make_app(name="workers", include=("workers.tasks",))
settings = AppSettings.from_env()


@celeryd_after_setup.connect
def check_archive_settings(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    """At a worker's start: one consuming :data:`ARCHIVE_QUEUE` exits (code 78, EX_CONFIG) when the archive's
    settings would make it refuse every chunk."""
    if instance is None or instance.app is not app or ARCHIVE_QUEUE not in instance.app.amqp.queues.consume_from:
        return
    from ocycle_dist.archive.keys import archive_keys

    try:
        archive_keys(settings.archive_recipients, settings.archive_plaintext)
    except ConfigError as exc:
        print(f"worker {sender}: refusing to start: it consumes queue {ARCHIVE_QUEUE!r} and {exc}", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(78) from None


__all__ = ["ARCHIVE_QUEUE", "AppSettings", "app", "settings"]
