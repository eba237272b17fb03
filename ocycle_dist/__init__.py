"""ocycle_dist: re-chunk a stream and run a job on every chunk, locally or on Celery workers.

A drop-in for ocycle 0.1.0: ``import ocycle_dist as ocycle``.
"""

from .batched import batched
from .bufferio import ListIO, NumpyIO
from .chunk import Chunk
from .emit import POLICIES, BufferEmit, ListEmit, NumpyEmit
from .errors import (
    ClosedError,
    ConfigError,
    DeliveryError,
    EncodeError,
    ExpiredError,
    FrameError,
    OcycleError,
    RemoteTaskError,
    SpoolError,
)
from .executors import EXECUTORS, SerialExecutor
from .stats import Stats
from .tap import Tap

__version__ = "0.2.0"

SERIAL, THREAD, PROCESS, CELERY = "serial", "thread", "process", "celery"

__all__ = [
    "CELERY",
    "EXECUTORS",
    "POLICIES",
    "PROCESS",
    "SERIAL",
    "THREAD",
    "BufferEmit",
    "Chunk",
    "ClosedError",
    "ConfigError",
    "DeliveryError",
    "EncodeError",
    "ExpiredError",
    "FrameError",
    "ListEmit",
    "ListIO",
    "NumpyEmit",
    "NumpyIO",
    "OcycleError",
    "RemoteTaskError",
    "SerialExecutor",
    "SpoolError",
    "Stats",
    "Tap",
    "__version__",
    "batched",
]
