"""``ocycle-dist stream``: the producer a device runs. A source, a ``Tap`` of consumers, each chunk a Celery task.

The source (:mod:`ocycle_dist.app.sources`: raw PCM on stdin, a sound file, a microphone, a test signal) is read
on its own thread; this module's writer takes its frames and writes them to one ``NumpyEmit`` per consumer
(:mod:`ocycle_dist.app.consumers`), in the celery mode. A live source (stdin, microphone, a file with
``--realtime``) never waits for the workers: each consumer's policy acts when its backlog is full. A file or a
test signal replayed as fast as possible waits instead until every consumer has fewer than ``--max-inflight``
chunks in flight, so it goes as fast as the workers take it.

:func:`open_broker` chooses the broker: the one given or configured when it answers, else an embedded one
(:mod:`.embedded`). ``ocycle-dist demo`` is this command with a preset (:mod:`.demo`).

SIGINT (Ctrl-C) or SIGTERM stops the reading; the partial chunks are flushed, the results waited for up to
``--drain-timeout`` seconds, and what is left is said per consumer. A second signal (or one while draining)
stops at once.
:data:`EXIT_CODES` are the exit codes.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ..chunk import Chunk
from ..emit import NumpyEmit
from ..errors import ConfigError
from ..remote.redis_client import redact
from ..remote.settings import Settings
from ..stats import Stats
from ..tap import Tap
from .consumers import SPEC, Consumer, default_consumers, describe, load_config, parse_consumer, unique_names
from .metrics import serve_address
from .sources import END, PCM_FORMATS, FileSource, Microphone, Source, StdinPCM, Synthetic

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {
    EXIT_OK: "every chunk done",
    EXIT_FAILED: "a chunk failed (its task raised, or no result came), the source failed or ended short\n"
    "       (a truncated file, a partial sample at the end of stdin), or the embedded broker or worker could not start",
    EXIT_USAGE: "usage or configuration error (flags, TOML, source, broker, a package missing): nothing streamed",
    EXIT_INCOMPLETE: "no failure, but chunks not done: left after --drain-timeout, dropped or expired",
    EXIT_INTERRUPTED: "a second SIGINT/SIGTERM (or one while draining): stopped without draining",
}


class Stopper:
    """SIGINT and SIGTERM: the first asks the stream to stop (it flushes and drains); the second, or the first
    once the drain has begun (:attr:`draining`), raises ``KeyboardInterrupt``: stop now. Later ones are ignored
    while the process cleans up."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.draining = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def request(self, name: str) -> None:
        """Ask the stream to stop, as a signal would."""
        self.signal_name = name

    def install(self) -> Stopper:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is None and not self.draining:
            self.signal_name = signal.Signals(signum).name
            return
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt


@dataclass
class Outcome:
    """How a stream ended.

    Attributes:
        code: the exit code (:data:`EXIT_CODES`).
        reason: why the reading stopped.
        stats: each consumer's counters after the drain, by name.
        left: chunks still in flight at exit, by consumer name.
    """

    code: int
    reason: str
    stats: dict[str, Stats] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)


def _describe(task: str, result: Any) -> str:
    """One line for a result: the canonical tasks' wording for theirs, else the value, cut short."""
    kind = {"spl": "spl", "classify": "classify", "archive_flac": "archive"}.get(task.rsplit(".", 1)[-1])
    if kind is not None:
        try:
            return describe(kind, result)
        except (KeyError, TypeError, ZeroDivisionError):
            pass
    text = repr(result)
    return text if len(text) <= 100 else text[:97] + "..."


def _counts(s: Stats, left: int | None = None) -> str:
    """``3/4 done, 1 in flight`` (progress), or ``4 chunks: 3 done, 1 left`` (the summary); then the losses."""
    if left is None:
        line = f"{s.done}/{s.emitted} done, {s.in_flight} in flight"
    else:
        line = f"{s.emitted} chunks: {s.done} done, {left} left"
    losses = ((s.failed, "failed"), (s.dropped, "dropped"), (s.expired, "expired"))
    return line + "".join(f", {n} {what}" for n, what in losses if n or left is not None)


