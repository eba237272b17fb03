"""The worker side of batching: a pool process runs many chunks in one call, each with its own outcome.

Celery's cost per task message (a BRPOP, the request, the prefork pipe to the pool process and back, the
ack, the reply) is many times what a small chunk's function costs. Two ways chunks share it:

- **A batch message** (task :data:`.protocol.BATCH_TASK`, sent by a producer with several chunks pending,
  e.g. a backlog after an outage): :func:`run_batch` runs its chunks in turn.
- **Draining** (a fleet of producers, each with one chunk in flight, so no producer has anything to batch):
  once a pool process has run a short chunk message, :func:`drain` takes up to ``worker_drain`` more waiting
  messages (at most :data:`DRAIN_BYTES` of them) of the same queue in one round trip and runs them in the same
  call, then takes more while its takes stop at those limits with more waiting (for at most
  :data:`DRAIN_SECONDS`; a take that empties the queue ends it: what comes next may as well go to another
  worker). The Lua script that pops
  them records each, in the same atomic step, in kombu's ``unacked`` hash and ``unacked_index`` as a
  delivery would, and names them in a lease of the pool process (``ocycle:lease:<worker>/<pid>``, a few
  seconds' time to live), so a killed worker's are sent again at once by their producers (:mod:`.lease`),
  and, with no producer left, restored by kombu after the visibility timeout. The replies of what it ran go
  every ~10 ms (:data:`REPLY_EVERY`: the producers handle them meanwhile), the acks once the whole take ran.
  Junk is refused and kept (:mod:`.intake`), never put back. Messages it cannot run itself (an unknown task,
  an ``eta``, callbacks) are put back where they were, for Celery.

Either way each chunk is run as its task would be (the task's function, ``ChunkTask``'s claim fetch, size
check and ``meta``), its exception caught, and its outcome RPUSHed to its stream's reply list: one failing
chunk does not fail its neighbours. The chunks of a batched task (:func:`ocycle_dist.batched`: a model that runs
many inputs at once) are checked one by one, then run in one call of the batch function (:func:`run_items`):
a batch message's all together, a drain's take's all together, up to the task's ``max_chunks`` a call.
What Celery does per message and not per chunk: signals (``task_prerun``...), retries (``self.retry()`` is an
error of that chunk), rate limits and revocation.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from datetime import datetime
from typing import Any, NamedTuple

import redis
from celery._state import _task_stack
from celery.app.task import Context
from celery.exceptions import NotRegistered, TimeLimitExceeded

from ..batched import Batch, batch_of, call_batch
from ..chunk import Chunk
from ..errors import ClaimGoneError, EncodeError
from . import wire
from .events import ChunkEvents, for_run
from .intake import JunkError, body_bytes, check, check_envelope, refuse, sealed_items
from .protocol import (
    BATCH_TASK,
    META_HEADER,
    SEAL_HEADER,
    SEALS_HEADER,
    UNACKED_INDEX_KEY,
    UNACKED_KEY,
    WORKERS_KEY,
    claim_key,
    is_reply_key,
    lease_key,
    reply_error,
    reply_expired,
    reply_ok,
)
from .replies import ReplyWriter
from .worker_metrics import count

log = logging.getLogger("ocycle_dist.worker")

DRAIN_SLOW = 0.05  # a pool process drains only after a chunk that ran faster than this (seconds)
DRAIN_SECONDS = 0.5  # and goes on taking more for at most this long per call
# One take stops once it holds this many bytes of messages (a batch message is ~1.4 MB). A take that stopped
# there (a backlog of batch messages) has the next one sent before its messages run: the take script's copying
# of each batch message costs Redis time, spent on the other core meanwhile. A take of small messages, cut at
# worker_drain, is cheap: the next one waits until these ran, so that other workers get their share.
DRAIN_BYTES = 2 << 20
FETCH = 64  # run_items fetches the claimed chunks of this many items at a time, in one MGET
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


def describe(exc: BaseException) -> str:
    """A task's exception as a message a producer can act on."""
    if isinstance(exc, TimeLimitExceeded) and exc.args:
        return f"the task ran past its hard time limit of {exc.args[0]} s; its worker process was killed"
    if isinstance(exc, NotRegistered) and exc.args:
        return f"no worker has a task named {exc.args[0]!r}"
    return str(exc)


