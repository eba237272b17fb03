"""The main job, ``ocycle-dist demo``: ``ocycle-dist stream`` with a preset.

The preset: the canonical three consumers (:data:`.consumers.CONSUMERS`: sound level every 0.5 s, the model
every 2 s, a FLAC archive every 10 s, each on its own queue, so a model that falls behind never delays the
sound level), a test signal (:class:`.sources.Synthetic`: tone, noise, silence in turn) or a WAV file, and a
longer wait for the results at the end. Everything else (the writer, the progress lines, the summary, the
exit code, the broker or the embedded one) is the stream's own.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable

from ..remote.settings import Settings
from .consumers import default_consumers
from .sources import FileSource, Synthetic
from .stream import Outcome, add_arguments, main_stream
from .stream import run as run_stream

DRAIN_TIMEOUT = 60.0  # seconds the demo waits for its results at the end (a first model load takes a while)


def run(
    broker: str,
    *,
    seconds: float = 12.0,
    progress: float = 2.0,
    wav: str | None = None,
    realtime: bool = False,
    rate: int = 16000,
    settings: Settings | None = None,
    out: Callable[[str], None] = print,
    metrics: tuple[str, int] | None = None,
) -> Outcome:
    """Stream the preset's source (``rate`` samples/s) through the three consumers on ``broker``, results and
    progress to ``out``; returns the stream's :class:`.stream.Outcome`."""
    source = FileSource(wav, realtime=realtime) if wav else Synthetic(seconds, rate, realtime=realtime)
    settings = settings or Settings.from_env(broker_url=broker)
    return run_stream(
        source, default_consumers(), settings, drain_timeout=DRAIN_TIMEOUT, progress=progress, out=out, err=out,
        metrics=metrics,
    )  # fmt: skip


def stream_argv(
    broker: str | None, seconds: float, wav: str | None, realtime: bool, metrics: tuple[str, int] | None = None
) -> list[str]:
    """The ``ocycle-dist stream`` flags the demo's own stand for."""
    argv = [wav] if wav else ["--synthetic", repr(seconds)]
    # the stream ids are <host>-<consumer>: one stream per device (a container's hostname), the same after a restart
    argv += ["--drain-timeout", repr(DRAIN_TIMEOUT), "--id", socket.gethostname()]
    if realtime:
        argv.append("--realtime")
    if broker:
        argv += ["--broker", broker]
    if metrics is not None:
        argv += ["--metrics-host", metrics[0], "--metrics-port", str(metrics[1])]
    return argv


def main_demo(
    broker: str | None, seconds: float, wav: str | None, realtime: bool, metrics: tuple[str, int] | None = None
) -> int:
    """The ``ocycle-dist demo`` command: ``ocycle-dist stream`` with the preset; returns its exit code."""
    parser = argparse.ArgumentParser(prog="ocycle-dist demo")
    add_arguments(parser)
    return main_stream(parser.parse_args(stream_argv(broker, seconds, wav, realtime, metrics)), command="demo")