def run(
    source: Source,
    consumers: list[Consumer],
    settings: Settings,
    *,
    drain_timeout: float = 10.0,
    progress: float = 2.0,
    max_inflight: int = 8,
    prefix: str | None = None,
    quiet: bool = False,
    stopper: Stopper | None = None,
    out: Callable[[str], None] = print,
    err: Callable[[str], None] | None = None,
    metrics: tuple[str, int] | None = None,
) -> Outcome:
    """Stream ``source`` through ``consumers`` on ``settings.broker_url``; flush and drain at the end.

    Args:
        source: where frames come from (not started yet).
        consumers: the tasks and chunk lengths.
        settings: the producer's settings (the broker).
        drain_timeout: seconds to wait for the results at the end.
        progress: seconds between progress lines (0: none).
        max_inflight: for a file replayed as fast as possible, chunks in flight per consumer at most.
        prefix: of the stream ids (``<prefix>-<consumer>``); default ``<host>-<pid>``.
        quiet: no line per result.
        stopper: asks the stream to stop (signals); a new one, not installed, by default.
        out: where results go (stdout).
        err: where progress and the summary go (stderr).
        metrics: ``(host, port)`` to serve the consumers' Prometheus metrics on while streaming.
    """
    err = err or (lambda line: print(line, file=sys.stderr, flush=True))
    stopper = stopper or Stopper()
    prefix = prefix or f"{socket.gethostname()}-{os.getpid()}"
    rate = source.rate
    paced = source.paced
    lock = threading.Lock()
    start = time.time()

    def say(line: str, to: Callable[[str], None]) -> None:
        with lock:
            to(line)

    def on_done_for(c: Consumer) -> Callable[..., None]:
        def on_done(result: Any, meta: Chunk) -> None:
            if not quiet:
                say(f"[{c.name:<8} #{meta.seq:<4} t0={meta.t0 - start:+8.2f}s] {_describe(c.task, result)}", out)

        return on_done

    def on_error_for(c: Consumer) -> Callable[..., None]:
        def on_error(exc: BaseException, meta: Chunk) -> None:
            say(f"[{c.name:<8} #{meta.seq:<4}] {type(exc).__name__}: {exc}", err)

        return on_error

    emitters: list[NumpyEmit] = []
    try:
        for c in consumers:
            emitters.append(
                NumpyEmit(
                    c.task,
                    c.size(rate),
                    clip=True,
                    rate=rate,
                    mode="celery",
                    stream=f"{prefix}-{c.name}",
                    settings=settings,
                    queue=c.queue,
                    expires=c.expires,
                    policy=c.policy,
                    dtype="float32",
                    shape=(),
                    on_done=on_done_for(c),
                    on_error=on_error_for(c),
                )
            )
        tap = Tap(*emitters)
        stop_metrics = serve_address(emitters, metrics)
        gc.freeze()  # what was set up lives as long as the stream: the collector need not look at it again
        start = time.time()
        source.start()
    except BaseException:
        for e in emitters:
            e.close(wait=False)
        raise
    say(f"streaming {source.description} to {len(consumers)} consumer(s) on {redact(settings.broker_url)}", err)
    done = threading.Event()

    def report() -> None:
        while not done.wait(progress):
            parts = "; ".join(f"{c.name} {_counts(e.stats())}" for c, e in zip(consumers, emitters, strict=True))
            lost = ""
            if source.dropped or source.overflows:
                lost = f"; source: {source.dropped} blocks dropped, {source.overflows} overflows"
            say(f"progress {source.seconds:7.1f} s of audio: {parts}{lost}", err)

    reporter = threading.Thread(target=report, name="ocycle-progress", daemon=True)
    if progress > 0:
        reporter.start()
    try:
        reason = _write(source, tap, emitters, stopper, paced, max_inflight)
        stopper.draining = True
        source.stop()
        say(f"{reason} after {source.seconds:.1f} s of audio: flushing and draining (up to {drain_timeout:g} s)", err)
        tap.close(flush=True, timeout=drain_timeout)
        code = None
    except KeyboardInterrupt:
        source.stop()
        reason = "stopped at once by a second signal, without draining"
        say(f"{reason} after {source.seconds:.1f} s of audio", err)
        for e in emitters:
            e.close(wait=False)
        code = EXIT_INTERRUPTED
    finally:
        done.set()
        if reporter.is_alive():
            reporter.join()
        stop_metrics()
    stats = {c.name: e.stats() for c, e in zip(consumers, emitters, strict=True)}
    left = {name: s.in_flight for name, s in stats.items()}
    for c in consumers:
        s = stats[c.name]
        where = f"every {c.seconds:g} s, queue {c.queue or settings.queue!r}"
        say(f"  {c.name:<10} {where}: {_counts(s, left[c.name])}", err)
    if source.dropped or source.overflows:
        say(f"  source: {source.dropped} blocks dropped (the writer fell behind), {source.overflows} overflows", err)
    if code is None:
        if source.error is not None or any(s.failed for s in stats.values()):
            code = EXIT_FAILED
        elif any(left.values()) or any(s.dropped or s.expired for s in stats.values()):
            code = EXIT_INCOMPLETE
        else:
            code = EXIT_OK
    say(f"exit {code}: {' '.join(EXIT_CODES[code].split())}", err)
    return Outcome(code, reason, stats, left)


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-host`` (``stream`` and ``demo``)."""
    parser.add_argument(
        "--metrics-port", type=int, help="serve the consumers' Prometheus metrics on this port (/metrics)"
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="--metrics-port: the address to bind (default 127.0.0.1)"
    )


def metrics_address(args: argparse.Namespace) -> tuple[str, int] | None:
    """``(host, port)`` from ``--metrics-host``/``--metrics-port``, or None; raises ConfigError for a bad port."""
    if args.metrics_port is None:
        return None
    if not 0 < args.metrics_port < 65536:
        raise ConfigError("metrics_port", args.metrics_port, "a TCP port, 1-65535")
    return args.metrics_host, args.metrics_port


def _write(
    source: Source, tap: Tap, emitters: list[NumpyEmit], stopper: Stopper, paced: bool, max_inflight: int
) -> str:
    """The writer loop: frames from the source into the tap until the end or a stop; returns why it ended."""
    while True:
        if stopper.requested:
            return f"stopped by {stopper.signal_name}"
        item = source.get(0.1)
        if item is None:
            continue
        if item is END:
            return "end of input" if source.error is None else f"the source failed ({source.error!r})"
        frame, t0 = item
        while paced and not stopper.requested and any(e.stats().in_flight >= max_inflight for e in emitters):
            time.sleep(0.005)  # as fast as the workers take it
        tap.write(frame, t0=t0)


# ---- the command -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``stream`` subcommand's flags."""
    parser.add_argument(
        "source",
        nargs="?",
        help="'-' for raw PCM on stdin (e.g. from arecord), or a sound file (WAV, FLAC...); omit with --mic",
    )
    parser.add_argument("--mic", action="store_true", help="record from a microphone (PortAudio; extra 'mic')")
    parser.add_argument(
        "--synthetic",
        type=float,
        metavar="SECONDS",
        help="stream a test signal this long (tone, noise, silence in turn) instead of a source",
    )
    parser.add_argument("--device", help="--mic: the input device, a name or index (default: the default input)")
    parser.add_argument(
        "-f",
        "--format",
        default="S16_LE",
        choices=list(PCM_FORMATS),
        metavar="FMT",
        help=f"stdin: the PCM format, arecord's names: {', '.join(PCM_FORMATS)} (default S16_LE)",
    )
    parser.add_argument(
        "-r",
        "--rate",
        type=int,
        help="stdin, --mic: samples per second; a file must have it (default OCYCLE_SAMPLE_RATE, 16000)",
    )
    parser.add_argument(
        "-c", "--channels", type=int, default=1, help="stdin, --mic: channels, mixed down to mono (default 1)"
    )
    parser.add_argument("--frame", type=int, default=1024, help="samples per frame written (default 1024)")
    parser.add_argument(
        "--realtime", action="store_true", help="a file: replay it in real time (default: as fast as workers take it)"
    )
    parser.add_argument(
        "--consumer",
        action="append",
        metavar="SPEC",
        help=f"a consumer, {SPEC}; repeat for more (default: the demo's spl, classify and archive)",
    )
    parser.add_argument("--config", metavar="FILE", help="consumers from a TOML file of [[consumer]] tables")
    parser.add_argument("--broker", help="Redis URL; default OCYCLE_BROKER_URL, else an embedded server and worker")
    parser.add_argument("--progress", type=float, default=2.0, help="seconds between progress lines (0: none)")
    parser.add_argument(
        "--drain-timeout", type=float, default=10.0, help="seconds to wait for results at the end (default 10)"
    )
    parser.add_argument(
        "--max-inflight", type=int, default=8, help="a file replayed fast: chunks in flight per consumer (default 8)"
    )
    parser.add_argument("--id", dest="prefix", help="prefix of the stream ids (default <host>-<pid>)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no line per result")
    add_metrics_arguments(parser)


EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())


def _source(args: argparse.Namespace, default_rate: int) -> Source:
    if int(args.mic) + (args.source is not None) + (args.synthetic is not None) != 1:
        raise ConfigError("source", args.source, "'-' (stdin) or a sound file, or --mic, or --synthetic (one of them)")
    rate = args.rate if args.rate is not None else default_rate
    if args.synthetic is not None:
        return Synthetic(args.synthetic, rate, realtime=args.realtime, frame=args.frame)
    if args.mic:
        device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
        return Microphone(device, rate, args.channels, args.frame)
    if args.source == "-":
        return StdinPCM(args.format, rate, args.channels, args.frame)
    source = FileSource(args.source, realtime=args.realtime, frame=args.frame)
    if source.rate != rate:
        raise ConfigError(
            "source",
            args.source,
            f"a file sampled at the stream's rate, {rate} Hz (it has {source.rate}): resample it, or pass"
            f" --rate {source.rate} (the workers must then run with OCYCLE_SAMPLE_RATE={source.rate})",
        )
    return source


def _consumers(args: argparse.Namespace) -> list[Consumer]:
    if args.config and args.consumer:
        raise ConfigError("config", args.config, "either --config or --consumer flags, not both")
    if args.config:
        return load_config(args.config)
    if args.consumer:
        return unique_names(parse_consumer(spec) for spec in args.consumer)
    return default_consumers()