def _expires_at(value: Any) -> float | None:
    """An item's or a message's ``expires`` as epoch seconds (it is ISO 8601 in Celery's header)."""
    if value is None or isinstance(value, (int, float)):
        return value
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def payload_size(value: Any) -> int:
    """Bytes of a chunk value (bytes-like, str or numpy array)."""
    nbytes = getattr(value, "nbytes", None)
    return int(nbytes) if nbytes is not None else len(value)


def wants_meta(task: Any) -> bool:
    """Whether ``task``'s function has a ``meta`` parameter (looked up once per task: ``inspect.signature`` is slow)."""
    cached = task.__dict__.get("_ocycle_wants_meta")
    if cached is None:
        cached = task.__dict__["_ocycle_wants_meta"] = "meta" in inspect.signature(task.run).parameters
    return bool(cached)


def chunk_limit(task: Any) -> int:
    """``max_chunk_bytes`` of ``task``'s app (looked up once per task, from the app's settings)."""
    cached = task.__dict__.get("_ocycle_limit_value")
    if cached is None:
        cached = task.__dict__["_ocycle_limit_value"] = task._ocycle_limit()
    return int(cached)


def chunk_kwargs(task: Any, chunk: Any, info: dict[str, Any] | None, limit: int) -> dict[str, Any]:
    """What a chunk task is called with besides ``(chunk, t0)``: ``meta`` when its function takes it. Raises
    EncodeError for a chunk over ``limit`` (``max_chunk_bytes``). ``info``: the message's metadata header."""
    if not info:
        return {}
    if payload_size(chunk) > limit:
        raise EncodeError(f"chunk of {payload_size(chunk)} bytes exceeds max_chunk_bytes={limit}")
    return {"meta": Chunk(**{f: info[f] for f in Chunk._fields})} if wants_meta(task) else {}


def _call(task: Any, item: list[Any], hostname: str | None, delivery_info: dict[str, Any]) -> Any:
    """Run one chunk as its task message would run: in a request context carrying its metadata.

    A task of :class:`.worker.ChunkTask` (its ``__call__`` not overridden) is run here directly in one fresh
    request context (``ChunkTask.__call__``'s checks, then the function): Celery's ``Task.__call__`` would push
    a second context copying the first, for each chunk. Any other task class is called as Celery would."""
    task_id, name, chunk, t0, meta = item[:5]
    request = {
        "id": task_id, "correlation_id": task_id, "task": name, "args": [chunk, t0], "kwargs": {}, "hostname": hostname,
        "delivery_info": delivery_info, "reply_to": item[6] if len(item) > 6 else None, "is_eager": False,
        "called_directly": False, "retries": 0, META_HEADER: meta, "headers": {META_HEADER: meta},
    }  # fmt: skip
    cls = type(task)
    if cls.__call__ is not getattr(cls, "_ocycle_call", None):
        task.push_request(**request)
        try:
            return task(chunk, t0)
        finally:
            task.pop_request()
    kwargs = chunk_kwargs(task, chunk, meta, chunk_limit(task))
    _task_stack.push(task)
    task.request_stack.push(Context(request))
    try:
        return task.run(chunk, t0, **kwargs)
    finally:
        task.request_stack.pop()
        _task_stack.pop()


