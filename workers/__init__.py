"""The Celery worker app: ``celery -A workers worker``. Configured from ``OCYCLE_*`` like the producer."""

from ocycle_dist.worker import make_app

app = make_app(name="workers", include=("workers.tasks",))

__all__ = ["app"]
