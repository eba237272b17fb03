"""The result listener: one thread per broker that pops the workers' replies from Redis lists.

Replies are stored in a list (RPUSH by the worker), not published, so none is lost while the producer is
disconnected: after a reconnect the listener picks up where it stopped. One BLPOP waits for the first
reply, then an LPOP with a count takes whatever else has arrived in the same round trip. Every executor
of a process that uses the same broker shares the listener; a reply goes to the one that knows its id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from . import wire
from .redis_client import connect

log = logging.getLogger("ocycle_dist.listener")
Handler = Callable[[dict[str, Any]], bool]  # True when the reply was its own


class ReplyListener:
    """Pop replies from the lists named with ``listen()`` and offer each to the attached handlers.

    Args:
        client: a ``redis.Redis`` used only by this listener (BLPOP holds its connection).
        poll: seconds a BLPOP waits before the listener checks whether it should stop.
    """

    def __init__(self, client: Any, *, poll: float = 0.5) -> None:
        self._client = client
        self._poll = poll
        self._keys: list[str] = []
        self._handlers: list[Handler] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()  # emitters on several threads may listen() at once
        self._thread = threading.Thread(target=self._run, name="ocycle-listener", daemon=True)
        self.connected = threading.Event()
        self.reconnects = 0
        self.unclaimed = 0  # replies no handler knew: a second reply, or one for a producer gone

    def attach(self, handler: Handler) -> None:
        self._handlers = [*self._handlers, handler]

    def detach(self, handler: Handler) -> bool:
        """Remove ``handler``; True when none is left."""
        self._handlers = [h for h in self._handlers if h != handler]
        return not self._handlers

    def listen(self, key: str) -> None:
        """Also pop replies from ``key``; starts the thread on the first key."""
        if key in self._keys and self._thread.is_alive():
            return
        with self._lock:
            if key not in self._keys:
                self._keys = [*self._keys, key]
            if not self._thread.is_alive() and not self._stop.is_set() and self._thread.ident is None:
                self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after at most one poll interval)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        self._client.close()

    def _run(self) -> None:
        import redis

        backoff = 0.05
        while not self._stop.is_set():
            try:
                got = self._client.blpop(self._keys, timeout=self._poll)
                self.connected.set()
                backoff = 0.05
                if got is None:
                    continue
                key, first = got
                more = self._client.lpop(key, 500) or []
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self.connected.is_set():
                    log.warning("result listener lost Redis (%s); reconnecting", exc)
                    self.reconnects += 1
                self.connected.clear()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for raw in (first, *more):
                self._deliver(key, raw)
        self.connected.clear()

    def _deliver(self, key: bytes, raw: bytes) -> None:
        try:
            record = wire.loads(raw)
        except Exception:  # a foreign or corrupt entry must not stop the listener
            log.exception("unreadable reply dropped from %r", key)
            return
        for handler in self._handlers:
            try:
                if handler(record):
                    return
            except Exception:
                log.exception("reply handler failed for %r", record)
                return
        self.unclaimed += 1


_shared: dict[str, ReplyListener] = {}
_shared_lock = threading.Lock()


def attach(url: str, handler: Handler, *, socket_timeout: float) -> ReplyListener:
    """The process's listener for the broker at ``url``, with ``handler`` attached."""
    with _shared_lock:
        listener = _shared.get(url)
        if listener is None:
            listener = _shared[url] = ReplyListener(connect(url, socket_timeout=socket_timeout))
        listener.attach(handler)
        return listener


def detach(url: str, handler: Handler) -> None:
    """Detach ``handler``; the last one out stops the listener."""
    with _shared_lock:
        listener = _shared.get(url)
        if listener is None or not listener.detach(handler):
            return
        del _shared[url]
    listener.stop()
