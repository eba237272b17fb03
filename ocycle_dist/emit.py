"""BufferEmit: collect frames, cut them into chunks, hand each chunk to an executor.

Three parts, one module each: :class:`~ocycle_dist.windows.Windows` cuts the stream into chunks,
:class:`~ocycle_dist.inflight.InFlight` bounds and counts the chunks between emit and outcome, and the
executor (:mod:`ocycle_dist.executors`) runs ``callback(value, t0)``. This module joins them, checks the
arguments and fires ``on_done``/``on_error``. It knows nothing of Celery: a remote mode is an executor.
"""

from __future__ import annotations

import inspect
import io
import logging
import os
import pickle
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from typing import Any

from .bufferio import BufferFactory, ListIO, NumpyIO
from .callbacks import Mailbox
from .checks import finite
from .chunk import Chunk
from .compat import OcycleCompat
from .errors import ClosedError, ConfigError, ExpiredError
from .executors import REMOTE_MODES, ChunkExecutor, as_chunk_executor, check_mode, is_executor, make_executor
from .inflight import POLICIES, InFlight, p50_p99
from .kinds import Kind, kind_for
from .pieces import Pieces
from .stats import Stats
from .windows import Windows

log = logging.getLogger("ocycle_dist")

_HOST = socket.gethostname()
LOCAL_MAX_INFLIGHT = 256  # max_inflight's default for executors without a budget of their own
ORDER_HOLD = 10.0  # ordered=True: seconds an outcome may wait for those of earlier chunks


def _seq_of(item: tuple[Any, ...]) -> int:
    """The sequence number of an outcome queued for the callbacks (its Chunk first)."""
    return int(item[0].seq)


MAX_ELEMENTS = 2**40  # the largest size and hop: about 10**12 elements, a TiB of bytes per chunk


