"""Celery configuration read by Flower only: ``celery -A workers --config workers.flower_config flower``.

Flower's Broker page lists the queues the workers it has seen consume, and before it has seen any (it starts
before them), the app's ``task_queues``: here every queue of the deployment (the default one and the demo's
``spl``, ``model``, ``archive``), so that a backlog shows from the start. Not set on the workers' app itself:
a worker started without ``-Q`` would then consume them all.
"""

from kombu import Queue

from ocycle_dist.app.consumers import QUEUES
from ocycle_dist.remote.settings import Settings

task_queues = [Queue(name) for name in dict.fromkeys((Settings.from_env().queue, *QUEUES))]
