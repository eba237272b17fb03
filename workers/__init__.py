"""The Celery worker app: ``celery -A workers worker``. Configured from ``OCYCLE_*`` like the producer."""

from ocycle_dist.remote.worker import make_app

from .settings import AppSettings

app = make_app(name="workers", include=("workers.tasks",))
settings = AppSettings.from_env()

__all__ = ["AppSettings", "app", "settings"]