def _check(args: argparse.Namespace) -> None:
    for name in ("progress", "drain_timeout"):
        value = getattr(args, name)
        if not value >= 0:
            raise ConfigError(name, value, "seconds >= 0")
    if args.max_inflight < 1:
        raise ConfigError("max_inflight", args.max_inflight, "a positive integer")


def open_broker(
    stack: ExitStack,
    url: str,
    *,
    explicit: bool,
    queues: tuple[str, ...],
    env: dict[str, str],
    archive: bool,
    err: Callable[[str], None],
    command: str = "stream",
) -> str | int:
    """The broker to stream to: ``url`` when it answers; else, unless ``explicit`` (given by the user), an embedded
    broker and worker (:func:`.embedded.embedded`) that ``stack`` stops. Returns its URL, or the exit code to
    return when there is none (said on ``err``).

    Args:
        queues: the queues the consumers use (the embedded worker consumes them).
        env: more environment variables for the embedded worker (``OCYCLE_SAMPLE_RATE``).
        archive: a consumer archives: the embedded worker gets an archive identity (made on first use).
    """
    from ..archive.keys import embedded_archive_env
    from ..remote.redis_client import reachable
    from .embedded import embedded, lacks

    if reachable(url):
        err(f"broker: {redact(url)} (workers must consume queues {','.join(queues)}: celery -A workers worker -Q)")
        return url
    if explicit:
        err(f"ocycle-dist {command}: broker {redact(url)} is not reachable")
        return EXIT_USAGE
    lacking = lacks("demo" if command == "demo" else "worker")
    if lacking:
        err(f"ocycle-dist {command}: no broker reachable at {redact(url)}, and no embedded one can start here:")
        err(f"  {'; '.join(lacking)}")
        err("  a device streams to its broker: --broker redis://HOST:6379/0 (or OCYCLE_BROKER_URL)")
        return EXIT_USAGE
    err(f"no broker reachable at {redact(url)}: starting an embedded broker and worker")
    try:
        if archive:
            env = {**env, **embedded_archive_env(err)}
        local = stack.enter_context(embedded(queues, env=env))
    except (RuntimeError, TimeoutError, OSError) as exc:
        err(f"ocycle-dist {command}: the embedded broker or worker could not start: {exc}")
        return EXIT_FAILED
    err(f"embedded broker: {local.server} on {local.url}")
    err(f"embedded workers: {local.workers}")
    return local.url


def main_stream(args: argparse.Namespace, command: str = "stream") -> int:
    """The ``ocycle-dist stream`` command (``command`` names it in messages: ``demo`` runs it too); returns its
    exit code."""
    from ..remote.redis_client import check_url

    def err(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        _check(args)
        consumers = _consumers(args)
        default_rate = int(os.environ.get("OCYCLE_SAMPLE_RATE") or 16000)
        metrics = metrics_address(args)
        source = _source(args, default_rate)
        for c in consumers:
            c.size(source.rate)  # at least one sample
        url = args.broker or os.environ.get("OCYCLE_BROKER_URL") or Settings().broker_url
        check_url(url)  # malformed is a usage error, not an unreachable broker
    except ConfigError as exc:
        err(f"ocycle-dist {command}: {exc}")
        return EXIT_USAGE
    queues = tuple(dict.fromkeys(c.queue or Settings.from_env().queue for c in consumers))
    stopper = Stopper().install()
    try:
        with ExitStack() as stack:
            broker = open_broker(
                stack,
                url,
                explicit=bool(args.broker),
                queues=queues,
                env={"OCYCLE_SAMPLE_RATE": str(source.rate)},
                archive=any(c.task.endswith(".archive_flac") for c in consumers),
                err=err,
                command=command,
            )
            if isinstance(broker, int):
                return broker
            return run(
                source,
                consumers,
                Settings.from_env(broker_url=broker),
                drain_timeout=args.drain_timeout,
                progress=args.progress,
                max_inflight=args.max_inflight,
                prefix=args.prefix,
                quiet=args.quiet,
                stopper=stopper,
                err=err,
                metrics=metrics,
            ).code
    except ConfigError as exc:  # a device that cannot be opened, a bad broker URL
        err(f"ocycle-dist {command}: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second signal while starting
        err(f"ocycle-dist {command}: interrupted while starting")
        return EXIT_INTERRUPTED
    finally:
        stopper.restore()
