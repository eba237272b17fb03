"""Draining: a pool process that ran a short chunk message takes more of its queue in one round trip.

A fleet of producers, each with one chunk in flight, has nothing to batch. So once a pool process has run a
short chunk message, :func:`drain` takes up to ``worker_drain`` more waiting messages (at most
:data:`DRAIN_BYTES` of them) of the same queue in one round trip and runs them in the same call
(:func:`.runner.run_items`), then takes more while its takes stop at those limits with more waiting (for at
most :data:`DRAIN_SECONDS`; a take that empties the queue ends it: what comes next may as well go to another
worker). The Lua script that pops them (:data:`TAKE`) records each, in the same atomic step, in kombu's
``unacked`` hash and ``unacked_index`` as a delivery would, and names them in a lease of the pool process
(``ocycle:lease:<worker>/<pid>``, a few seconds' time to live), so a killed worker's are sent again at once by
their producers (:mod:`.lease`), and, with no producer left, restored by kombu after the visibility timeout. The
replies of what it ran go every ~10 ms (:data:`REPLY_EVERY`: the producers handle them meanwhile), the acks
once the whole take ran. Junk is refused and kept (:mod:`.intake`), never put back. Messages it cannot run
itself (an unknown task, an ``eta``, callbacks) are put back where they were, for Celery.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis

from . import wire
from .envelope import decode_items
from .events import for_run
from .intake import JunkError, refuse, sealed_items
from .protocol import UNACKED_INDEX_KEY, UNACKED_KEY, WORKERS_KEY, lease_key
from .rawconn import discard, receive, send_script
from .replies import ReplyWriter
from .runner import run_items
from .worker_metrics import count

log = logging.getLogger("ocycle_dist.worker")

DRAIN_SLOW = 0.05  # a pool process drains only after a chunk that ran faster than this (seconds)

DRAIN_SECONDS = 0.5  # and goes on taking more for at most this long per call

# One take stops once it holds this many bytes of messages (a batch message is ~1.4 MB). A take that stopped
# there (a backlog of batch messages) has the next one sent before its messages run: the take script's copying
# of each batch message costs Redis time, spent on the other core meanwhile. A take of small messages, cut at
# worker_drain, is cheap: the next one waits until these ran, so that other workers get their share.
DRAIN_BYTES = 2 << 20

REPLY_EVERY = 0.01  # a long take (a backlog of batch messages) sends the replies of what ran at least this often

# Pop up to ARGV[1] messages from the queue KEYS[1], one at a time, stopping once ARGV[5] bytes are taken, and
# record each as delivered to this pool process, in one atomic step: kombu's unacked hash (KEYS[2]: tag ->
# [message, exchange, routing key]) and index (KEYS[3]: tag -> time), then the pool process's lease (KEYS[4],
# naming the tasks and the delivery tags; TTL ARGV[4] ms) and its name in the set of lease holders (KEYS[5]).
# The tags are read from the envelope's tail (where the properties are), else by decoding it. The lease also
# names what the previous take holds, still running: ARGV[6] task ids, then its tags (ARGV[7...]). Returns the
# messages, their tags, how many more wait if the take stopped at its count or byte limit (else 0: the queue
# ran dry, and what comes next may as well go to another worker), the task ids, and 1 if it stopped at its
# byte limit (else 0). One RPOP with a count
# would copy its whole reply into Lua at a cost growing with the square of its size; the byte budget bounds
# how long Redis is busy with one take (a backlog of batch messages is taken a few at a time).
TAKE = """
local items, tags, ids, limited, by_bytes = {}, {}, {}, false, 0
local where = ', "", ' .. cjson.encode(KEYS[1]) .. ']'
local budget = tonumber(ARGV[5])
for i = 1, tonumber(ARGV[1]) do
  local m = redis.call('RPOP', KEYS[1])
  if not m then break end
  items[i] = m
  local tail = string.sub(m, -1024)
  local tag = string.match(tail, '"delivery_tag": "([^"]+)"')
  local id = string.match(tail, '"correlation_id": "([^"]+)"')
  if not tag then
    local ok, env = pcall(cjson.decode, m)
    if ok and type(env) == 'table' and type(env.properties) == 'table' then
      tag = env.properties.delivery_tag
      id = env.properties.correlation_id
    end
  end
  if type(tag) ~= 'string' then tag = ARGV[3] .. ':' .. ARGV[2] .. ':' .. i end
  redis.call('HSET', KEYS[2], tag, '[' .. m .. where)
  redis.call('ZADD', KEYS[3], ARGV[2], tag)
  tags[i] = tag
  if type(id) == 'string' then ids[#ids + 1] = id end
  budget = budget - #m
  if budget <= 0 or i == tonumber(ARGV[1]) then
    limited = true
    if budget <= 0 then by_bytes = 1 end
    break
  end
end
if #items == 0 then return {} end
local held_ids, held_tags, n = {}, {}, tonumber(ARGV[6])
for j = 7, #ARGV do
  if j <= 6 + n then held_ids[#held_ids + 1] = ARGV[j] else held_tags[#held_tags + 1] = ARGV[j] end
end
for _, id in ipairs(ids) do held_ids[#held_ids + 1] = id end
for _, tag in ipairs(tags) do held_tags[#held_tags + 1] = tag end
redis.call('SET', KEYS[4], cmsgpack.pack({worker = ARGV[3], tasks = held_ids, tags = held_tags}), 'PX', ARGV[4])
redis.call('SADD', KEYS[5], ARGV[3])
return {items, tags, limited and redis.call('LLEN', KEYS[1]) or 0, ids, by_bytes}
"""

_scripts: dict[int, Any] = {}
_unsupported: set[int] = set()  # clients whose server runs no Lua (fakeredis without lupa): no draining


def drain(task: Any, client: Any, settings: Any, elapsed: float) -> int:
    """After a chunk message ran in this pool process: take and run what else waits on its queue; how many.

    Only for a short chunk (``elapsed`` under :data:`DRAIN_SLOW`: for a long one Celery's cost per message
    hardly matters) with no hard time limit (a drained chunk could not be stopped on its own), from the queue
    the message came from.
    """
    request = task.request
    if settings.worker_drain <= 0 or elapsed > DRAIN_SLOW or request.called_directly or request.is_eager:
        return 0
    if (request.timelimit or (None, None))[0] or task.app.conf.task_time_limit:
        return 0
    delivery_info = dict(request.delivery_info or {})
    queue = delivery_info.get("routing_key")  # the list the message came from (our messages are routed by queue)
    if not queue:
        return 0
    if id(client) in _unsupported:
        return 0
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(TAKE)
    name = f"{request.hostname}/{os.getpid()}"
    lease = max(0.5, float(settings.worker_lease or 3.0))
    keys = [queue, UNACKED_KEY, UNACKED_INDEX_KEY, lease_key(name), WORKERS_KEY]
    total, deadline = 0, time.monotonic() + DRAIN_SECONDS
    renewed = [time.monotonic()]
    current: list[ReplyWriter] = []  # the replies of the take running
    flush_at = [time.monotonic() + REPLY_EVERY]

    def renew() -> None:  # after each chunk (or call) of a take: keep the lease alive, send the replies so far
        now = time.monotonic()
        if now - renewed[0] > lease / 3:
            client.pexpire(lease_key(name), int(lease * 1000))
            renewed[0] = now
        if now >= flush_at[0] and current and current[0].by_key:  # a long take: its producers hear as it runs
            current[0].send()
            flush_at[0] = time.monotonic() + REPLY_EVERY

    def take(ids: list[Any], tags: list[Any]) -> list[Any]:
        return [settings.worker_drain, time.time(), name, int(lease * 1000), DRAIN_BYTES, len(ids), *ids, *tags]

    ahead: Any = None  # the connection of the next take, sent before the messages of this one run
    events = for_run(task.app, request.hostname)
    took = False  # whether a take took anything (and so named it in the lease)
    try:
        try:
            got = script(keys=keys, args=take([], []))
        except redis.ResponseError as exc:  # no scripting, or RPOP without a count (Redis < 6.2)
            _unsupported.add(id(client))
            log.info("not draining queues: this Redis cannot run the take script (%s)", exc)
            return total
        while got:
            took = True
            messages, tags, waiting, ids, by_bytes = got
            renewed[0] = time.monotonic()
            more = bool(waiting) and time.monotonic() < deadline
            if more and by_bytes:  # large messages: Redis takes the next while these run (see DRAIN_BYTES)
                ahead = send_script(client, script.sha, keys, take(ids, tags))
            replies = ReplyWriter(client, settings.result_ttl, settings.reply_secret)
            current[:] = [replies]
            back: list[tuple[bytes, bytes]] = []
            taken: list[list[Any]] = []  # the chunks of every message of the take: a batched task's run together
            for raw, tag in zip(messages, tags, strict=True):
                try:
                    items = decode_items(raw)
                except JunkError as junk:  # refused and kept; acknowledged with the rest, never put back
                    refuse(client, raw, junk, queue)
                    continue
                if items is None or (len(items) == 1 and items[0][1] not in task.app.tasks):
                    back.append((raw, tag))  # Celery's to run; a task it does not have, to answer and count
                    continue
                taken += sealed_items(client, items, settings.reply_secret, queue)
            ran = run_items(task.app, client, taken, replies, hostname=request.hostname,
                            delivery_info=delivery_info, renew=renew, events=events)  # fmt: skip
            count("chunks", ran, "drain")
            total += ran

            def acks(pipe: Any, back: list[tuple[bytes, bytes]] = back, tags: list[Any] = tags) -> None:
                for raw, _ in reversed(back):  # Celery's to run: back at the head of the queue, in order
                    pipe.rpush(queue, raw)
                pipe.zrem(UNACKED_INDEX_KEY, *tags)
                pipe.hdel(UNACKED_KEY, *tags)

            if not replies.send(also=acks):  # Redis stayed away: what was taken is in the unacked set and the
                break  # lease, so the producers send it again; take nothing more
            if events is not None:
                events.flush()
            if ahead is not None:  # the take already made runs too (it is recorded as delivered here)
                sent, ahead = ahead, None  # receive releases its connection, whatever happens
                got = receive(client, sent)
            else:
                got = script(keys=keys, args=take([], [])) if more and not back else None
            if back:  # no more
                deadline = 0.0
    finally:  # the lease now names nothing and lives on: deleting it would read as this process's death to a
        # producer whose reply is still on its way (it would send that chunk again)
        if ahead is not None:  # failed while a take was on its way: what it took is in kombu's unacked set
            discard(client, ahead)
            took = True
        try:
            if took:  # else the take found the queue empty and left the lease as it was: one round trip less
                lease_clear = wire.dumps({"worker": name, "tasks": [], "tags": []})
                client.set(lease_key(name), lease_clear, px=int(lease * 1000))
        except Exception:  # it lapses
            log.debug("could not clear the lease of %s", name)
    return total
