"""The worker's one reply writer: each chunk's outcome, sealed, RPUSHed to its producer's reply list.

Every way a worker answers goes through :class:`ReplyWriter`: the result backend of a plain task message, a
batch message's chunks, a drained message's. A reply that cannot be sent because Redis is away, loading or
read-only (a failover) is an infrastructure error, never the task's: it is sent again until Redis answers,
for at most ``give_up`` seconds (logged once per outage); after that it is left to the producer's recovery,
which sends the chunk again (a new server, a lapsed lease, or its ``resend_after``). The task keeps its real
outcome: a reply that could not be written never becomes a failed task, and a batch whose reply failed never
fails its chunks.

With a reply secret, a chunk whose message seal checked out is :func:`bind`-ed to its digest before it runs
(:func:`.intake.sealed_items`), and its reply carries that digest, so the producer believes only a result of
the chunk it sent.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from ..errors import EncodeError
from .protocol import is_reply_key, mac_key, reply_error, seal, token_of
from .redis_client import TRANSIENT, classify, reason

log = logging.getLogger("ocycle_dist.worker")
GIVE_UP = 60.0  # seconds a reply is retried while Redis is away, before the producer's recovery is relied on


_bound: dict[str, bytes] = {}  # task id -> the digest of the chunk verified for it in this process, until replied
BOUND_MAX = 4096  # a chunk verified and never answered (its process killed mid-batch) is forgotten past this


def bind(task_id: str, digest: bytes) -> None:
    """The chunk of ``task_id`` about to run in this process has ``digest`` (its message's seal checked out)."""
    _bound[task_id] = digest
    if len(_bound) > BOUND_MAX:
        del _bound[next(iter(_bound))]


def is_bound(task_id: Any) -> bool:
    """Whether the chunk of ``task_id`` was verified in this process and is not answered yet."""
    return task_id in _bound


def encode_record(record: dict[str, Any], key: bytes) -> bytes:
    """A reply record on the wire, sealed with ``key`` (:func:`.protocol.mac_key` of the reply list's token); a
    result that cannot be encoded becomes an EncodeError reply."""
    try:
        return seal(record, key)
    except EncodeError as exc:
        return seal(reply_error(record["id"], "EncodeError", f"the task's result cannot be sent back: {exc}"), key)


class ReplyWriter:
    """Reply records by reply list, sent together (RPUSH + EXPIRE per list) in one pipeline.

    Args:
        client: the worker process's ``redis.Redis``.
        ttl: seconds a reply list lives after its last reply.
        secret: the deployment's reply secret (keys the seal with the list's token).
        give_up: seconds :meth:`send` retries while Redis is away.
    """

    _outage_logged = False  # one warning per process while replies cannot be written

    def __init__(self, client: Any, ttl: float, secret: str, *, give_up: float | None = None) -> None:
        self.client = client
        self.ttl = max(1, int(ttl))
        self.secret = secret
        self.give_up = GIVE_UP if give_up is None else give_up
        self.by_key: defaultdict[str, list[bytes]] = defaultdict(list)
        self.retries = 0  # pipelines sent again because Redis was away

    def add(self, key: Any, record: dict[str, Any]) -> None:
        """Queue ``record`` for the reply list ``key`` (ignored unless it names one of the project's lists)."""
        task_id = record.get("id")
        digest = _bound.pop(task_id, None) if _bound and isinstance(task_id, str) else None
        if isinstance(key, str) and is_reply_key(key):
            if digest is not None:
                record = {**record, "digest": digest}
            self.by_key[key].append(encode_record(record, mac_key(self.secret, token_of(key))))

    def __len__(self) -> int:
        return sum(len(records) for records in self.by_key.values())

    def send(self, also: Any = None) -> bool:
        """Send what is queued, with ``also(pipe)`` adding other commands to the same pipeline (acks).

        Returns False when Redis stayed away for ``give_up`` seconds (or refused the pipeline for good): the
        replies are dropped, logged, and the producer's recovery sends the chunks again. Never raises for a
        Redis error.
        """
        if not self.by_key and also is None:
            return True
        deadline = time.monotonic() + self.give_up
        backoff = 0.05
        while True:
            pipe = self.client.pipeline(transaction=False)
            for key, records in self.by_key.items():
                pipe.rpush(key, *records)
                pipe.expire(key, self.ttl)
            if also is not None:
                also(pipe)
            try:
                pipe.execute()
            except Exception as exc:
                if classify(exc) != TRANSIENT or not _is_redis_error(exc) or time.monotonic() >= deadline:
                    log.error(
                        "%d replies could not be written (%s: %s); their producers will send the chunks again",
                        len(self),
                        type(exc).__name__,
                        reason(exc),
                    )
                    self.by_key.clear()
                    return False
                if not ReplyWriter._outage_logged:
                    ReplyWriter._outage_logged = True
                    log.warning(
                        "Redis cannot take replies now (%s: %s); retrying for up to %g s (logged once)",
                        type(exc).__name__,
                        reason(exc),
                        self.give_up,
                    )
                self.retries += 1
                _count_retry()
                time.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                continue
            if ReplyWriter._outage_logged:
                ReplyWriter._outage_logged = False
                log.info("Redis takes replies again")
            self.by_key.clear()
            return True


def _count_retry() -> None:
    from .worker_metrics import count  # the worker's counters (imports Celery: only on a worker, only here)

    count("reply_retries")


def _is_redis_error(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, (redis.RedisError, OSError))
