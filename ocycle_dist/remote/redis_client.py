"""Redis clients built from a URL with the project's timeouts (password and TLS come from the URL).

One URL configures the producer and the workers, in either spelling of a Unix socket: redis-py's
``unix://[:password@]/path/redis.sock?db=0`` or kombu's ``redis+socket://[:password@]/path/redis.sock?virtual_host=0``.
:func:`connect` (redis-py) takes both; :func:`kombu_url` gives Celery the one its Redis transport knows.

A ``sentinel://`` URL (kombu's form: ``sentinel://:password@host:26379/db;sentinel://host2:26379;...``) gives a
client of the master that Redis Sentinel names: its connections ask the sentinels for the master's address
each time they connect, so after a failover a reconnect reaches the new master.
"""

from __future__ import annotations

import functools
import os
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ..errors import ConfigError

SCHEMES = ("redis://", "rediss://", "unix://", "redis+socket://")
DEFAULT_SENTINEL_MASTER = "mymaster"  # Redis's own example name, and the compose file's (Settings.sentinel_master)


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


SENTINEL_PORT = 26379


def is_sentinel(url: Any) -> bool:
    """Whether ``url`` names Redis Sentinels (``sentinel://``) rather than one Redis."""
    return isinstance(url, str) and url.startswith("sentinel://")


