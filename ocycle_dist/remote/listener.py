"""The result listener: one thread per broker that pops the workers' replies from Redis lists.

Replies are stored in a list (RPUSH by the worker), not published, so none is lost while the producer is
disconnected: after a reconnect the listener picks up where it stopped. One BLMPOP waits for replies and
takes up to :data:`POP_COUNT` of those waiting in one round trip (on a Redis older than 7.0, which lacks
it: a BLPOP for the first reply, then an LPOP with a count for the rest). Every executor
of a process that uses the same broker shares the listener; a reply goes to the one that knows its id.

The thread survives every error: an outage or an error reply (out of memory, read-only, loading) is retried
with back-off; a key of another type (WRONGTYPE) is dropped from the keys listened to and reported; an
unreadable or oversized reply is dropped and counted. Should the thread ever end, ``listen()`` starts a new one.

The listener also watches which Redis server it talks to: after every reconnect, and every ``check_every``
seconds (redis-py retries a failed command on a new connection by itself, so a quick restart can pass
unseen), it reads the server's ``run_id`` and tells the executors when it changed: a Redis restarted empty,
or a Sentinel failover, lost the tasks and replies the old server held, and the executors send their
unanswered chunks again at once. The producer's publisher may be idle (``write()`` blocked at
``max_inflight``) and never see the restart; the listener always talks to Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import wire
from .redis_client import CONFIG, WRONGTYPE, classify, connect

log = logging.getLogger("ocycle_dist.listener")
Handler = Callable[[dict[str, Any]], bool]  # True when the reply was its own
ServerHandler = Callable[[str], object]  # told the run_id of each new Redis server the listener sees
POP_COUNT = 500  # replies taken in one round trip at most


def _unknown_command(exc: Exception) -> bool:
    """Whether ``exc`` is Redis saying it does not know a command (an older server)."""
    import redis

    return isinstance(exc, redis.ResponseError) and str(exc).lower().startswith("unknown command")


class ReplyListener:
    """Pop replies from the lists named with ``listen()`` and offer each to the attached handlers.

    Args:
        client: a ``redis.Redis`` used only by this listener (BLMPOP holds its connection).
        poll: seconds a BLMPOP waits before the listener checks whether it should stop.
        check_every: seconds between two reads of the server's ``run_id`` (also read after every reconnect).
    """

    def __init__(self, client: Any, *, poll: float = 0.5, check_every: float = 1.0) -> None:
        self._client = client
        self._poll = poll
        self._check_every = check_every
        self._keys: list[str] = []
        self._handlers: list[Handler] = []
        self._owner: dict[str, Handler] = {}  # reply key -> the handler that listens to it: offered first
        self._on_server: dict[Handler, ServerHandler] = {}
        self._has_info = True  # False for a server without INFO (fakeredis): restarts go unseen
        self._multipop = True  # BLMPOP, until the server says it does not know it
        self._checked_at = float("-inf")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.reconnects = 0
        self.unclaimed = 0  # replies no handler knew: a second reply, or one for a producer gone
        self.unreadable = 0  # replies that could not be decoded (corrupt, oversized, a bomb): dropped
        self.bad_keys: list[str] = []  # reply keys of another type than a list: not listened to
        self.errors = 0  # errors the thread survived
        self.run_id: str | None = None  # the Redis server's, as last read
        self.new_servers = 0  # times the run_id changed: restarts and failovers seen

    def attach(self, handler: Handler, on_server: ServerHandler | None = None) -> None:
        """Offer replies to ``handler``; tell ``on_server(run_id)`` each new server's run_id (the first too)."""
        self._handlers = [*self._handlers, handler]
        if on_server is not None:
            self._on_server = {**self._on_server, handler: on_server}

    def detach(self, handler: Handler) -> bool:
        """Remove ``handler`` (and its ``on_server``); True when none is left."""
        self._handlers = [h for h in self._handlers if h != handler]
        self._owner = {k: h for k, h in self._owner.items() if h != handler}
        self._on_server = {h: f for h, f in self._on_server.items() if h != handler}
        return not self._handlers

    def listen(self, key: str, handler: Handler | None = None) -> None:
        """Also pop replies from ``key``, offered first to ``handler`` (then to the others); starts the thread on
        the first key (again, should it have ended)."""
        if key not in self._keys and key not in self.bad_keys:
            self._keys = [*self._keys, key]
        if handler is not None and self._owner.get(key) != handler:
            self._owner = {**self._owner, key: handler}
        with self._lock:
            if (self._thread is None or not self._thread.is_alive()) and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="ocycle-listener", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after at most one poll interval)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join()
        self._client.close()

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            if not self._keys:
                self._stop.wait(self._poll)
                continue
            try:
                if not self.connected.is_set() or time.monotonic() - self._checked_at >= self._check_every:
                    self._check_server()
                if self._multipop:  # up to POP_COUNT replies in one round trip (Redis >= 7)
                    got = self._client.blmpop(self._poll, len(self._keys), *self._keys, direction="LEFT",
                                              count=POP_COUNT)  # fmt: skip
                    self.connected.set()
                    backoff = 0.05
                    if got is None:
                        continue
                    key, more = got
                else:
                    got = self._client.blpop(self._keys, timeout=self._poll)
                    self.connected.set()
                    backoff = 0.05
                    if got is None:
                        continue
                    key, first = got
                    self._deliver(key, first)  # popped: delivered even if the next command fails
                    more = self._client.lpop(key, POP_COUNT) or []
            except Exception as exc:
                if self._multipop and _unknown_command(exc):
                    self._multipop = False  # an older server: BLPOP, then LPOP of what else waits
                    log.info("result listener: this Redis has no BLMPOP (%s); using BLPOP and LPOP", exc)
                    continue
                self.errors += 1
                kind = classify(exc)
                if kind == WRONGTYPE:
                    self._drop_bad_keys()
                    continue
                if self.connected.is_set() or kind == CONFIG:
                    log.warning(
                        "result listener: Redis %s (%s); trying again",
                        "refuses it" if kind == CONFIG else "is away",
                        exc,
                    )
                    self.reconnects += 1
                self.connected.clear()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 0.5)
                continue
            for raw in more:
                self._deliver(key, raw)
        self.connected.clear()

    def _drop_bad_keys(self) -> None:
        """A key listened to is not a list (a foreign writer, a collision): stop listening to it, say so."""
        try:
            types = [self._client.type(k) for k in self._keys]
        except Exception:  # the next round tries again
            return
        for key, kind in zip(list(self._keys), types, strict=True):
            if kind not in (b"list", b"none", "list", "none"):
                self._keys = [k for k in self._keys if k != key]
                self.bad_keys.append(key)
                log.error(
                    "reply key %s holds a %s, not a list: its stream's results cannot arrive (remove the key);"
                    " not listening to it",
                    key,
                    kind.decode() if isinstance(kind, bytes) else kind,
                )

    def _check_server(self) -> None:
        """Read the server's run_id; tell the executors when it is a new one (raises connection errors)."""
        import redis

        self._checked_at = time.monotonic()
        if not self._has_info:
            return
        try:
            run_id = self._client.info("server").get("run_id")
        except redis.ResponseError as exc:
            if not str(exc).lower().startswith(("unknown command", "noperm")) and classify(exc) != CONFIG:
                raise  # a transient error reply: the loop retries
            self._has_info = False  # no INFO here (fakeredis's TCP server then drops the connection too)
            self._client.connection_pool.disconnect()
            return
        if not run_id or run_id == self.run_id:
            return
        if self.run_id is not None:
            self.new_servers += 1
            log.info("Redis is a new server (run_id %s, was %s)", run_id, self.run_id)
        self.run_id = run_id
        for on_server in list(self._on_server.values()):
            try:
                on_server(run_id)
            except Exception:
                log.exception("server handler failed for run_id %s", run_id)

    def _deliver(self, key: bytes, raw: bytes) -> None:
        try:
            record = wire.loads(raw)
            if not isinstance(record, dict):
                raise TypeError(f"a reply is a map, this is a {type(record).__name__}")
        except Exception as exc:  # a foreign, corrupt or oversized entry must not stop the listener
            self.unreadable += 1
            log.error("unreadable reply dropped from %r (%d bytes): %s", key, len(raw), str(exc)[:200])
            return
        owner = self._owner.get(key.decode() if isinstance(key, bytes) else key)
        if owner is not None and self._offer(owner, key, record):
            return
        for handler in self._handlers:
            if handler != owner and self._offer(handler, key, record):
                return
        self.unclaimed += 1

    @staticmethod
    def _offer(handler: Handler, key: bytes, record: dict[str, Any]) -> bool:
        """Whether ``handler`` took the reply (a failing handler takes it: it is logged, not offered again)."""
        try:
            return bool(handler(record))
        except Exception as exc:
            log.error("reply handler failed for a reply from %r: %s", key, str(exc)[:200], exc_info=exc)
            return True


_shared: dict[str, ReplyListener] = {}
_shared_lock = threading.Lock()


def attach(
    url: str,
    handler: Handler,
    *,
    socket_timeout: float,
    master_name: str | None = None,
    on_server: ServerHandler | None = None,
) -> ReplyListener:
    """The process's listener for the broker at ``url``, with ``handler`` (and ``on_server``) attached.

    ``master_name``: the Sentinel master's, for ``sentinel://`` URLs.
    """
    with _shared_lock:
        listener = _shared.get(url)
        if listener is None:
            client = connect(url, socket_timeout=socket_timeout, master_name=master_name)
            listener = _shared[url] = ReplyListener(client)
        listener.attach(handler, on_server)
        return listener


def detach(url: str, handler: Handler) -> None:
    """Detach ``handler``; the last one out stops the listener."""
    with _shared_lock:
        listener = _shared.get(url)
        if listener is None or not listener.detach(handler):
            return
        del _shared[url]
    listener.stop()