def run_items(app: Any, client: Any, items: list[list[Any]], replies: ReplyWriter, *, hostname: str | None,
              delivery_info: dict[str, Any], renew: Any = None, reply_to: str | None = None,
              events: ChunkEvents | None = None) -> int:  # fmt: skip
    """Run each item (``[task id, task name, chunk, t0, meta, expires at, reply list?]``); its outcome goes
    to ``replies`` (the item's reply list, else ``reply_to``). Claimed chunks are fetched :data:`FETCH` items at a
    time, each window in one MGET, and only the item's own claim (``claim_key(task id)``). The chunks of a batched
    task (:func:`ocycle_dist.batched`) run together, in calls of its ``max_chunks`` (a call as soon as that many
    are ready, the rest at the end); every other chunk runs alone. So at most a window and a call's worth of
    chunks are held at once, however many items. With ``events``, each chunk's task events are buffered there
    (:mod:`.events`). Returns how many ran."""
    ran = 0
    together: dict[str, list[Ready]] = {}  # batched task name -> its chunks, ready to run
    for first in range(0, len(items), FETCH):
        window = items[first : first + FETCH]
        claims = [
            i
            for i, item in enumerate(window)
            if isinstance(item[2], wire.Claim) and item[2].key == claim_key(str(item[0]))
        ]
        fetched: dict[int, Any] = {}
        if claims:
            for i, raw in zip(claims, client.mget([window[i][2].key for i in claims]), strict=True):
                fetched[i] = raw
        for i, item in enumerate(window):
            task_id, name, chunk, _, meta = item[:5]
            key = item[6] if len(item) > 6 else reply_to
            expires = _expires_at(item[5])
            if expires is not None and expires < time.time():
                replies.add(key, reply_expired(task_id))
                if events is not None:
                    events.expired(item)
                continue
            task = app.tasks.get(name) if name != BATCH_TASK else None
            if events is not None:
                events.begin(item)
            try:
                if task is None:
                    raise NotRegistered(name)
                if isinstance(chunk, wire.Claim) and i not in fetched:  # only this task's own chunk, nothing else
                    raise EncodeError(f"claim check {chunk.key[:80]!r} is not this task's chunk: refused")
                if i in fetched:
                    if fetched[i] is None:
                        raise ClaimGoneError(
                            f"chunk {chunk.key} is no longer in Redis (evicted, expired or never stored)"
                        )
                    item = [*item[:2], wire.claimed(chunk, fetched[i]), *item[3:]]
                spec = batch_spec(task)
                if spec is not None:  # checked now (size, meta), run with the others of its task
                    kwargs = chunk_kwargs(task, item[2], meta, chunk_limit(task))
                    ready = together.setdefault(name, [])
                    ready.append(Ready(task_id, key, item, kwargs.get("meta")))
                    if len(ready) >= spec.max_chunks:
                        ran += _call_together(task, ready, replies, hostname, delivery_info, events)
                        ready.clear()
                        if renew is not None:
                            renew()
                    continue
                result = _call(task, item, hostname, delivery_info)
            except Exception as exc:
                replies.add(key, reply_error(task_id, type(exc).__name__, describe(exc)))
                if events is not None:
                    events.failed(task_id, exc)
            else:
                replies.add(key, reply_ok(task_id, result))
                if events is not None:
                    events.succeeded(task_id, result)
            ran += 1
            if renew is not None:
                renew()
    for name, ready in together.items():
        if ready:
            ran += _call_together(app.tasks[name], ready, replies, hostname, delivery_info, events)
            if renew is not None:
                renew()
    return ran


class Ready(NamedTuple):
    """A chunk of a batched task, checked and ready to run with the others: its id, reply list, item and meta."""

    task_id: Any
    key: str | None
    item: list[Any]
    meta: Chunk | None


def batch_spec(task: Any) -> Batch | None:
    """The :class:`~ocycle_dist.batched.Batch` of a task whose chunks may run together: a task of a
    :func:`~ocycle_dist.batched` function, its class's ``__call__`` ``ChunkTask``'s (a task class with a
    ``__call__`` of its own is called as Celery would, one chunk at a time). Looked up once per task."""
    cached = task.__dict__.get("_ocycle_batch", False)
    if cached is False:
        cls = type(task)
        spec = batch_of(task.run) if cls.__call__ is getattr(cls, "_ocycle_call", None) else None
        cached = task.__dict__["_ocycle_batch"] = spec
    return cached  # type: ignore[no-any-return]