def sentinel_hosts(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The ``(host, port)`` of each sentinel in a ``sentinel://`` URL, and the master's username, password and db.

    Raises:
        ConfigError: a part that is not a ``sentinel://host[:port]`` URL, or a db that is not a number.
    """
    hosts: list[tuple[str, int]] = []
    master: dict[str, Any] = {}
    for part in url.split(";"):
        try:
            parsed = urlsplit(part)
            port = parsed.port or SENTINEL_PORT
        except ValueError as exc:
            raise ConfigError("broker", redact(url), f"sentinel://host:port URLs separated by ';' ({exc})") from None
        if parsed.scheme != "sentinel" or not parsed.hostname or parsed.query:
            raise ConfigError("broker", redact(url), "sentinel://[:password@]host[:port][/db] URLs separated by ';'")
        hosts.append((parsed.hostname, port))
        if not master:  # the first URL's, as kombu reads them
            db = parsed.path.strip("/") or "0"
            if not db.isdigit():
                raise ConfigError("broker", redact(url), "a database number after the first sentinel's address")
            master = {"db": int(db), "password": _unquoted(parsed.password), "username": _unquoted(parsed.username)}
    return hosts, master


def _unquoted(value: str | None) -> str | None:
    return unquote(value) if value else None


def connect(url: str, *, socket_timeout: float = 10.0, master_name: str | None = None, on_connect: Any = None) -> Any:
    """A ``redis.Redis`` for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://`` or ``redis+socket://``
    for a Unix socket, ``sentinel://``); lazy, no I/O yet.

    Args:
        url: where Redis is.
        socket_timeout: seconds a command may take; connecting takes at most 5 s of it.
        master_name: for ``sentinel://`` URLs, the master's name (default ``OCYCLE_SENTINEL_MASTER``, else
            ``mymaster``).
        on_connect: called with each new connection instead of its own handshake (redis-py's
            ``redis_connect_func``: it must call ``conn.on_connect()``), e.g. to read the server's ``run_id``.
    """
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("mode='celery' needs redis-py: pip install 'ocycle-dist[device]'") from None
    options = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 5.0),
        "health_check_interval": 30,
    }
    if on_connect is not None:
        options["redis_connect_func"] = on_connect
    if is_sentinel(url):
        return _sentinel_master(url, master_name, options)
    if not isinstance(url, str) or not url.startswith(SCHEMES):
        raise ConfigError(
            "broker", redact(url) if isinstance(url, str) else url, "a redis://, rediss://, unix:// or sentinel:// URL"
        )
    try:
        return redis.Redis.from_url(redis_py_url(url), **options)
    except ValueError as exc:
        raise ConfigError("broker", redact(url), f"a valid Redis URL ({exc})") from None


def check_url(url: Any) -> None:
    """ConfigError when ``url`` is no broker URL this project can use (``redis//x``, a bad port, a ``sentinel://``
    list that does not parse), told apart from an unreachable broker: nothing is connected."""
    connect(url).close()


TRANSIENT, CONFIG, WRONGTYPE = "transient", "config", "wrongtype"
_CONFIG_REPLIES = ("NOAUTH", "WRONGPASS", "NOPERM", "DB index", "invalid DB index", "ERR DB index", "AUTH")


def classify(exc: BaseException) -> str:
    """What a Redis error means for a client that must go on.

    Returns:
        ``CONFIG``: the broker refuses us (password, ACL, db number, TLS mismatch): retrying will not help
        until the configuration changes. ``WRONGTYPE``: a key holds another type than ours. ``TRANSIENT``:
        anything else (unreachable, time-out, out of memory, cannot persist, read-only replica, loading):
        retry with back-off.
    """
    import ssl

    import redis

    message = reason(exc)
    if isinstance(exc, redis.AuthenticationError) or type(exc).__name__ in ("AuthorizationError", "NoPermissionError"):
        return CONFIG
    if isinstance(exc, redis.ResponseError):
        if message.startswith("WRONGTYPE"):
            return WRONGTYPE
        if message.startswith(_CONFIG_REPLIES):
            return CONFIG
        return TRANSIENT
    chain: BaseException | None = exc
    seen = 0
    while chain is not None and seen < 5:  # rediss:// to a plain server: the TLS handshake fails or hangs
        if isinstance(chain, ssl.SSLError) or "SSL" in str(chain) or "handshake" in str(chain):
            return CONFIG
        chain, seen = chain.__cause__ or chain.__context__, seen + 1
    return TRANSIENT


def reason(exc: BaseException) -> str:
    """A Redis error's own message (redis-py wraps a pipeline's as "Command # N (...) caused error: ...")."""
    message = str(exc)
    _, found, rest = message.partition(" caused error: ")
    return (rest if found else message)[:300]


def probe(url: str, timeout: float = 2.0, *, master_name: str | None = None, allow_eviction: bool = False) -> None:
    """Check the broker at ``url`` once: raise ConfigError if it refuses us, or may evict the queues (its
    ``maxmemory-policy``: :func:`check_policy`); an outage is fine (later).

    ``master_name``: the Sentinel master's, for ``sentinel://`` URLs.
    """
    client = connect(url, socket_timeout=timeout, master_name=master_name)
    try:
        client.ping()
        memory = client.info("memory")
    except Exception as exc:
        if classify(exc) == CONFIG and not str(exc).startswith("NOPERM"):  # an ACL without +info: not checked
            why = f"{reason(exc)}{' during the TLS handshake' if url.startswith('rediss://') else ''}"
            raise ConfigError("broker", redact(url), f"a broker that accepts this client ({why})") from None
        return
    finally:
        client.close()
    check_policy(memory.get("maxmemory_policy"), memory.get("maxmemory_human"), url, allow_eviction)


# What each kind of maxmemory-policy may evict of a deployment's keys.
_EVICTS = {
    "allkeys-": "any key: the queues with the chunks waiting, claimed chunks, replies, kombu's bookkeeping",
    "volatile-": "the keys with a time to live: claimed chunks (ocycle:chunk:*), reply lists (ocycle:reply:*), worker"
    " leases (ocycle:lease:*), the dead-letter list; never the queues",
}


def evicts(policy: Any) -> str | None:
    """What a Redis with ``maxmemory-policy`` ``policy`` may evict when it reaches ``maxmemory``; None if nothing."""
    if not isinstance(policy, str) or policy in ("", "noeviction"):
        return None
    return next((what for prefix, what in _EVICTS.items() if policy.startswith(prefix)), f"keys ({policy})")


def check_policy(policy: Any, maxmemory: Any, url: str, allow_eviction: bool) -> str | None:
    """Judge a Redis's ``maxmemory-policy``: a ConfigError for one that may evict any key (``allkeys-*``: the queues
    too, silently) unless ``allow_eviction``; else what it may evict, for a warning (None when nothing).

    Raises:
        ConfigError: naming the policy and the fix, ``noeviction`` (Celery's own advice for its Redis broker).
    """
    what = evicts(policy)
    if what is None:
        return None
    limit = f"maxmemory {maxmemory}" if maxmemory and str(maxmemory) not in ("0", "0B") else "its maxmemory, once set"
    if str(policy).startswith("allkeys-") and not allow_eviction:
        raise ConfigError(
            "maxmemory-policy",
            policy,
            f"noeviction: Redis at {redact(url)} may evict any key when it reaches {limit}, the queues with the chunks"
            " waiting too. Set it on the server (CONFIG SET maxmemory-policy noeviction, and in redis.conf: Celery's"
            " advice for its Redis broker), or accept eviction with OCYCLE_ALLOW_EVICTION=1 (what it evicts is then"
            " sent again, counted)",
        )
    return (
        f"Redis at {redact(url)} may evict {what} when it reaches {limit} (maxmemory-policy {policy}): what it"
        " evicts is sent again within seconds, counted"
    )


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``: how a URL is shown in logs, errors and the CLI.

    Each of the ``;``-separated URLs of a ``sentinel://`` broker is redacted.
    """
    if ";" in url:
        return ";".join(redact(part) for part in url.split(";"))
    from urllib.parse import urlunsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<an unparsable URL>"
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _sentinel_master(url: str, master_name: str | None, options: dict[str, Any]) -> Any:
    from redis.sentinel import Sentinel

    name = master_name
    if name is None:  # as Settings.from_env() reads it
        name = os.environ.get("OCYCLE_SENTINEL_MASTER") or DEFAULT_SENTINEL_MASTER
    if not isinstance(name, str) or not name:
        raise ConfigError("sentinel_master", name, "the name the sentinels monitor the master under")
    hosts, master = sentinel_hosts(url)
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = Sentinel(hosts, sentinel_kwargs=timeouts)
    client = sentinel.master_for(name, redis_class=_master_class(), **options, **master)
    client.sentinel = sentinel
    return client


@functools.cache
def _master_class() -> type:
    from redis import Redis

    class SentinelMaster(Redis):
        """A client of the master Redis Sentinel names; closing it also closes the connections to the sentinels."""

        sentinel: Any = None

        def close(self) -> None:
            super().close()
            if self.sentinel is not None and hasattr(self.sentinel, "close"):  # redis-py >= 8.1
                self.sentinel.close()

    return SentinelMaster


def reachable(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``url`` (for ``sentinel://``, the master the sentinels name)."""
    client = None
    try:
        client = connect(url, socket_timeout=timeout)
        return bool(client.ping())
    except Exception:
        return False
    finally:
        if client is not None:
            client.close()
