"""The result listener: one thread per process and broker that pops the workers' replies from Redis lists.

Replies are stored in a list (RPUSH by the worker), not published, so none is lost while the producer is
disconnected: after a reconnect the listener picks up where it stopped. One BLMPOP waits for replies and
takes up to :data:`POP_COUNT` of those waiting in one round trip (on a Redis older than 7.0, which lacks
it: a BLPOP for the first reply, then an LPOP with a count for the rest). It also waits on a wake-up list of
its own, so that stopping it or listening to a new list takes one round trip, not a poll interval.

The thread survives every error: an outage or an error reply (out of memory, read-only, loading) is retried
with back-off; a reply list turned into another type (WRONGTYPE: a foreign or hostile writer) is taken back
(deleted: it is the producer's own key), reported and counted; an unreadable or oversized reply is dropped and
counted. Should the thread ever end, ``listen()`` starts a new one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import wire
from .redis_client import CONFIG, WRONGTYPE, classify

log = logging.getLogger("ocycle_dist.listener")
Handler = Callable[[str, dict[str, Any]], bool]  # (reply key, envelope) -> True when it was a chunk's reply
POP_COUNT = 500  # replies taken in one round trip at most
YIELD_EVERY = 16  # replies handled between two yields of the GIL


def _unknown_command(exc: Exception) -> bool:
    """Whether ``exc`` is Redis saying it does not know a command (an older server)."""
    import redis

    return isinstance(exc, redis.ResponseError) and str(exc).lower().startswith("unknown command")


class ReplyListener:
    """Pop replies from the lists named with ``listen()`` and hand each to ``handler``.

    Args:
        client: a ``redis.Redis`` used only by this listener (BLMPOP holds its connection).
        handler: called with each reply's list and its envelope, on the listener's thread.
        wake_key: a list of its own; anything pushed there wakes the listener.
        poll: seconds a BLMPOP waits at most (below the client's socket timeout).
    """

    def __init__(self, client: Any, handler: Handler, wake_key: str, *, poll: float = 5.0) -> None:
        self._client = client
        self._handler = handler
        self._wake_key = wake_key
        self._poll = poll
        self._keys: list[str] = []
        self._multipop = True  # BLMPOP, until the server says it does not know it
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._quick = True  # the next pop does not wait: tells when what was waiting has been taken
        self.connected = threading.Event()
        self.drained_at = float("-inf")  # monotonic time the listener last found every list empty
        self.reconnects = 0
        self.unclaimed = 0  # replies no chunk waited for: a second reply, or one for a chunk dropped
        self.unreadable = 0  # replies that could not be decoded (corrupt, oversized, a bomb): dropped
        self.retyped = 0  # reply lists found holding another type, taken back (deleted)
        self.errors = 0  # errors the thread survived

    def listen(self, key: str) -> None:
        """Also pop replies from ``key``; starts the thread on the first key (again, should it have ended)."""
        with self._lock:
            if key not in self._keys:
                self._keys = [*self._keys, key]
                self._quick = True
                self.wake()
            if (self._thread is None or not self._thread.is_alive()) and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="ocycle-listener", daemon=True)
                self._thread.start()

    def forget(self, key: str) -> None:
        """Stop popping replies from ``key``."""
        with self._lock:
            self._keys = [k for k in self._keys if k != key]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (woken at once where Redis answers; else after at most one poll) and close the client."""
        self._stop.set()
        self.wake()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)
        self._client.close()

    def wake(self) -> None:
        """Push to the wake-up list, so that a waiting BLMPOP returns (best effort: at worst one poll later)."""
        if self._thread is None or not self.connected.is_set():
            return
        try:
            pipe = self._client.pipeline(transaction=False)  # another connection of the pool: the BLMPOP holds its own
            pipe.rpush(self._wake_key, b"")
            pipe.expire(self._wake_key, 60)
            pipe.execute()
        except Exception as exc:
            log.debug("could not wake the result listener: %s", exc)

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            keys = self._keys
            if not keys:
                self._stop.wait(0.05)
                continue
            quick, self._quick = self._quick, False
            timeout = 0.01 if quick else self._poll
            try:
                if self._multipop:  # up to POP_COUNT replies in one round trip (Redis >= 7)
                    got = self._client.blmpop(timeout, len(keys) + 1, self._wake_key, *keys, direction="LEFT",
                                              count=POP_COUNT)  # fmt: skip
                    self.connected.set()
                    backoff = 0.05
                    if got is None:
                        self.drained_at = time.monotonic()
                        continue
                    key, more = got
                else:
                    got = self._client.blpop([self._wake_key, *keys], timeout=timeout)
                    self.connected.set()
                    backoff = 0.05
                    if got is None:
                        self.drained_at = time.monotonic()
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
                    self._take_back_keys()
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
            name = key.decode() if isinstance(key, bytes) else str(key)
            if name == self._wake_key:
                self._quick = True  # woken: look again at once
                continue
            for i, raw in enumerate(more):
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    time.sleep(0)  # a writer's thread waiting for the GIL gets it between replies, not after all
                self._deliver(name, raw)
            self._quick = True  # the next pop does not wait: whether more wait (drained_at) is known at once
        self.connected.clear()

    def _take_back_keys(self) -> None:
        """A list listened to holds another type (a foreign or hostile writer): it is this producer's own key,
        so it is deleted and listened to again; what the workers could not reply meanwhile is recovered by the
        producer (the chunks are looked for after ``resend_after``)."""
        keys = [self._wake_key, *self._keys]
        try:
            types = [self._client.type(k) for k in keys]
            for key, kind in zip(keys, types, strict=True):
                if kind not in (b"list", b"none", "list", "none"):
                    self._client.delete(key)
                    self.retyped += 1
                    log.error(
                        "reply key %s held a %s, not a list (a foreign writer?): deleted, listening to it again",
                        key,
                        kind.decode() if isinstance(kind, bytes) else kind,
                    )
        except Exception as exc:  # the next round tries again
            log.debug("could not check the reply keys' types: %s", exc)

    def _deliver(self, key: str, raw: bytes) -> None:
        try:
            envelope = wire.loads(raw)
            if not isinstance(envelope, dict):
                raise TypeError(f"a reply is a map, this is a {type(envelope).__name__}")
        except Exception as exc:  # a foreign, corrupt or oversized entry must not stop the listener
            self.unreadable += 1
            log.error("unreadable reply dropped from %r (%d bytes): %s", key, len(raw), str(exc)[:200])
            return
        try:
            if not self._handler(key, envelope):
                self.unclaimed += 1
        except Exception as exc:  # a handler's bug must not stop the listener
            self.errors += 1
            log.error("reply handler failed for a reply from %r: %s", key, str(exc)[:200], exc_info=exc)
