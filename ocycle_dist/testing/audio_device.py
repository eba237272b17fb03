"""A real PortAudio input device without sound hardware: a JACK server on its dummy driver.

``jackd -d dummy`` runs a JACK graph paced by a timer, with ``system:capture_*`` ports that give silence;
PortAudio (built with JACK, as Debian's ``libportaudio2`` is) lists it as an input device of its "JACK Audio
Connection Kit" host API. :meth:`JackDummy.metronome` plays ``jack_metro``'s clicks into a client's input
ports, so what is recorded is a known signal. Debian: ``apt-get install jackd2 libportaudio2``.

Each server has its own name; clients find it through ``JACK_DEFAULT_SERVER`` (:attr:`JackDummy.env`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ..procs.processes import Proc


def available() -> str | None:
    """None when a JACK dummy device can be made here, else what is missing."""
    missing = [exe for exe in ("jackd", "jack_lsp", "jack_metro", "jack_connect") if shutil.which(exe) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: apt-get install jackd2)"
    try:
        import sounddevice  # noqa: F401 - PortAudio is loaded here
    except (ImportError, OSError) as exc:
        return f"sounddevice/PortAudio unusable ({exc}): pip install sounddevice; apt-get install libportaudio2"
    return None


class JackDummy:
    """``jackd`` with the dummy driver: a timer-paced JACK graph at ``rate`` Hz, ``period`` frames a cycle.

    Args:
        rate: samples per second.
        period: frames per cycle (the block PortAudio's callback gets).
        capture: capture ports (``system:capture_1``...).
    """

    def __init__(self, rate: int = 16000, period: int = 1024, capture: int = 2) -> None:
        self.name = f"ocycle-{uuid.uuid4().hex[:8]}"
        self.rate, self.period, self.capture = rate, period, capture
        self.dir = Path(tempfile.mkdtemp(prefix="ocycle-jack-"))
        self.procs: list[Proc] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment of a client of this server."""
        return {**os.environ, "JACK_DEFAULT_SERVER": self.name, "JACK_NO_AUDIO_RESERVATION": "1"}

    def run(self, *argv: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run a JACK command-line client (``jack_lsp``, ``jack_connect``...) on this server."""
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)

    def ports(self) -> list[str]:
        """The ports of the graph (``jack_lsp``); empty while the server is not up."""
        done = self.run("jack_lsp")
        return done.stdout.split() if done.returncode == 0 else []

    def start(self, timeout: float = 20.0) -> JackDummy:
        argv = ["jackd", "-n", self.name, "--no-realtime", "-d", "dummy", "-r", str(self.rate)]
        argv += ["-p", str(self.period), "-C", str(self.capture), "-P", "1"]
        proc = Proc("jackd", argv, self.dir / "jackd.log", env=self.env).start()
        self.procs.append(proc)
        proc.wait_until(lambda: "system:capture_1" in self.ports(), timeout, f"jackd {self.name}")
        return self

    def metronome(
        self, to_prefix: str, *, bpm: int = 240, freq: int = 440, ms: int = 125, timeout: float = 10.0
    ) -> str:
        """Start ``jack_metro`` and connect its output to every input port whose name starts with ``to_prefix``
        (waiting for one); returns the ports connected."""
        name = f"metro{len(self.procs)}"
        argv = ["jack_metro", "-n", name, "-b", str(bpm), "-f", str(freq), "-D", str(ms), "-A", "0.5"]
        proc = Proc(name, argv, self.dir / f"{name}.log", env=self.env).start()
        self.procs.append(proc)
        source = f"{name}:{bpm}_bpm"
        deadline = time.monotonic() + timeout
        while True:
            ports = self.ports()
            targets = [p for p in ports if p.startswith(to_prefix)]
            if source in ports and targets:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {source} or {to_prefix}* port after {timeout} s: {ports}")
            time.sleep(0.05)
        for target in targets:
            done = self.run("jack_connect", source, target)
            if done.returncode != 0:
                raise RuntimeError(f"jack_connect {source} {target}: {done.stderr}")
        return ",".join(targets)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=5.0)
        self.procs.clear()

    def __enter__(self) -> JackDummy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