def _call_together(task: Any, ready: list[Ready], replies: ReplyWriter, hostname: str | None,
                   delivery_info: dict[str, Any], events: ChunkEvents | None = None) -> int:  # fmt: skip
    """Run chunks of a batched task in one call, in a request context of their own (``ids``: their task ids);
    each result, or exception object, is its chunk's outcome; an exception raised fails them all."""
    spec = batch_spec(task)
    assert spec is not None
    ids = [r.task_id for r in ready]
    request = {
        "id": None, "ids": ids, "task": task.name, "args": [], "kwargs": {}, "hostname": hostname,
        "delivery_info": delivery_info, "is_eager": False, "called_directly": False, "retries": 0,
    }  # fmt: skip
    _task_stack.push(task)
    task.request_stack.push(Context(request))
    try:
        metas = [r.meta for r in ready] if spec.wants_metas else None
        results = call_batch(spec, [r.item[2] for r in ready], [r.item[3] for r in ready], metas)
    except Exception as exc:
        results = [exc] * len(ready)
    finally:
        task.request_stack.pop()
        _task_stack.pop()
    for r, result in zip(ready, results, strict=True):
        if isinstance(result, BaseException):
            replies.add(r.key, reply_error(r.task_id, type(result).__name__, describe(result)))
            if events is not None:
                events.failed(r.task_id, result)
        else:
            replies.add(r.key, reply_ok(r.task_id, result))
            if events is not None:
                events.succeeded(r.task_id, result)
    return len(ready)


def run_batch(task: Any, items: list[list[Any]], client: Any, settings: Any) -> None:
    """The body of the batch task: run its chunks, reply for each (in a pipeline every ~10 ms, and at the end)
    to the batch message's ``reply_to``. A reply that cannot be written is retried, then left to the producer's
    recovery: it never fails the batch (:mod:`.replies`)."""
    request = task.request
    replies = ReplyWriter(client, settings.result_ttl, settings.reply_secret)
    reply_to = request.reply_to if is_reply_key(request.reply_to) else None
    if settings.reply_secret and reply_to is not None:  # only the chunks whose seal checks out run
        seals = request.get(SEALS_HEADER) or []
        queue = (request.delivery_info or {}).get("routing_key")
        items = sealed_items(client, [[*item[:6], reply_to, seals[i] if i < len(seals) else None]
                                      for i, item in enumerate(items)], settings.reply_secret, queue)  # fmt: skip
    delivery_info = dict(request.delivery_info or {})
    events = for_run(task.app, request.hostname)
    flush_at = time.monotonic() + 0.01
    step = _run_size(task.app, items)
    for start in range(0, len(items), step):
        ran = run_items(task.app, client, items[start : start + step], replies, hostname=request.hostname,
                        delivery_info=delivery_info, reply_to=reply_to, events=events)  # fmt: skip
        count("chunks", ran, "batch")
        if time.monotonic() >= flush_at or start + step >= len(items):  # a long batch: the answers so far go now
            replies.send()
            if events is not None:
                events.flush()
            flush_at = time.monotonic() + 0.01


def _run_size(app: Any, items: list[list[Any]]) -> int:
    """How many of a batch message's chunks :func:`run_batch` runs before it sends their replies: 16, or a
    batched task's ``max_chunks`` (one call; a batch message holds chunks of one task)."""
    task = app.tasks.get(items[0][1]) if items and items[0][1] != BATCH_TASK else None
    spec = batch_spec(task) if task is not None else None
    return 16 if spec is None else spec.max_chunks


_BODY_FIRST = b'{"body": "'


def envelope_of(raw: bytes) -> tuple[dict[str, Any], Any]:
    """kombu's JSON envelope of a message and its body (a str, or the body's bytes in ``raw``).

    The producers' envelopes (and kombu's) begin with the body, base64 text: it is cut out of ``raw`` unread
    and the rest parsed alone (``json.loads`` would scan a batch message's whole body). Anything else (an
    escape in the body, a second "body" key...) is parsed whole."""
    if raw.startswith(_BODY_FIRST):
        start = len(_BODY_FIRST)
        end = raw.find(b'"', start)
        if end > 0 and raw.find(b"\\", start, end) < 0:
            envelope = json.loads(b'{"body": ""' + raw[end + 1 :])
            if isinstance(envelope, dict) and envelope.get("body") == "":
                return envelope, memoryview(raw)[start:end]
    envelope = json.loads(raw)
    return envelope, envelope["body"]


