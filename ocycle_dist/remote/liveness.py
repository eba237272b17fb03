"""What the producer knows of the Redis server and the workers: one owner of recovery per process and broker.

A chunk sent and not answered can be lost in three ways, each seen here and nowhere else; the
:class:`~.hub.Hub` then queues it again, ahead of new chunks, and a recovery never counts against
``max_attempts``:

- **A new server** (:class:`ServerWatch`): every connection the hub's clients open first reads the server's
  ``run_id``. A Redis restarted empty, or a Sentinel failover, closes every connection, so the first command
  after it reconnects and sees the new ``run_id``: the recovery looks for every unanswered chunk in the new
  server (a promoted replica still has most of them). Nothing is polled: a quiet producer costs nothing.
- **A dead worker** (:class:`LeaseWatch`): each worker keeps a short lease naming the chunks it holds
  (:mod:`.lease`); when it lapses, its chunks are lost with it. Read only while a chunk has been out longer
  than a third of the lease (a chunk answered within that never costs a read).
- **A message gone** (:func:`locate`): a chunk unanswered after ``resend_after``, named by no lease, is
  looked for in its queue and in kombu's unacknowledged set; not found anywhere (an evicting Redis, a purge,
  a worker that acked it without replying), it is sent again and counted as lost; ``max_attempts`` losses
  fail it with ``DeliveryError``. One still queued (no worker consumes its queue) is left where it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .lease import read_leases
from .protocol import UNACKED_INDEX_KEY, UNACKED_KEY

log = logging.getLogger("ocycle_dist.liveness")


def info_field(info: Any, name: str) -> str | None:
    """The field ``name`` in the raw reply of ``INFO <section>``."""
    text = info.decode("ascii", "replace") if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line[len(name) + 1 :].strip() or None
    return None


def run_id_of(info: Any) -> str | None:
    """The ``run_id`` in the raw reply of ``INFO server``."""
    return info_field(info, "run_id")


class ServerWatch:
    """Reads the server's ``run_id`` and ``maxmemory-policy`` on every new connection of the clients it is given to
    (as redis-py's ``redis_connect_func``: ``INFO server`` and ``INFO memory``, one round trip) and calls
    ``on_new(run_id)`` when the run_id changed (not for the first one seen). A policy that may evict keys is said
    once per policy (:func:`.redis_client.check_policy`); the recovery then watches ``evicted_keys``.

    A server without ``INFO`` (fakeredis) or an ACL that refuses it: restarts go unseen, logged once.
    """

    def __init__(self, on_new: Callable[[str], None], url: str = "", allow_eviction: bool = False) -> None:
        self._on_new = on_new
        self._lock = threading.Lock()
        self.url, self.allow_eviction = url, allow_eviction
        self.run_id: str | None = None
        self.policy: str | None = None  # maxmemory-policy, as last read
        self.new_servers = 0  # restarts and failovers seen
        self.has_info = True

    def on_connect(self, conn: Any) -> None:
        """redis-py's connect hook: the usual handshake (AUTH, SELECT...), then ``INFO server`` and ``INFO memory``."""
        import redis

        conn.on_connect()
        if not self.has_info:
            return
        conn.send_command("INFO", "server")
        conn.send_command("INFO", "memory")
        replies: list[Any] = []
        for _ in range(2):  # both replies are read, even when the first is an error
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:  # an older or foreign server, or an ACL without +info
                replies.append(exc)
        server, memory = replies
        if isinstance(server, Exception):
            self.has_info = False
            log.warning(
                "Redis refuses INFO (%s): a restart of it will not be seen at once, nor its maxmemory-policy; chunks it"
                " loses are sent again after resend_after",
                server,
            )
            return
        if not isinstance(memory, Exception):
            self._policy(info_field(memory, "maxmemory_policy"), info_field(memory, "maxmemory_human"))
        run_id = run_id_of(server)
        if run_id is not None:
            self.seen(run_id)

    def _policy(self, policy: str | None, maxmemory: str | None) -> None:
        """Note the server's maxmemory-policy; say once per policy what it may evict (an ERROR for one that may
        evict the queues and was not accepted: the producer refused it when it started, see ``probe``)."""
        from ..errors import ConfigError
        from .redis_client import check_policy

        with self._lock:
            old, self.policy = self.policy, policy
        if policy == old:
            return
        try:
            said = check_policy(policy, maxmemory, self.url, self.allow_eviction)
        except ConfigError as exc:
            log.error("%s; whatever it evicts is sent again within seconds, counted", exc)
            return
        if said is not None:
            log.warning("%s", said)

    @property
    def may_evict(self) -> bool:
        """Whether the server's maxmemory-policy, as last read, lets it evict keys."""
        return self.policy is not None and self.policy != "noeviction"

    def seen(self, run_id: str) -> None:
        """Note the server's ``run_id``; a change calls ``on_new``."""
        with self._lock:
            old, self.run_id = self.run_id, run_id
            if old is None or old == run_id:
                return
            self.new_servers += 1
        log.warning("Redis is a new server (run_id %s, was %s): what it held before is gone", run_id[:12], old[:12])
        self._on_new(run_id)


class LeaseWatch:
    """The producer's view of the workers' leases, for the chunks it waits on.

    Args:
        client: a ``redis.Redis``.
        lease: the workers' lease time: a chunk delivered but named by no lease for longer than this has lost
            its worker.
    """

    def __init__(self, client: Any, lease: float) -> None:
        self.client, self.lease = client, lease
        self._holder: dict[str, str] = {}  # task id -> the worker whose lease named it
        self._unnamed_since: dict[str, float] = {}  # task id -> when it was first seen delivered, unnamed
        self.named: set[str] = set()  # task ids named by a live lease at the last check
        self._tags: dict[str, set[str]] = {}  # worker -> delivery tags of ours its lease named at the last check
        self._tags_before: dict[str, set[str]] = {}  # ... and at the one before
        self.released: set[str] = set()  # delivery tags of ours held by workers now dead, answered or not
        self._alive: set[str] = set()  # the lease holders at the last check
        self.departed: set[str] = set()  # those whose lease was there at the check before and is gone at the last

    def forget(self) -> None:
        """Start over (a new server: the old leases are gone with it)."""
        self._holder.clear()
        self._unnamed_since.clear()
        self.named = set()
        self._tags.clear()
        self._tags_before.clear()
        self.released.clear()
        self._alive.clear()
        self.departed = set()

    def take_released(self) -> set[str]:
        """The delivery tags of ours that workers now dead held (see :meth:`check`), once."""
        released, self.released = self.released, set()
        return released

    def check(self, tag_of: dict[str, str], task_of: dict[str, list[str]]) -> list[tuple[str, str]]:
        """The producer's chunks whose worker is gone, as ``(task id, reason)``.

        Args:
            tag_of: task id -> delivery tag of the producer's chunks sent and not answered.
            task_of: the reverse (delivery tag -> task ids: several for a batch message).

        The cost does not grow with the producer's backlog: it reads the leases and the deliveries (bounded
        by the workers' prefetch windows), then looks each up in these dicts.
        """
        leases = read_leases(self.client)
        alive: dict[str, set[str]] = {}
        for worker, (tasks, tags) in leases.held.items():
            held = set(tasks)
            for tag in tags:  # a pool process's lease names the messages it took
                held.update(task_of.get(tag, ()))
            alive[worker] = held
        named = {task: worker for worker, tasks in alive.items() for task in tasks if task in tag_of}
        self.named = set(named)
        self.departed, self._alive = self._alive - alive.keys(), set(alive)
        self._remember_tags(named, tag_of, alive)
        now = time.monotonic()
        lost: list[tuple[str, str]] = []
        for task_id, worker in named.items():
            self._holder[task_id] = worker
            self._unnamed_since.pop(task_id, None)
        for task_id in list(self._holder):
            if task_id in named:
                continue
            gone = self._holder.pop(task_id)
            if task_id in tag_of and gone not in alive:
                lost.append((task_id, f"the lease of worker {gone} lapsed"))
        seen: set[str] = set()
        already = {t for t, _ in lost}
        for tag in leases.delivered:
            for task_id in list(task_of.get(tag, ())):
                if task_id in named:
                    continue
                seen.add(task_id)  # delivered to a worker that does not name it: dead before its first renewal?
                since = self._unnamed_since.setdefault(task_id, now)
                if now - since > self.lease and task_id not in already:
                    del self._unnamed_since[task_id]
                    lost.append((task_id, "delivered to a worker that died before naming it in its lease"))
        for task_id in list(self._unnamed_since):
            if task_id not in seen:
                del self._unnamed_since[task_id]
        return lost

    def _remember_tags(self, named: dict[str, str], tag_of: dict[str, str], alive: dict[str, set[str]]) -> None:
        """Keep, per worker, the delivery tags of ours its lease named at this check and the one before; a worker
        whose lease lapsed releases them (:attr:`released`): a chunk it answered and died before acknowledging
        (killed between the reply and the ack) would otherwise stay in kombu's ``unacked`` hash until the
        visibility timeout, and run again then."""
        now: dict[str, set[str]] = {}
        for task_id, worker in named.items():
            now.setdefault(worker, set()).add(tag_of[task_id])
        for worker in set(self._tags) | set(self._tags_before):
            if worker not in alive:
                self.released |= self._tags.pop(worker, set()) | self._tags_before.pop(worker, set())
        self._tags_before, self._tags = self._tags, now


# Which of the delivery tags ARGV[3...] the messages KEYS[1][ARGV[1] .. ARGV[1] + ARGV[2] - 1] carry; and how
# many messages that page held. The tag is read from a message's tail, where the envelope's properties are.
_FIND = """
local wanted = {}
for i = 3, #ARGV do wanted[ARGV[i]] = true end
local start = tonumber(ARGV[1])
local page = redis.call('LRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)
local found = {}
for _, m in ipairs(page) do
  local tag = string.match(string.sub(m, -1024), '"delivery_tag": "([^"]+)"')
  if tag and wanted[tag] then found[#found + 1] = tag end
end
return {found, #page}
"""
PAGE = 64  # messages read per call: a queue is looked through in pages, never blocking Redis for long
_scripts: dict[int, Any] = {}


def locate(client: Any, queues: Mapping[str, Iterable[str]]) -> set[str]:
    """Of the delivery tags wanted per queue, those whose message is still in Redis: waiting in its queue, or
    delivered and not acknowledged (kombu's ``unacked_index``).

    Args:
        client: a ``redis.Redis`` (Lua scripting; without it every tag counts as found: nothing is sent twice).
        queues: queue name -> the delivery tags of messages sent to it.
    """
    delivered, queued = where(client, queues)
    if queued is None:  # no scripting here: assume still queued, as before this check existed
        return set().union(*(set(tags) for tags in queues.values()))
    return delivered | queued


def where(client: Any, queues: Mapping[str, Iterable[str]]) -> tuple[set[str], set[str] | None]:
    """Where the messages of the delivery tags wanted per queue are in Redis: ``(delivered, queued)``, the tags
    delivered and not acknowledged (kombu's ``unacked_index``), and those waiting in their queue (None when the
    server runs no Lua scripts: the queues could not be looked through).

    Args:
        client: a ``redis.Redis``.
        queues: queue name -> the delivery tags of messages sent to it.
    """
    import redis

    wanted = {queue: set(tags) for queue, tags in queues.items() if tags}
    everything = set().union(*wanted.values()) if wanted else set()
    if not everything:
        return set(), set()
    ordered = sorted(everything)
    try:
        scores = client.zmscore(UNACKED_INDEX_KEY, ordered)
    except redis.ResponseError:  # Redis < 6.2
        pipe = client.pipeline(transaction=False)
        for tag in ordered:
            pipe.zscore(UNACKED_INDEX_KEY, tag)
        scores = pipe.execute()
    delivered = {tag for tag, score in zip(ordered, scores, strict=True) if score is not None}
    queued: set[str] = set()
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_FIND)
    for queue, tags in wanted.items():
        left = tags - delivered
        start = 0
        while left:
            try:
                got, count = script(keys=[queue], args=[start, PAGE, *sorted(left)])
            except redis.ResponseError:
                return delivered, None
            queued.update(t.decode() if isinstance(t, bytes) else str(t) for t in got)
            left -= queued
            if count < PAGE:
                break
            start += PAGE
    return delivered, queued


def forget_delivery(client: Any, tags: list[str]) -> None:
    """Remove deliveries from kombu's unacked bookkeeping (of a dead worker, or of one that lost its server and with
    it what it had prefetched), so they are not run again after the visibility timeout."""
    if not tags:
        return
    pipe = client.pipeline(transaction=False)
    pipe.zrem(UNACKED_INDEX_KEY, *tags)
    pipe.hdel(UNACKED_KEY, *tags)
    pipe.execute()
