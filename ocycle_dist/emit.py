"""BufferEmit: collect frames, cut them into chunks, hand each chunk to an executor.

The emitter knows nothing of where callbacks run: it submits ``callback(value, t0)`` to an executor
(``ocycle_dist.executors``) and follows the Future.

How a stream is cut. Positions count elements from the stream's start. A *window* opens at a position
(0, then every ``hop``), gets its t0 from the write that reaches it, and is emitted as soon as it is
complete: with ``clip`` (or ``hop``) it holds exactly ``size`` elements; without, it holds everything up to
the end of the write that filled it (ocycle 0.1.0's default), and the next window opens after it.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from .bufferio import ListIO, NumpyIO
from .chunk import Chunk
from .errors import ClosedError, ConfigError, FrameError
from .executors import REMOTE_MODES, check_mode, is_executor, make_executor
from .hotpath import NEVER, appender_class
from .kinds import Kind, kind_for
from .stats import Stats

log = logging.getLogger("ocycle_dist")

POLICIES = ("block", "drop_oldest", "drop_newest")
_HOST = socket.gethostname()


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__") or value.__index__() <= 0:
        raise ConfigError(name, value, "a positive integer")
    return int(value.__index__())


def _wants_meta(fn: Any) -> bool:
    try:
        return "meta" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _optional_callable(name: str, fn: Any) -> Any:
    if fn is not None and not callable(fn):
        raise ConfigError(name, fn, "a callable or None")
    return fn


def _sampler(value: Any) -> Callable[[], float] | None:
    if value is None or value is False or value == 0:
        return None
    if callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError("sampler", value, "seconds >= 0 or a callable returning them")
    return lambda: value  # type: ignore[no-any-return]


class BufferEmit:
    """Collect frames and call ``callback(chunk, t0)`` each time a chunk of ``size`` elements has filled.

    >>> import ocycle_dist as ocycle
    >>> seen = []
    >>> with ocycle.BufferEmit(lambda value, t0: seen.append(value), 4, clip=True) as b:
    ...     b.write(b"abc", t0=10.0)
    ...     b.write(b"defghij", t0=11.0)
    >>> seen
    [b'abcd', b'efgh']

    Args:
        callback: called as ``callback(value, t0)``, plus ``meta=Chunk(...)`` when it has a ``meta``
            parameter. For ``mode='celery'``, a Celery task or a task name.
        size: elements per chunk (bytes, characters, list items or numpy rows).
        asbuffer: hand the callback a file-like buffer (``io.BytesIO``...) instead of the value; it is
            recycled once the callback has finished.
        clip: chunks of exactly ``size``; the remainder starts the next chunk. Without it a chunk holds
            everything up to the end of the write that filled it.
        sampler: seconds, or a callable returning seconds: after each emit, writes are ignored until the
            emitting write's t0 plus that long; the clipped leftover is skipped too. Counted in ``skipped``.
        mode: ``'serial'``, ``'thread'``, ``'process'``, ``'celery'``, or an executor object.
        npool: workers of the thread/process pool (publishers for celery).
        on_done: ``on_done(result)`` after each chunk's callback returned (``meta=`` if it asks).
        new: a buffer factory deciding the stream's kind: ``io.BytesIO`` (default), ``io.StringIO``,
            ``ListIO``, ``NumpyIO`` or any class with ``write``/``getvalue``.
        hop: open a window every ``hop`` elements (overlapping windows when ``hop < size``); implies clip.
        rate: elements per second; a chunk's t0 is then ``t0 of the write it starts in + offset / rate``.
        on_error: ``on_error(exc)`` when a callback raises (``meta=`` if it asks); logged when None.
        max_inflight: chunks in flight (queued or running) at most.
        policy: when ``max_inflight`` is reached: ``'block'`` the writer, ``'drop_oldest'`` queued
            chunk or ``'drop_newest'``. Drops are counted in ``stats().dropped``.
        stream: the stream id carried by each chunk's metadata; results of the celery mode are routed by it.
            Default: ``<callback>-<size>@<host>-<pid>``; give your own to take over a spool after a restart.
        dtype: numpy streams: the dtype (else taken from the first frame).
        shape: numpy streams: the shape of one element (else taken from the first frame).
        **executor_options: passed to the executor (``broker=``, ``app=`` for celery).
    """

    new: Callable[[], Any] | None = None

    def __init__(
        self,
        callback: Any,
        size: int,
        *,
        asbuffer: bool = False,
        clip: bool = False,
        sampler: Any = None,
        mode: Any = "serial",
        npool: int = 10,
        on_done: Callable[..., Any] | None = None,
        new: Callable[[], Any] | None = None,
        hop: int | None = None,
        rate: float | None = None,
        on_error: Callable[..., Any] | None = None,
        max_inflight: int = 256,
        policy: str = "block",
        stream: str | None = None,
        dtype: Any = None,
        shape: tuple[int, ...] | None = None,
        **executor_options: Any,
    ) -> None:
        self._config = {k: v for k, v in locals().items() if k not in ("self", "executor_options", "__class__")}
        self._config.update(executor_options)
        self.size = _positive_int("size", size)
        self.hop = self.size if hop is None else _positive_int("hop", hop)
        if self.hop > self.size:
            raise ConfigError("hop", hop, f"an integer from 1 to size={self.size}")
        self.clip = bool(clip) or hop is not None
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0):
            raise ConfigError("rate", rate, "a positive number of elements per second, or None")
        self.rate = rate
        check_mode(mode)
        if policy not in POLICIES:
            raise ConfigError("policy", policy, f"one of {', '.join(map(repr, POLICIES))}")
        self.policy = policy
        self.max_inflight = _positive_int("max_inflight", max_inflight)
        self.npool = _positive_int("npool", npool)
        self.mode = mode
        self._executor_options = executor_options
        remote = mode in REMOTE_MODES
        if not (callable(callback) or (remote and isinstance(callback, str))):
            raise ConfigError("callback", callback, "a callable (or, for mode='celery', a task or task name)")
        self.callback = callback
        self.on_done = _optional_callable("on_done", on_done)
        self.on_error = _optional_callable("on_error", on_error)
        self.sampler = _sampler(sampler)
        self.asbuffer = bool(asbuffer)
        if self.asbuffer and remote:
            raise ConfigError("asbuffer", asbuffer, "False with mode='celery' (a remote task gets the value)")
        new = new if new is not None else type(self).new
        self._kind: Kind = kind_for(new, dtype=dtype, shape=shape)
        self._new_buffer = new if new is not None else self._kind.buffer_factory
        if stream is None:  # unique per process: results are routed by stream id
            stream = f"{getattr(callback, '__name__', callback)}-{self.size}@{_HOST}-{os.getpid()}"
        self.stream = str(stream)
        self._meta_cb, self._meta_done, self._meta_err = map(_wants_meta, (callback, on_done, on_error))

        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._inflight: dict[int, Future[Any] | None] = {}
        self._emitted_at: dict[int, float] = {}  # seq -> monotonic time of emit, until the chunk settles
        self._latencies: deque[float] = deque(maxlen=1000)
        self._free_buffers: list[Any] = []
        self._executor: Any = None
        self._owns_executor = False
        self._counts = dict.fromkeys(("skipped", "emitted", "done", "failed", "dropped"), 0)
        self._skipped_leftover = 0  # skipped elements also counted in the stream's end (sampler leftovers)
        self._seq = 0
        self._segs: list[Any] = []  # frames kept, oldest first
        self._ends = [0]  # _ends[0]: position of _segs[0]; _ends[i + 1]: position after _segs[i]
        self._hot = appender_class()(self._segs, self._ends, self._kind.fast_type, 1, self._advance, self._other)
        self.write = self._hot.write  # type: ignore[method-assign]  # the C hot path when built: no Python frame per write
        self._reset_windows(0)
        self._closed = False
        self._paused = False
        self._pause_until = 0.0
        self._open_executor()  # like ocycle 0.1.0; a bad broker URL fails here, a durable spool is taken over

    # ---- the stream -------------------------------------------------------------------------------

    def _reset_windows(self, end: int) -> None:
        self._segs.clear()
        self._ends[:] = [end]
        self._next_start = end  # where the next window opens
        self._starts: deque[tuple[int, float]] = deque()  # open windows: (start, t0)
        self._hot.threshold = end + 1  # _advance() is due when the stream's end reaches this

    @property
    def _end(self) -> int:
        return self._ends[-1]

    def write(self, data: Any, t0: float | None = None) -> None:
        """Write one frame; emit every chunk it completes.

        Args:
            data: a frame of the stream's kind (bytes-like, str, list or numpy array).
            t0: the time of the frame's first element; ``time.time()`` when None.

        Raises:
            FrameError: ``data`` does not fit the stream; nothing is written.
            ClosedError: the emitter is closed.
        """
        self._hot.write(data, t0)  # instances use self._hot.write directly (see __init__)

    def _other(self, data: Any, t0: float | None) -> None:
        """write() of a frame that is not of the stream's exact fast type, or while closed or pausing."""
        if self._closed:
            raise ClosedError(f"write() on a closed {type(self).__name__} (stream {self.stream!r}); call open() first")
        frozen, n = self._kind.accept(data)
        self._push(frozen, n, t0)

    def _push(self, frozen: Any, n: int, t0: float | None) -> None:
        """Append a checked, frozen frame of ``n`` elements."""
        if self._paused:
            now = time.time() if t0 is None else t0
            if now < self._pause_until:
                self._counts["skipped"] += n
                return
            self._paused = False
            self._hot.fast_type = self._kind.fast_type
            self._next_start = self._end
            self._hot.threshold = self._end + 1
            t0 = now
        self._segs.append(frozen)
        self._ends.append(self._ends[-1] + n)
        if self._ends[-1] >= self._hot.threshold:
            self._advance(n, t0)

    def _advance(self, n: int, t0: float | None) -> None:
        """Open the windows the last write reached and emit those it completed."""
        end = self._ends[-1]
        if t0 is None:
            t0 = time.time()
        elif isinstance(t0, bool) or not isinstance(t0, (int, float)):
            self._ends.pop()
            self._segs.pop()
            raise FrameError(f"t0={t0!r} is invalid: expected a number of seconds or None")
        size, starts, rate, clip = self.size, self._starts, self.rate, self.clip
        s = self._next_start
        if s < end:  # windows open in this write: their t0 counts from the write's first element
            w0 = end - n
            if not clip:
                starts.append((s, t0 + (s - w0) / rate if rate else t0))
                s = NEVER
            while s < end:
                starts.append((s, t0 + (s - w0) / rate if rate else t0))
                s += self.hop
            self._next_start = s
        while starts and starts[0][0] + size <= end:
            s, t = starts.popleft()
            e = s + size if clip else end
            if not clip:
                self._next_start = e
            self._emit(self._take(s, e), Chunk(self.stream, self._seq, t, e - s, s))
            if self.sampler is not None:
                self._pause(t0, end - e)
                return
        self._trim()

    def _take(self, s: int, e: int) -> Any:
        """The elements ``s:e`` of the stream as one value."""
        ends, segs = self._ends, self._segs
        i = bisect_right(ends, s) - 1  # segs[i] holds element s
        j = bisect_left(ends, e, i) - 1  # segs[j] holds element e - 1
        if i == j:
            seg, a = segs[i], s - ends[i]
            return self._kind.join([seg if a == 0 and e == ends[i + 1] else seg[a : e - ends[i]]])
        pieces = segs[i : j + 1]
        if s > ends[i]:
            pieces[0] = pieces[0][s - ends[i] :]
        if e < ends[j + 1]:
            pieces[-1] = pieces[-1][: e - ends[j]]
        return self._kind.join(pieces)

    def _trim(self) -> None:
        """Forget the frames no open window needs; set the next threshold."""
        keep = self._starts[0][0] if self._starts else min(self._next_start, self._ends[-1])
        k = bisect_right(self._ends, keep) - 1  # segs[:k] end at or before keep
        if k > 0:
            del self._segs[:k]
            del self._ends[:k]
        due = self._starts[0][0] + self.size if self._starts else NEVER
        self._hot.threshold = min(self._next_start + 1, due, NEVER)

    def _pause(self, now: float, leftover: int) -> None:
        """Start a sampler pause after an emit; the rest of the stream so far is skipped."""
        delay = self.sampler() if self.sampler else 0.0
        self._skipped_leftover += leftover
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay >= 0:
            self._counts["skipped"] += leftover
            self._reset_windows(self._end)
            raise ConfigError("sampler", self.sampler, f"seconds >= 0 from the callable, it returned {delay!r}")
        self._counts["skipped"] += leftover
        self._reset_windows(self._end)
        self._next_start = self._hot.threshold = NEVER
        self._pause_until = now + delay
        self._paused = True
        self._hot.fast_type = None

    def flush(self) -> int:
        """Emit the open windows now, even if shorter than ``size`` (marked ``partial``).

        Returns:
            The number of chunks emitted.
        """
        count = 0
        with self._lock:
            if not self._starts and self._next_start < self._end:
                self._starts.append((self._next_start, time.time()))
            for s, t in list(self._starts):
                if s < self._end:
                    self._emit(self._take(s, self._end), Chunk(self.stream, self._seq, t, self._end - s, s, True))
                    count += 1
            self._reset_windows(self._end)
        return count

    # ---- chunks to the executor ---------------------------------------------------------------------

    def _emit(self, value: Any, meta: Chunk) -> None:
        self._seq += 1
        self._emitted_at[meta.seq] = time.monotonic()
        self._counts["emitted"] += 1
        buffer = None
        if self.asbuffer:
            buffer = self._free_buffers.pop() if self._free_buffers else self._new_buffer()
            buffer.write(value)
            buffer.seek(0)
            value = buffer
        if self._inline:  # serial mode: call now, no Future, nothing can be in flight
            kwargs = {"meta": meta} if self._meta_cb else {}
            try:
                result = self.callback(value, meta.t0, **kwargs)
            except Exception as exc:
                self._settle(meta, buffer, "failed", exc)
            else:
                self._settle(meta, buffer, "done", result)
            return
        if not self._admit(meta.seq):
            self._emitted_at.pop(meta.seq, None)
            self._release(buffer)
            return
        executor = self._executor or self._open_executor()
        kwargs = {"meta": meta} if self._meta_cb or getattr(executor, "wants_meta", False) else {}
        try:
            future = executor.submit(self.callback, value, meta.t0, **kwargs)
        except BaseException:
            with self._lock:
                self._inflight.pop(meta.seq, None)
                self._emitted_at.pop(meta.seq, None)
                self._counts["emitted"] -= 1
                self._seq -= 1
            self._release(buffer)
            raise
        future.add_done_callback(partial(self._finished, meta, buffer))
        with self._lock:
            if meta.seq in self._inflight:
                self._inflight[meta.seq] = future

    def _admit(self, seq: int) -> bool:
        """Make room for one more chunk under the overload policy; False when it is dropped."""
        with self._lock:
            while len(self._inflight) >= self.max_inflight:
                if self.policy == "block":
                    self._idle.wait()
                elif self.policy == "drop_newest" or not self._cancel_oldest():
                    self._counts["dropped"] += 1
                    return False
            self._inflight[seq] = None
            return True

    def _cancel_oldest(self) -> bool:
        return any(future is not None and future.cancel() for future in list(self._inflight.values()))

    def _finished(self, meta: Chunk, buffer: Any, future: Future[Any]) -> None:
        """Done-callback of each chunk's Future."""
        if future.cancelled():
            self._settle(meta, buffer, "dropped", None)
        elif future.exception() is not None:
            self._settle(meta, buffer, "failed", future.exception())
        else:
            self._settle(meta, buffer, "done", future.result())

    def _settle(self, meta: Chunk, buffer: Any, outcome: str, value: Any) -> None:
        """Count a finished chunk, recycle its buffer, then call on_done or on_error."""
        started = self._emitted_at.pop(meta.seq, None)
        if started is not None and outcome != "dropped":
            self._latencies.append(time.monotonic() - started)
        if self._inline:  # the writer's own thread: nothing in flight, nobody waiting
            self._counts[outcome] += 1
        else:
            with self._lock:
                self._inflight.pop(meta.seq, None)
                self._counts[outcome] += 1
                self._idle.notify_all()
        self._release(buffer)
        if outcome == "failed":
            self._report(value, meta)
        elif outcome == "done" and self.on_done is not None:
            try:
                self._call(self.on_done, value, meta, self._meta_done)
            except Exception as err:  # an on_done bug must not vanish in a pool thread
                self._report(err, meta)

    def _report(self, exc: BaseException, meta: Chunk) -> None:
        if self.on_error is None:
            log.error("stream %s chunk %d failed: %r", meta.stream, meta.seq, exc, exc_info=exc)
            return
        try:
            self._call(self.on_error, exc, meta, self._meta_err)
        except Exception:
            log.exception("on_error raised for stream %s chunk %d", meta.stream, meta.seq)

    @staticmethod
    def _call(fn: Callable[..., Any], arg: Any, meta: Chunk, with_meta: bool) -> None:
        if with_meta:
            fn(arg, meta=meta)
        else:
            fn(arg)

    def _release(self, buffer: Any) -> None:
        if buffer is not None:
            buffer.seek(0)
            buffer.truncate(0)
            self._free_buffers.append(buffer)

    # ---- life cycle -----------------------------------------------------------------------------------

    def _open_executor(self) -> Any:
        with self._lock:
            if self._executor is None:
                self._inline = self.mode == "serial"
                if is_executor(self.mode):
                    self._executor, self._owns_executor = self.mode, False
                else:
                    self._executor = make_executor(self.mode, self.npool, **self._executor_options)
                    self._owns_executor = True
                if callable(getattr(self._executor, "adopt", None)):
                    self._adopt(self._executor.adopt(self.stream))
            return self._executor

    def _adopt(self, chunks: list[tuple[Chunk, Future[Any]]]) -> None:
        """Follow chunks an earlier producer of this stream emitted and a durable executor kept."""
        for meta, future in chunks:
            self._inflight[meta.seq] = future
            self._counts["emitted"] += 1
            self._seq = max(self._seq, meta.seq + 1)
            future.add_done_callback(partial(self._finished, meta, None))

    def open(self, npool: int | None = None, mode: Any = None, reopen: bool = False) -> BufferEmit:
        """Start the executor and accept writes (again, after ``close()``)."""
        if reopen:
            self.close()
        if mode is not None and mode != self.mode:
            check_mode(mode)
            self.close()
            self.mode = mode
        if npool is not None:
            self.npool = _positive_int("npool", npool)
        self._closed = False
        if not self._paused:
            self._hot.fast_type = self._kind.fast_type
        self._open_executor()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no chunk is in flight. Returns False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._inflight, timeout)

    def close(self, wait: bool = True, flush: bool = False) -> None:
        """Stop accepting writes.

        Args:
            wait: wait for the chunks in flight to finish (and their on_done/on_error).
            flush: first emit the partial last chunk(s), as ``flush()`` does.
        """
        if flush and not self._closed:
            self.flush()
        self._closed = True
        self._hot.fast_type = None
        if wait:
            self.wait()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None and self._owns_executor:
            executor.shutdown(wait=wait)

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        with self._lock:
            c = self._counts
            latencies = sorted(self._latencies)
            return Stats(
                written=self._end + c["skipped"] - self._skipped_leftover,
                buffered=self._end - (self._starts[0][0] if self._starts else min(self._next_start, self._end)),
                in_flight=len(self._inflight),
                spooled_bytes=getattr(self._executor, "spooled_bytes", 0),
                latency_p50=latencies[len(latencies) // 2] if latencies else 0.0,
                latency_p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0,
                **c,
            )

    def __enter__(self) -> BufferEmit:
        return self.open()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return dict(self._config)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} stream={self.stream!r} size={self.size} hop={self.hop} clip={self.clip} "
            f"mode={self.mode!r} kind={self._kind.name}>"
        )


class NumpyEmit(BufferEmit):
    """A BufferEmit of numpy arrays; the first axis is time."""

    new = NumpyIO


class ListEmit(BufferEmit):
    """A BufferEmit of lists of items."""

    new = ListIO
