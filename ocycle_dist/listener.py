"""The result listener: one thread that pops the workers' replies from Redis lists and hands them on.

Replies are stored in a list (RPUSH by the worker), not published, so none is lost while the producer is
disconnected: after a reconnect the listener picks up where it stopped. One BLPOP waits for the first
reply, then an LPOP with a count takes whatever else has arrived in the same round trip.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from . import wire

log = logging.getLogger("ocycle_dist.listener")


class ReplyListener:
    """Pop replies from the lists named in ``keys`` and call ``on_reply(record)`` for each, in order.

    Args:
        client: a ``redis.Redis`` used only by this listener (BLPOP holds its connection).
        on_reply: called in the listener thread with each decoded reply record.
        poll: seconds a BLPOP waits before the listener checks whether it should stop.
    """

    def __init__(self, client: Any, on_reply: Callable[[dict[str, Any]], None], *, poll: float = 0.5) -> None:
        self._client = client
        self._on_reply = on_reply
        self._poll = poll
        self._keys: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ocycle-listener", daemon=True)
        self.connected = threading.Event()
        self.reconnects = 0

    def listen(self, key: str) -> None:
        """Also pop replies from ``key``; starts the thread on the first key."""
        if key not in self._keys:
            self._keys = [*self._keys, key]
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after at most one poll interval)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

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
                try:
                    record = wire.loads(raw)
                except Exception:  # a foreign or corrupt entry must not stop the listener
                    log.exception("unreadable reply dropped from %s", key)
                    continue
                try:
                    self._on_reply(record)
                except Exception:
                    log.exception("reply handler failed for %r", record)
        self.connected.clear()