def _positive_int(name: str, value: Any, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__") or value.__index__() <= 0:
        raise ConfigError(name, value, "a positive integer" + (f" up to {maximum}" if maximum else ""))
    if maximum is not None and value.__index__() > maximum:
        raise ConfigError(name, value, f"a positive integer up to {maximum} (2**{maximum.bit_length() - 1})")
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


def _check_picklable(mode: Any, callback: Any) -> None:
    """A process pool pickles the callback for every chunk: refuse one that cannot be, now."""
    if not (mode == "process" or isinstance(mode, ProcessPoolExecutor)):
        return
    try:
        pickle.dumps(callback)
    except Exception as exc:
        raise ConfigError(
            "callback",
            callback,
            f"a picklable callable for mode='process', e.g. a module-level function, not a lambda or a local"
            f" function ({type(exc).__name__}: {exc})",
        ) from None


def _sampler(value: Any) -> Callable[[], float] | None:
    if value is None or value is False or value == 0:
        return None
    if callable(value):
        return value  # type: ignore[no-any-return]
    if not finite(value):
        raise ConfigError("sampler", value, "seconds >= 0 (finite) or a callable returning them")
    return lambda: value  # type: ignore[no-any-return]


class BufferEmit(OcycleCompat):
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
        size: elements per chunk (bytes, characters, list items or numpy rows), at most 2**40.
        asbuffer: hand the callback a file-like buffer (``io.BytesIO``...) instead of the value; it is
            recycled once the callback has finished.
        clip: chunks of exactly ``size``; the remainder starts the next chunk. Without it a chunk holds
            everything up to the end of the write that filled it.
        sampler: seconds, or a callable returning seconds: after each emit, writes are ignored until the
            emitting write's t0 plus that long; the clipped leftover is skipped too. Counted in ``skipped``.
            The callable is asked before the chunk is sent: if it raises, the write raises and keeps nothing.
        mode: ``'serial'``, ``'thread'``, ``'process'``, ``'celery'``, or an executor object.
        npool: workers of the thread or process pool (other modes do not use it).
        on_done: ``on_done(result)`` after each chunk's callback returned (``meta=`` if it asks).
        new: a buffer factory deciding the stream's kind: ``io.BytesIO`` (default), ``io.StringIO``,
            ``ListIO``, ``NumpyIO`` or any class with ``write``/``getvalue``.
        hop: open a window every ``hop`` elements (overlapping windows when ``hop < size``); implies clip.
            From 1 to ``size``.
        rate: elements per second; a chunk's t0 is then ``t0 of the write it starts in + offset / rate``.
        on_error: ``on_error(exc)`` when a callback raises, or its chunk cannot be handed to the executor
            (``EncodeError``: over ``max_chunk_bytes``, or not encodable), ``meta=`` if it asks; logged when None.
        max_inflight: chunks in flight (handed to the executor, their outcome not yet handled) at most.
            Default: 256 for the local modes; for ``mode='celery'`` no count bound (the broker holds the
            backlog; the producer's spool bounds the chunks waiting for results by bytes instead).
        policy: what happens when the bound is reached (``max_inflight``, or in the celery mode the spool's
            byte budget): ``'block'`` the writer, ``'drop_oldest'`` (the oldest chunk not yet done) or
            ``'drop_newest'`` (the new chunk). Drops are counted in ``stats().dropped``. Default:
            ``'block'`` for the local modes (a pool's backpressure), ``'drop_oldest'`` for the celery mode
            (a live source never waits; the freshest chunks win). ``'block'`` suits an offline replay
            read faster than real time through slow workers.
        stream: the stream id carried by each chunk's metadata; results of the celery mode are routed by it.
            Default: ``<callback>-<size>@<host>-<pid>``; give your own to take over a spool after a restart.
        dtype: numpy streams: the dtype (else taken from the first frame).
        shape: numpy streams: the shape of one element, a tuple (else taken from the first frame).
        max_gap: with ``rate``: seconds a write's t0 may come after the previous write's end (its t0 +
            its length / rate) before it is a gap in the input (an audio driver's overflow drops blocks):
            the open windows are then emitted as partial chunks and new ones open at that frame, so that no
            chunk spans a gap; counted in ``stats().gaps``. 0 turns it off.
        ordered: ``on_done``/``on_error`` in stream order: an outcome waits for those of earlier chunks still
            in flight, up to ``ordered`` seconds (``True``: 10 s), after which it runs anyway (counted in
            ``stats().out_of_order``). Default: in the order outcomes arrive.
        **executor_options: passed to the executor; for celery: ``broker=``, ``app=``, ``settings=``,
            ``queue=`` (this emitter's Celery queue), ``expires=`` (seconds after emit a chunk may still start),
            ``spool=``.

    Raises:
        ConfigError: an argument is invalid; the message names it and its value. In ``mode='process'`` the
            callback must be picklable (a module-level function): checked here, not at the first chunk.
    """

    new: Any = BufferFactory(io.BytesIO)  # the buffer factory; on an instance, the one it uses

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
        max_inflight: int | None = None,
        policy: str | None = None,
        stream: str | None = None,
        dtype: Any = None,
        shape: tuple[int, ...] | None = None,
        max_gap: float = 0.05,
        ordered: bool | float = False,
        **executor_options: Any,
    ) -> None:
        self._config = {k: v for k, v in locals().items() if k not in ("self", "executor_options", "__class__")}
        self._config.update(executor_options)
        self.size = _positive_int("size", size, MAX_ELEMENTS)
        self.hop = self.size if hop is None else _positive_int("hop", hop, MAX_ELEMENTS)
        if self.hop > self.size:
            raise ConfigError("hop", hop, f"an integer from 1 to size={self.size}")
        self.clip = bool(clip) or hop is not None
        if rate is not None and not finite(rate, above=0):
            raise ConfigError("rate", rate, "a positive, finite number of elements per second, or None")
        self.rate = rate
        if not finite(max_gap):
            raise ConfigError("max_gap", max_gap, "seconds >= 0 (0: no gap detection)")
        self.max_gap = float(max_gap)
        if ordered is True:
            ordered = ORDER_HOLD
        if isinstance(ordered, bool):
            ordered = float(ordered)
        if not finite(ordered):
            raise ConfigError("ordered", ordered, "True, False, or the seconds an outcome may wait for earlier ones")
        self.ordered = float(ordered)
        check_mode(mode)
        if policy is None:
            bounded = mode in REMOTE_MODES or (is_executor(mode) and as_chunk_executor(mode).budget is not None)
            policy = "drop_oldest" if bounded else "block"
        if policy not in POLICIES:
            raise ConfigError("policy", policy, f"one of {', '.join(map(repr, POLICIES))}")
        self.policy = policy
        self.max_inflight = None if max_inflight is None else _positive_int("max_inflight", max_inflight)
        self.npool = _positive_int("npool", npool)
        self.mode = mode
        self._executor_options = executor_options
        remote = mode in REMOTE_MODES
        if not (callable(callback) or (remote and isinstance(callback, str))):
            raise ConfigError("callback", callback, "a callable (or, for mode='celery', a task or task name)")
        _check_picklable(mode, callback)
        self.callback = callback
        self.on_done = _optional_callable("on_done", on_done)
        self.on_error = _optional_callable("on_error", on_error)
        self.sampler = _sampler(sampler)
        self.asbuffer = bool(asbuffer)
        if self.asbuffer and remote:
            raise ConfigError("asbuffer", asbuffer, "False with mode='celery' (a remote task gets the value)")
        new = new if new is not None else type(self).new
        self._kind: Kind = kind_for(new, dtype=dtype, shape=shape)
        if remote:
            self._kind.for_wire()  # numpy: refuse the dtypes the wire cannot carry faithfully, at the first frame
        self._new_buffer = new if new is not None else self._kind.buffer_factory
        if stream is None:  # unique per process: results are routed by stream id
            stream = f"{getattr(callback, '__name__', callback)}-{self.size}@{_HOST}-{os.getpid()}"
        self.stream = str(stream)
        self._meta_cb, self._meta_done, self._meta_err = map(_wants_meta, (callback, on_done, on_error))

        self._inflight = InFlight(self.max_inflight, policy, name=f"stream {self.stream!r}")
        self._callbacks = Mailbox(
            self._handle,
            order=_seq_of if self.ordered else None,
            earlier_pending=self._inflight.waiting_before,
            hold=self.ordered,
        )
        self._expiry_logged = False
        self._free_buffers: list[Any] = []
        self._executor: ChunkExecutor | None = None
        self._owns_executor = False
        self._closed = False
        self.windows = Windows(
            self._kind,
            self.size,
            self.hop,
            self.clip,
            rate,
            self.sampler,
            self.stream,
            self._emit,
            self._other,
            max_gap=self.max_gap,
        )
        self.write = self.windows.hot.write  # type: ignore[method-assign]  # the C hot path: no Python frame per write
        self._open_executor()  # like ocycle 0.1.0; a bad broker URL fails here, a durable spool is taken over

    # ---- the stream -------------------------------------------------------------------------------

    def write(self, data: Any, t0: float | None = None) -> None:
        """Write one frame; emit every chunk it completes.

        Args:
            data: a frame of the stream's kind (bytes-like, str, list or numpy array).
            t0: the time of the frame's first element; ``time.time()`` when None.

        Raises:
            FrameError: ``data`` does not fit the stream; nothing is written.
            ClosedError: the emitter is closed.
        """
        self.windows.hot.write(data, t0)  # instances use windows.hot.write directly (see __init__)

    def _other(self, data: Any, t0: float | None) -> None:
        """write() of a frame that is not of the stream's exact fast type, or while closed or pausing."""
        self._check_open()
        frozen, n = self._kind.accept(data)
        self.windows.push(frozen, n, t0)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"write() on a closed {type(self).__name__} (stream {self.stream!r}); call open() first")

    def feed(self, frozen: Any, n: int, t0: float, *, compare: bool = True) -> None:
        """Write a frame already checked and frozen by ``self.kind.accept`` (how a ``Tap`` shares one frame).

        With ``compare=False`` the ``t0`` stands for "now" (``write(t0=None)``) and is not compared with
        the previous write's.

        Raises:
            ClosedError: the emitter is closed.
            FrameError: ``t0`` is invalid; nothing was written.
        """
        self._check_open()
        self.windows.push(frozen, n, t0, compare=compare)

    @property
    def kind(self) -> Kind:
        """What the stream is made of: checks, freezes and joins its frames."""
        return self._kind

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (and ``open()`` not since)."""
        return self._closed

    @property
    def executor(self) -> ChunkExecutor | None:
        """The executor running the callbacks (None once closed)."""
        return self._executor

    def flush(self) -> int:
        """Emit the open windows now, even if shorter than ``size`` (marked ``partial``).

        Returns:
            The number of chunks emitted.
        """
        return self.windows.flush()

    # ---- chunks to the executor ---------------------------------------------------------------------

    def _emit(self, value: Any, meta: Chunk) -> None:
        """Hand one chunk to the executor (Windows calls this for every complete chunk)."""
        executor = self._executor or self._open_executor()
        inline = executor.inline  # serial: call now in the writer's thread: no Future, no lock, no callback thread
        started = self._inflight.started_inline() if inline else self._inflight.emitted(meta.seq)
        buffer = None
        if type(value) is Pieces and (self.asbuffer or not executor.joins_later):
            value = value.join()  # the executor changed since the windows were told to leave it to it
        if self.asbuffer:
            buffer = self._free_buffers.pop() if self._free_buffers else self._new_buffer()
            buffer.write(value)
            buffer.seek(0)
            value = buffer
        if inline:
            kwargs = {"meta": meta} if self._meta_cb else {}
            try:
                result = executor.call(self.callback, value, meta.t0, **kwargs)
            except Exception as exc:
                outcome, result = "failed", exc
            else:
                outcome = "done"
            try:
                self._settle(meta, buffer, outcome, result)
            finally:
                self._inflight.finished_inline(outcome, started)
            return
        failure: Exception | None = None
        cost = 0
        if executor.budget is not None:
            try:
                cost = executor.cost(value)
            except Exception as exc:  # EncodeError: this chunk's outcome, counted and reported in order
                failure = exc
        if failure is not None:
            self._inflight.track(meta.seq)
        elif not self._inflight.admit(meta.seq, cost):
            self._release(buffer)
            return
        kwargs = {"meta": meta} if self._meta_cb or executor.wants_meta else {}
        try:
            if failure is not None:
                raise failure
            future = executor.submit(self.callback, value, meta.t0, **kwargs)
        except Exception as exc:  # the chunk's outcome, counted and reported in order; the stream goes on
            future = Future()
            future.set_exception(exc)
        except BaseException:
            self._inflight.unemit(meta.seq)
            self._release(buffer)
            raise
        future.add_done_callback(partial(self._finished, meta, buffer, executor))
        self._inflight.submitted(meta.seq, future)

    def _finished(self, meta: Chunk, buffer: Any, executor: ChunkExecutor, future: Future[Any]) -> None:
        """Done-callback of each chunk's Future, on whatever thread resolved it.

        A dropped chunk (cancelled) is counted at once: no callback runs for it. Any other outcome goes to
        this emitter's mailbox, where its on_done/on_error runs (:mod:`ocycle_dist.callbacks`).
        """
        if future.cancelled():
            self._handle(meta, buffer, executor, future)
        else:
            self._callbacks.put(meta, buffer, executor, future)

    def _handle(self, meta: Chunk, buffer: Any, executor: ChunkExecutor, future: Future[Any]) -> None:
        """On a callback thread, one at a time per emitter: run on_done/on_error, tell the executor, count."""
        if future.cancelled():
            outcome, value = "dropped", None
        elif isinstance(future.exception(), ExpiredError):
            outcome, value = "expired", future.exception()
        elif future.exception() is not None:
            outcome, value = "failed", future.exception()
        else:
            outcome, value = "done", future.result()
        try:
            self._settle(meta, buffer, outcome, value)
        finally:
            try:
                executor.settled(future)
            finally:
                self._inflight.settle(meta.seq, outcome)

    def _settle(self, meta: Chunk, buffer: Any, outcome: str, value: Any) -> None:
        """Recycle a finished chunk's buffer, then call on_done or on_error."""
        self._release(buffer)
        if outcome == "failed":
            self._report(value, meta)
        elif outcome == "expired":
            self._expired(value, meta)
        elif outcome == "done" and self.on_done is not None:
            try:
                self._call(self.on_done, value, meta, self._meta_done)
            except Exception as err:  # an on_done bug must not vanish in a pool thread
                self._report(err, meta)

    def _expired(self, exc: BaseException, meta: Chunk) -> None:
        """An expired chunk: ``on_error`` when given, else one warning per emitter (all are counted)."""
        if self.on_error is not None:
            self._report(exc, meta)
        elif not self._expiry_logged:
            self._expiry_logged = True
            log.warning(
                "stream %s: chunks expire before a worker starts them (%s); counted in stats().expired, logged once",
                meta.stream,
                exc,
            )

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

    def _open_executor(self) -> ChunkExecutor:
        with self._inflight.lock:
            if self._executor is None:
                if is_executor(self.mode):
                    self._executor, self._owns_executor = as_chunk_executor(self.mode), False
                else:
                    self._executor = make_executor(self.mode, self.npool, self.policy, **self._executor_options)
                    self._owns_executor = True
                executor = self._executor
                budget = executor.budget
                if self.max_inflight is None:
                    self._inflight.max_inflight = None if budget is not None else LOCAL_MAX_INFLIGHT
                self._inflight.max_cost = budget
                self._inflight.meter = (lambda: executor.spooled_bytes) if budget is not None else None
                self.windows.lazy = executor.joins_later and not self.asbuffer
                now = time.time()
                for meta, future, emitted_at in executor.adopt(self.stream):
                    self._inflight.adopt(meta.seq, future, age=now - emitted_at if emitted_at else 0.0)
                    self.windows.seq = max(self.windows.seq, meta.seq + 1)
                    future.add_done_callback(partial(self._finished, meta, None, executor))
            return self._executor

    def open(self, npool: int | None = None, mode: Any = None, reopen: bool = False) -> BufferEmit:
        """Start the executor and accept writes (again, after ``close()``)."""
        if reopen:
            self.close()
        if mode is not None and mode != self.mode:
            check_mode(mode)
            _check_picklable(mode, self.callback)
            if mode in REMOTE_MODES:
                self._kind.for_wire()
            self.close()
            self.mode = mode
        if npool is not None:
            self.npool = _positive_int("npool", npool)
        self._closed = False
        self.windows.accepting(True)
        self._open_executor()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no chunk is in flight (every outcome handled, on_done/on_error run).

        Args:
            timeout: seconds at most; None waits as long as it takes.

        Returns:
            False when chunks are still in flight after ``timeout``.
        """
        return self._inflight.wait(timeout)

    def close(self, wait: bool = True, flush: bool = False, timeout: float | None = None) -> int:
        """Stop accepting writes.

        Args:
            wait: wait for the chunks in flight to finish (and their on_done/on_error).
            flush: first emit the partial last chunk(s), as ``flush()`` does.
            timeout: with ``wait``, seconds to wait at most; None waits as long as it takes (with no worker
                and no timeout, that is until one comes).

        Returns:
            The number of chunks still in flight: 0 when everything finished. Those are logged; a durable
            spool keeps them for the next producer of the stream, else their results may still arrive in
            this process while it lives.
        """
        if flush and not self._closed:
            self.flush()
        self._closed = True
        self.windows.accepting(False)
        finished = self.wait(timeout) if wait else not len(self._inflight)
        with self._inflight.lock:
            executor, self._executor = self._executor, None
        if executor is not None and self._owns_executor:
            executor.shutdown(wait=wait and finished)
        pending = len(self._inflight)
        if pending and wait:
            kept = (
                "kept in the durable spool for the next producer"
                if executor is not None and executor.durable
                else ("results may still arrive while this process lives")
            )
            log.warning(
                "close(timeout=%s): %d chunk(s) of stream %s still pending; %s", timeout, pending, self.stream, kept
            )
        return pending

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        inflight, windows = self._inflight, self.windows
        p50, p99 = inflight.percentiles()
        callback_p99 = p50_p99(list(self._callbacks.durations))[1]
        executor = self._executor
        with inflight.lock:
            return Stats(
                written=windows.end + windows.skipped - windows.skipped_leftover,
                skipped=windows.skipped,
                buffered=windows.buffered,
                in_flight=len(inflight),
                spooled_bytes=executor.spooled_bytes if executor is not None else 0,
                latency_p50=p50,
                latency_p99=p99,
                callback_backlog=self._callbacks.backlog,
                callback_p99=callback_p99,
                out_of_order=self._callbacks.out_of_order,
                t0_overlaps=windows.t0_overlaps,
                gaps=windows.gaps,
                gap_seconds=windows.gap_seconds,
                clock_steps=windows.clock_steps,
                **inflight.counts,
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


__all__ = ["POLICIES", "BufferEmit", "ListEmit", "NumpyEmit"]
