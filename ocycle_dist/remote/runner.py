"""The worker's chunk runtime: each chunk run as its task would be, its outcome replied on its own.

Every way a chunk reaches a worker runs through here: a chunk message (:class:`.task.ChunkTask`), a batch
message (:mod:`.batch`), a queue's drain (:mod:`.drain`). :func:`run_items` runs items (``[task id, task name,
chunk, t0, meta, expires at, reply list?]``): the task's function, the claim check fetched (:func:`unclaim`:
only the task's own chunk, one place for the refusal), the size check, ``meta``; its exception caught and its
outcome added to a :class:`.replies.ReplyWriter`: one failing chunk does not fail its neighbours. The chunks of
a batched task (:func:`ocycle_dist.batched`: a model that runs many inputs at once) are checked one by one,
then run in one call of the batch function, up to the task's ``max_chunks`` a call. What Celery does per
message and not per chunk: signals (``task_prerun``...), retries (``self.retry()`` is an error of that chunk),
rate limits and revocation.
"""

from __future__ import annotations

import inspect
import time
from datetime import datetime
from typing import Any, NamedTuple

from celery._state import _task_stack
from celery.app.task import Context
from celery.exceptions import NotRegistered, TimeLimitExceeded

from ..batched import Batch, batch_of, call_batch
from ..chunk import Chunk
from ..errors import ClaimGoneError, EncodeError
from . import wire
from .events import ChunkEvents
from .protocol import BATCH_TASK, META_HEADER, claim_key, reply_error, reply_expired, reply_ok
from .redis_client import connect
from .replies import ReplyWriter
from .settings import app_settings

FETCH = 64  # run_items fetches the claimed chunks of this many items at a time, in one MGET

_clients: dict[str, Any] = {}


def broker_client(app: Any) -> Any:
    """The Redis client of ``app``'s broker in this process (one per broker URL, made on first use)."""
    url = app.conf.broker_url
    if url not in _clients:
        _clients[url] = connect(url, master_name=app_settings(app).sentinel_master)
    return _clients[url]


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


def own_claim(task_id: Any, chunk: Any) -> bool:
    """Whether ``chunk`` is a claim check naming the chunk of task ``task_id`` (``claim_key(task id)``): the only
    key a task may read."""
    return isinstance(chunk, wire.Claim) and chunk.key == claim_key(str(task_id))


def unclaim(task_id: Any, chunk: Any, raw: Any) -> Any:
    """The chunk a claim check stands for, from ``raw``, what Redis holds at its key (fetched by the caller only
    for its own claim: :func:`own_claim`). Raises EncodeError for a claim of another key (refused unread) and
    ClaimGoneError when the chunk is gone."""
    if not own_claim(task_id, chunk):
        raise EncodeError(f"claim check {chunk.key[:80]!r} is not this task's chunk: refused")
    if raw is None:
        raise ClaimGoneError(f"chunk {chunk.key} is no longer in Redis (evicted, expired or never stored)")
    return wire.claimed(chunk, raw)


def _call(task: Any, item: list[Any], hostname: str | None, delivery_info: dict[str, Any]) -> Any:
    """Run one chunk as its task message would run: in a request context carrying its metadata.

    A task of :class:`.task.ChunkTask` (its ``__call__`` not overridden) is run here directly in one fresh
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
        claims = [i for i, item in enumerate(window) if own_claim(item[0], item[2])]
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
                if isinstance(chunk, wire.Claim):  # only this task's own chunk was fetched, nothing else
                    item = [*item[:2], unclaim(task_id, chunk, fetched.get(i)), *item[3:]]
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
