"""Every error ocycle_dist raises on purpose.

The tree::

    OcycleError
    ├── ConfigError (ValueError)      a constructor argument is invalid: names the parameter and the value
    ├── FrameError (TypeError)        a frame given to write() does not fit the stream (type, dtype, shape)
    ├── ClosedError (RuntimeError)    write() after close()
    ├── EncodeError (ValueError)      a chunk or a result cannot be put on the wire (no pickle is ever used)
    ├── SpoolError (OSError)          the durable spool cannot keep a chunk (disk full, its file gone for good)
    ├── RemoteTaskError               a remote task failed: carries the remote type name and message
    ├── DeliveryError                 no result came back for a chunk after every attempt
    ├── ExpiredError                  a chunk was not started before its ``expires`` deadline (counted, not failed)
    └── ClaimGoneError (LookupError)  a worker found a claimed chunk gone from Redis: its producer sends it again

Each subclass also derives from the builtin that a caller would catch without knowing this package.
"""

from __future__ import annotations

from typing import Any


class OcycleError(Exception):
    """Base class of every error raised on purpose by ocycle_dist."""


class ConfigError(OcycleError, ValueError):
    """A parameter has an invalid value. The message names the parameter and the value."""

    def __init__(self, param: str, value: Any, expected: str) -> None:
        self.param = param
        self.value = value
        super().__init__(f"{param}={value!r} is invalid: expected {expected}")


class FrameError(OcycleError, TypeError):
    """A frame passed to ``write(data)`` does not fit the stream."""


class ClosedError(OcycleError, RuntimeError):
    """The emitter is closed; call ``open()`` to use it again."""


class EncodeError(OcycleError, ValueError):
    """A value cannot be encoded for the wire."""


class SpoolError(OcycleError, OSError):
    """The durable spool cannot keep a chunk: the disk is full, or its file is gone and cannot be written again.

    The chunk fails with it (``on_error``, ``stats().failed``); the stream goes on.
    """


class RemoteTaskError(OcycleError):
    """A chunk's remote task failed.

    Attributes:
        type_name: the remote exception's class name (e.g. ``"ZeroDivisionError"``).
        message: the remote exception's message.
    """

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}")


class DeliveryError(OcycleError):
    """No result came back for a chunk after every attempt to send it."""


class ExpiredError(OcycleError):
    """A chunk was discarded because no worker started it before its ``expires`` deadline.

    Its outcome is ``expired`` (``stats().expired``), not ``failed``: the policy the caller chose, so that a
    consumer that cannot keep up works on fresh chunks instead of a growing backlog.
    """


class ClaimGoneError(OcycleError, LookupError):
    """A worker found a claimed chunk gone from Redis (evicted by its ``maxmemory-policy``, or past
    ``result_ttl``). Raised on the worker; its producer, told so, sends the chunk again (a loss: it counts against
    ``max_attempts``) rather than failing it."""
