"""The consumers of ``ocycle-dist stream``: which task gets chunks of how many seconds, on which queue.

Given as ``--consumer task:seconds[:queue[:policy[:expires]]]`` flags (empty fields keep the default, e.g.
``workers.tasks.classify:2:model::6``) or a TOML file (``--config``)::

    [[consumer]]
    task = "workers.tasks.spl"     # a task name registered on the workers
    seconds = 0.5                  # chunk length
    queue = "spl"                  # optional: its Celery queue (default OCYCLE_QUEUE, "celery")
    policy = "drop_oldest"         # optional: block, drop_oldest or drop_newest (BufferEmit's policy)
    expires = 6.0                  # optional: seconds a chunk may wait for a worker, then discarded (counted)
    name = "spl"                   # optional: for messages and the stream id (default: the task's last part)

Without either, the canonical three (:data:`CONSUMERS`), which ``ocycle-dist demo`` runs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..checks import queue_name
from ..errors import ConfigError
from ..inflight import POLICIES

FIELDS = ("task", "seconds", "queue", "policy", "expires", "name")
SPEC = "task:seconds[:queue[:policy[:expires]]]"
MIN_SECONDS = 0.01  # the shortest chunk: each is a task, so at most 100 a second per consumer

CONSUMERS = (  # the canonical three: (name, task, seconds per chunk, queue)
    ("spl", "workers.tasks.spl", 0.5, "spl"),
    ("classify", "workers.tasks.classify", 2.0, "model"),
    ("archive", "workers.tasks.archive_flac", 10.0, "archive"),
)
QUEUES = tuple(dict.fromkeys(queue for *_, queue in CONSUMERS))  # what their workers must consume
MODEL_EXPIRES = 6.0  # seconds: a live model works on fresh chunks; older ones are discarded and counted


@dataclass(frozen=True)
class Consumer:
    """One consumer: chunks of ``seconds`` of audio, each a ``task`` on ``queue``.

    Attributes:
        name: a short name for messages and the stream id.
        task: the Celery task name.
        seconds: chunk length in seconds.
        queue: the Celery queue (None: the settings' default).
        policy: the emitter's overload policy (None: its default, ``drop_oldest`` in the celery mode).
        expires: seconds after emit within which a worker must start the chunk (None: never expires).
    """

    name: str
    task: str
    seconds: float
    queue: str | None = None
    policy: str | None = None
    expires: float | None = None

    def size(self, rate: int) -> int:
        """Samples per chunk at ``rate``; ConfigError when that is less than one."""
        samples = round(self.seconds * rate)
        if samples < 1:
            need = f"at least one sample at {rate} Hz ({1 / rate:g} s), for consumer {self.name}"
            raise ConfigError("seconds", self.seconds, need)
        return samples


def _seconds(param: str, value: Any, *, optional: bool = False, least: float = 0.0) -> float | None:
    if optional and value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        raise ConfigError(param, value, "a number of seconds > 0" + (", or empty" if optional else ""))
    if number < least:
        raise ConfigError(param, value, f"seconds >= {least:g} (each chunk is a task: at most {1 / least:g} a second)")
    return number


def make_consumer(
    task: Any,
    seconds: Any,
    queue: Any = None,
    policy: Any = None,
    expires: Any = None,
    name: Any = None,
) -> Consumer:
    """A checked :class:`Consumer`; raises ConfigError naming the parameter and its value."""
    if not isinstance(task, str) or not task.strip() or any(c.isspace() for c in task):
        raise ConfigError("task", task, "a task name such as workers.tasks.spl")
    secs = _seconds("seconds", seconds, least=MIN_SECONDS)
    assert secs is not None
    queue = None if queue in ("", None) else queue_name(queue)
    if policy in ("", None):
        policy = None
    elif policy not in POLICIES:
        raise ConfigError("policy", policy, f"one of {', '.join(POLICIES)}, or empty")
    if name in ("", None):
        name = task.rsplit(".", 1)[-1]
    elif not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError("name", name, "letters, digits, '-' and '_'")
    return Consumer(name, task, secs, queue, policy, _seconds("expires", expires, optional=True))


def parse_consumer(spec: str) -> Consumer:
    """A consumer from ``task:seconds[:queue[:policy[:expires]]]``."""
    parts = spec.split(":")
    if len(parts) < 2 or len(parts) > 5:
        raise ConfigError("consumer", spec, SPEC)
    return make_consumer(*parts)


def load_config(path: str | Path) -> list[Consumer]:
    """The consumers of a TOML file's ``[[consumer]]`` tables."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("config", str(path), f"a readable TOML file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"a valid TOML file ({exc})") from None
    unknown = sorted(set(data) - {"consumer"})
    if unknown:
        raise ConfigError("config", str(path), f"only [[consumer]] tables, not {', '.join(unknown)}")
    tables = data.get("consumer")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("config", str(path), "at least one [[consumer]] table")
    consumers = []
    for table in tables:
        extra = sorted(set(table) - set(FIELDS))
        if extra:
            raise ConfigError("consumer", table, f"keys among {', '.join(FIELDS)} (not {', '.join(extra)})")
        missing = [key for key in ("task", "seconds") if key not in table]
        if missing:
            raise ConfigError("consumer", table, f"a table with {' and '.join(missing)}")
        consumers.append(make_consumer(**table))
    return unique_names(consumers)


def unique_names(consumers: Iterable[Consumer]) -> list[Consumer]:
    """The consumers, a second one of a name renamed ``name-2`` (and so on): names make the stream ids."""
    seen: dict[str, int] = {}
    out = []
    for c in consumers:
        seen[c.name] = seen.get(c.name, 0) + 1
        out.append(c if seen[c.name] == 1 else replace(c, name=f"{c.name}-{seen[c.name]}"))
    return out


def default_consumers() -> list[Consumer]:
    """The canonical three: SPL every 0.5 s (queue ``spl``), the model every 2 s (queue ``model``, chunks
    expire after ``MODEL_EXPIRES``), a FLAC archive every 10 s (queue ``archive``)."""
    return [
        Consumer(name, task, secs, queue, None, MODEL_EXPIRES if queue == "model" else None)
        for name, task, secs, queue in CONSUMERS
    ]


def describe(kind: str, result: Any) -> str:
    """One line for a result of one of the canonical tasks (``spl``, ``classify``, ``archive``)."""
    if kind == "spl":
        return f"{result['dbfs']:7.1f} dBFS  ({result['db_spl']:.1f} dB SPL)"
    if kind == "classify":
        return f"{result['label']:<8} p={result['scores'][result['label']]:.2f}"
    seconds = result["frames"] / result.get("rate", 1)
    again = ", written before: kept" if result.get("existed") else ""
    return f"{result['path']} ({result['bytes']:,} bytes, {seconds:.1f} s{again})"
