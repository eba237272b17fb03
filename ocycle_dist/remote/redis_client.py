"""Redis clients built from a URL with the project's timeouts (password and TLS come from the URL).

One URL configures the producer and the workers, in either spelling of a Unix socket: redis-py's
``unix://[:password@]/path/redis.sock?db=0`` or kombu's ``redis+socket://[:password@]/path/redis.sock?virtual_host=0``.
:func:`connect` (redis-py) takes both; :func:`kombu_url` gives Celery the one its Redis transport knows.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..errors import ConfigError

SCHEMES = ("redis://", "rediss://", "unix://", "redis+socket://")


def _respell(url: str, scheme: str, db_from: str, db_to: str) -> str:
    """``url`` with ``scheme`` and its database query parameter renamed from ``db_from`` to ``db_to``."""
    parts = urlsplit(url)
    query = urlencode([(db_to if k == db_from else k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return f"{scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")  # keeps // before the path


def kombu_url(url: str) -> str:
    """``url`` as kombu's Redis transport spells it: ``unix://`` becomes ``redis+socket://`` (``db`` its
    ``virtual_host``); other URLs are returned as they are."""
    if isinstance(url, str) and url.startswith("unix://"):
        return _respell(url, "redis+socket", "db", "virtual_host")
    return url


def redis_py_url(url: str) -> str:
    """``url`` as redis-py spells it: ``redis+socket://`` becomes ``unix://`` (``virtual_host`` its ``db``)."""
    if isinstance(url, str) and url.startswith("redis+socket://"):
        return _respell(url, "unix", "virtual_host", "db")
    return url


def connect(url: str, *, socket_timeout: float = 10.0) -> Any:
    """A ``redis.Redis`` for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://`` or ``redis+socket://``
    for a Unix socket); lazy, no I/O yet."""
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("mode='celery' needs redis-py: pip install 'ocycle-dist[celery]'") from None
    if not isinstance(url, str) or not url.startswith(SCHEMES):
        raise ConfigError("broker", url, "a redis://, rediss:// or unix:// URL")
    try:
        return redis.Redis.from_url(
            redis_py_url(url),
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 5.0),
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigError("broker", url, f"a valid Redis URL ({exc})") from None


def reachable(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    client = None
    try:
        client = connect(url, socket_timeout=timeout)
        return bool(client.ping())
    except Exception:
        return False
    finally:
        if client is not None:
            client.close()
