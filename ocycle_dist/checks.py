"""What a caller's value must be, one rule per kind: a finite number in a range, a queue name.

The callers raise :class:`~ocycle_dist.errors.ConfigError` naming their parameter and what they expected; these
say whether a value passes, the same way everywhere.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError

QUEUE_MAX = 200  # characters of a queue name


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(value: Any, *, least: float = 0.0, above: float | None = None, below: float = math.inf) -> bool:
    """Whether ``value`` is a finite number (not a bool, not NaN) ``>= least`` (``> above`` when given) and
    ``< below``."""
    if not is_number(value) or not math.isfinite(value) or not value < below:
        return False
    return value > above if above is not None else value >= least


def queue_name(value: Any, param: str = "queue") -> str:
    """``value`` when it is a queue name: 1 to :data:`QUEUE_MAX` characters, no spaces and no commas (a worker's
    ``-Q`` lists them comma-separated); else a ConfigError naming ``param``."""
    if not isinstance(value, str) or not value or len(value) > QUEUE_MAX or any(c.isspace() or c == "," for c in value):
        raise ConfigError(param, value, f"a queue name: 1 to {QUEUE_MAX} characters, no spaces or commas")
    return value