def _decode(app: Any, raw: bytes) -> list[list[Any]] | None:
    """The items of a message taken from the queue, or None when Celery must run it (not ours to run here).

    Raises:
        JunkError: no worker can take it (:mod:`.intake`): refused, not put back.
    """
    try:
        envelope, body = envelope_of(raw)
    except Exception:  # not JSON, not an object, no body: which of them, precisely
        check(raw)
        return None
    check_envelope(envelope)
    headers, props = envelope["headers"], envelope["properties"]
    if headers.get("eta") or headers.get("countdown") or props.get("body_encoding") != "base64":
        return None
    data = body_bytes(body)
    try:
        args, kwargs, embed = wire.loads(data)
        if kwargs or any((embed or {}).get(k) for k in ("callbacks", "errbacks", "chain", "chord")):
            return None
        if headers.get("task") == BATCH_TASK:  # each chunk replies to the batch's reply list
            reply_to = props.get("reply_to")
            if not is_reply_key(reply_to):
                return None
            seals = headers.get(SEALS_HEADER) or []
            return [[*item[:6], reply_to, seals[i] if i < len(seals) else None] for i, item in enumerate(args[0])]
        if len(args) != 2:
            return None
        meta = headers.get(META_HEADER) or {}
        return [[headers["id"], headers["task"], args[0], args[1], meta, headers.get("expires"), props.get("reply_to"),
                 headers.get(SEAL_HEADER)]]  # fmt: skip
    except Exception:  # anything unexpected: Celery's own path decides (and reports) what it is
        return None


def _send(client: Any, sha: str, keys: list[str], args: list[Any]) -> Any:
    """Send a take (EVALSHA of :data:`TAKE`) on a connection of its own; its reply is read by :func:`_receive`."""
    try:
        conn = client.connection_pool.get_connection()
    except TypeError:  # redis-py < 5.3 wants a command name
        conn = client.connection_pool.get_connection("EVALSHA")
    try:
        conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
    except BaseException:
        _discard(client, conn)
        raise
    return conn


def _receive(client: Any, conn: Any) -> Any:
    """The reply of a take sent by :func:`_send` (None when Redis lost the script: nothing was taken)."""
    try:
        got = client.parse_response(conn, "EVALSHA")
    except redis.exceptions.NoScriptError:
        client.connection_pool.release(conn)
        return None
    except BaseException:
        _discard(client, conn)
        raise
    client.connection_pool.release(conn)
    return got


def _discard(client: Any, conn: Any) -> None:
    conn.disconnect()  # a reply may be on its way on it
    client.connection_pool.release(conn)


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
                ahead = _send(client, script.sha, keys, take(ids, tags))
            replies = ReplyWriter(client, settings.result_ttl, settings.reply_secret)
            current[:] = [replies]
            back: list[tuple[bytes, bytes]] = []
            taken: list[list[Any]] = []  # the chunks of every message of the take: a batched task's run together
            for raw, tag in zip(messages, tags, strict=True):
                try:
                    items = _decode(task.app, raw)
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
                sent, ahead = ahead, None  # _receive releases its connection, whatever happens
                got = _receive(client, sent)
            else:
                got = script(keys=keys, args=take([], [])) if more and not back else None
            if back:  # no more
                deadline = 0.0
    finally:  # the lease now names nothing and lives on: deleting it would read as this process's death to a
        # producer whose reply is still on its way (it would send that chunk again)
        if ahead is not None:  # failed while a take was on its way: what it took is in kombu's unacked set
            _discard(client, ahead)
            took = True
        try:
            if took:  # else the take found the queue empty and left the lease as it was: one round trip less
                lease_clear = wire.dumps({"worker": name, "tasks": [], "tags": []})
                client.set(lease_key(name), lease_clear, px=int(lease * 1000))
        except Exception:  # it lapses
            log.debug("could not clear the lease of %s", name)
    return total
