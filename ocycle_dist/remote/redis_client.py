"""Redis clients built from a URL with the project's timeouts (password and TLS come from the URL)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def connect(url: str, *, socket_timeout: float = 10.0) -> Any:
    """A ``redis.Redis`` for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``); lazy, no I/O yet."""
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("mode='celery' needs redis-py: pip install 'ocycle-dist[celery]'") from None
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("broker", url, "a redis://, rediss:// or unix:// URL")
    try:
        return redis.Redis.from_url(
            url,
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
