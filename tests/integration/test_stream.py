"""`ocycle-dist stream` end to end: the command as a process, on real redis-server and celery worker processes.

Sources: a FLAC file, raw PCM piped to stdin (as from ``arecord``), and a microphone on a real PortAudio device:
a JACK server on its dummy driver (timer-paced, no sound hardware), fed by ``jack_metro``'s clicks
(``ocycle_dist.testing.audio_device``). Ctrl-C and SIGTERM flush, drain and say what is left; exit codes.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from ocycle_dist.app.sources import synthetic
from ocycle_dist.testing import free_port
from ocycle_dist.testing.audio_device import JackDummy, available
from tests.support.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
RATE = 16000
RESULT = re.compile(r"^\[(\S+)\s+#(\d+)\s+t0=\s*([+-][\d.]+)s\] (.*)$")


class Stream:
    """``ocycle-dist stream ARGS`` as a child process; its stdout and stderr lines collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ocycle_dist.app.cli", "stream", *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
            for pipe, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe: Any, lines: list[str]) -> None:
        for line in pipe:
            lines.append(line.decode(errors="replace").rstrip("\n"))

    def feed(self, data: bytes, close: bool = True) -> None:
        assert self.proc.stdin is not None
        for i in range(0, len(data), 4096):  # in pieces, as a recorder writes
            self.proc.stdin.write(data[i : i + 4096])
        self.proc.stdin.flush()
        if close:
            self.proc.stdin.close()

    def wait(self, timeout: float = 90.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"ocycle-dist stream still running after {timeout} s:\n{self.stderr}")
        for reader in self.readers:
            reader.join(10)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    def results(self, name: str) -> dict[int, tuple[float, str]]:
        """``{seq: (t0 offset, text)}`` of a consumer's result lines."""
        found = {}
        for line in list(self.out):
            m = RESULT.match(line)
            if m and m.group(1) == name:
                found[int(m.group(2))] = (float(m.group(3)), m.group(4))
        return found

    def dbfs(self) -> list[float]:
        """The SPL results' levels, in stream order."""
        spl = self.results("spl")
        return [float(spl[k][1].split()[0]) for k in sorted(spl)]


def decrypted(path: Path, identity: Path) -> Any:
    """``soundfile.info`` of an archive file decrypted by the age CLI."""
    flac = subprocess.run(["age", "-d", "-i", str(identity), str(path)], capture_output=True, check=True).stdout
    return sf.info(io.BytesIO(flac))


def audio(seconds: float) -> np.ndarray:
    """The demo's test signal: 4 s of a 440 Hz tone, 4 s of noise, 4 s of silence."""
    return np.concatenate(list(synthetic(seconds, RATE)))


def s16(x: np.ndarray) -> bytes:
    return (x * 32767).astype("<i2").tobytes()


def test_a_file_as_fast_as_the_workers_take_it(topology: Any, tmp_path: Path) -> None:
    path = tmp_path / "twelve.flac"
    sf.write(path, audio(12.0), RATE)
    run = Stream(str(path), "--broker", topology.url, "--id", "t-file", "--max-inflight", "2", "--progress", "0.05")
    assert run.wait() == 0, run.stderr
    assert f"streaming {path} (FLAC, 16000 Hz, 1 channel(s), 12.0 s), as fast as the workers take it" in run.stderr
    levels = run.dbfs()
    assert len(levels) == 24
    assert levels[:8] == pytest.approx([-13.5] * 8, abs=0.2)  # 0.3 full scale sine: -13.5 dBFS
    assert all(-16.5 < x < -14.0 for x in levels[8:16])  # noise
    assert levels[16:] == [-120.0] * 8  # silence: the floor
    assert sorted(run.results("classify")) == list(range(6))
    archives = run.results("archive")
    assert sorted(archives) == [0, 1]
    files = sorted(Path(topology.archive_dir).glob("t-file-archive_*.flac.age"))
    assert [decrypted(f, topology.archive_identity).frames for f in files] == [10 * RATE, 2 * RATE]  # last: flushed
    in_flight = [int(n) for n in re.findall(r"(\d+) in flight", run.stderr)]
    assert in_flight and max(in_flight) <= 2  # paced by the workers: never more than --max-inflight
    for line in ("spl        every 0.5 s, queue 'spl': 24 chunks: 24 done, 0 left, 0 failed, 0 dropped, 0 expired",
                 "classify   every 2 s, queue 'model': 6 chunks: 6 done, 0 left",
                 "archive    every 10 s, queue 'archive': 2 chunks: 2 done, 0 left",
                 "end of input after 12.0 s of audio", "exit 0: every chunk done"):  # fmt: skip
        assert line in run.stderr


@pytest.mark.parametrize(("fmt", "channels"), [("S16_LE", 1), ("FLOAT_LE", 2)])
def test_raw_pcm_piped_to_stdin(topology: Any, fmt: str, channels: int) -> None:
    x = audio(4.0)
    # stereo float: the tone on the left, its inverse on the right at half level -> mono = x / 4
    data = s16(x) if fmt == "S16_LE" else np.stack([x, -x / 2], axis=1).astype("<f4").tobytes()
    consumers = ["--consumer", "workers.tasks.spl:0.5:spl", "--consumer", "workers.tasks.archive_flac:1:archive"]
    run = Stream("-", "-f", fmt, "-c", str(channels), "--broker", topology.url, "--id", f"t-{fmt}", *consumers)
    run.feed(data)
    assert run.wait() == 0, run.stderr
    assert f"streaming raw PCM on stdin ({fmt}, 16000 Hz, {channels} channel(s))" in run.stderr
    expected = -13.5 if channels == 1 else -13.5 - 20 * np.log10(4)
    assert run.dbfs() == pytest.approx([expected] * 8, abs=0.2)
    t0s = [t0 for t0, _ in (run.results("spl")[k] for k in range(8))]
    assert np.diff(t0s) == pytest.approx([0.5] * 7, abs=0.011)  # sample-exact: 8000 samples apart
    assert "archive_flac every 1 s, queue 'archive': 4 chunks: 4 done, 0 left" in run.stderr
    assert "test-pw" not in run.stderr  # the broker's password is not shown


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_flushes_drains_and_says_what_is_left(topology: Any, tmp_path: Path, sig: signal.Signals) -> None:
    config = tmp_path / "consumers.toml"
    config.write_text(
        '[[consumer]]\ntask = "workers.tasks.spl"\nseconds = 0.5\nqueue = "spl"\n'
        '[[consumer]]\ntask = "workers.tasks.classify"\nseconds = 2\nqueue = "model"\nname = "vad"\n'
    )
    run = Stream("-", "--broker", topology.url, "--config", str(config), "--id", f"t-{sig.name}")
    run.feed(s16(audio(3.2)), close=False)  # a recorder still running
    wait_for(lambda: 5 in run.results("spl"), 60, lambda: f"spl #5:\n{run.stderr}")
    run.proc.send_signal(sig)
    assert run.wait(60) == 0, run.stderr
    assert f"stopped by {sig.name} after 3.2 s of audio: flushing and draining (up to 10 s)" in run.stderr
    assert "spl        every 0.5 s, queue 'spl': 7 chunks: 7 done, 0 left" in run.stderr  # 6 + the partial one
    assert "vad        every 2 s, queue 'model': 2 chunks: 2 done, 0 left" in run.stderr
    assert sorted(run.results("vad")) == [0, 1]


def test_chunks_left_after_the_drain_exit_3(topology: Any) -> None:
    run = Stream("-", "--broker", topology.url, "--consumer", "workers.tasks.spl:0.5:nobody", "--drain-timeout", "1")
    run.feed(s16(audio(1.0)))
    assert run.wait() == 3, run.stderr
    assert "spl        every 0.5 s, queue 'nobody': 2 chunks: 0 done, 2 left" in run.stderr
    assert "exit 3: no failure, but chunks not done: left after --drain-timeout, dropped or expired" in run.stderr


def test_a_failing_task_exits_1_and_says_why(topology: Any) -> None:
    run = Stream("-", "--broker", topology.url, "--consumer", "tests.fail:0.5:spl")
    run.feed(s16(audio(1.0)))
    assert run.wait() == 1, run.stderr
    assert "fail       every 0.5 s, queue 'spl': 2 chunks: 0 done, 0 left, 2 failed" in run.stderr
    assert re.search(r"\[fail\s+#0\s*\] RemoteTaskError: ValueError: failing on purpose", run.stderr)


def test_a_truncated_wav_streams_what_it_holds_says_so_and_exits_1(topology: Any, tmp_path: Path) -> None:
    whole = tmp_path / "whole.wav"
    sf.write(whole, audio(2.0), RATE, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: 44 + 2 * RATE])  # a recorder that died after 1 s of 2
    run = Stream(str(cut), "--broker", topology.url, "--consumer", "workers.tasks.spl:0.5:spl")
    assert run.wait() == 1, run.stderr
    assert "(TRUNCATED: its header declares 32000 samples, the file holds 16000 (32000 of 64000 bytes" in run.stderr
    assert len(run.dbfs()) == 2  # the half that exists was streamed and processed
    assert f"{cut} is truncated: its header declares 32000 samples, the file holds 16000" in run.stderr
    assert "spl        every 0.5 s, queue 'spl': 2 chunks: 2 done, 0 left, 0 failed" in run.stderr
    assert "exit 1: a chunk failed (its task raised, or no result came), the source failed or ended short" in run.stderr


def test_a_partial_sample_at_the_end_of_stdin_is_said_and_exits_1(topology: Any) -> None:
    run = Stream("-", "--broker", topology.url, "--consumer", "workers.tasks.spl:0.5:spl")
    run.feed(s16(audio(1.0)) + b"\x01")  # 16000 samples and half of one
    assert run.wait() == 1, run.stderr
    assert len(run.dbfs()) == 2
    assert "1 byte(s) that are not a whole sample frame (S16_LE, 1 channel(s): 2 bytes each)" in run.stderr
    assert "after 16000 samples: they were not streamed" in run.stderr


def test_a_signal_while_draining_stops_at_once(topology: Any) -> None:
    run = Stream("-", "--broker", topology.url, "--consumer", "workers.tasks.spl:0.5:nobody", "--drain-timeout", "120")
    run.feed(s16(audio(1.0)))
    wait_for(lambda: "flushing and draining (up to 120 s)" in run.stderr, 60, lambda: run.stderr)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(30) == 130, run.stderr
    assert "spl        every 0.5 s, queue 'nobody': 2 chunks: 0 done, 2 left" in run.stderr
    assert "exit 130: a second SIGINT/SIGTERM (or one while draining): stopped without draining" in run.stderr


def test_without_a_broker_it_starts_a_server_and_a_worker(redis_server_required: None, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    env = {"OCYCLE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0", "OCYCLE_ARCHIVE_DIR": str(archive),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "OCYCLE_ARCHIVE_RECIPIENTS": ""}  # fmt: skip
    run = Stream("-", "--id", "t-embedded", env=env)
    run.feed(s16(audio(2.0)))
    assert run.wait(120) == 0, run.stderr
    assert "starting an embedded broker and worker" in run.stderr
    assert "embedded broker: redis-server 7" in run.stderr and "child process" in run.stderr
    assert "embedded workers: 1 celery worker child process" in run.stderr
    assert "consuming celery,spl,model,archive" in run.stderr
    assert len(run.dbfs()) == 4 and sorted(run.results("classify")) == [0]
    [archived] = archive.iterdir()  # encrypted to the identity made for the user, as the demo does
    assert archived.name.startswith("t-embedded-archive_") and archived.name.endswith(".flac.age")
    assert "_00000000_32000@16000_" in archived.name  # chunk 0, 2 s at 16 kHz
    identity = tmp_path / "config" / "ocycle-dist" / "archive-identity.txt"
    assert f"encrypting to your identity {identity} (made now" in run.stderr
    assert decrypted(archived, identity).frames == 2 * RATE


def test_a_microphone_on_a_real_portaudio_device(topology: Any) -> None:
    missing = available()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"no PortAudio device can be made here: {missing}")
        pytest.skip(f"no PortAudio device can be made here: {missing}")
    with JackDummy(rate=RATE, period=1024) as jack:
        consumers = ["--consumer", "workers.tasks.spl:0.5:spl", "--consumer", "workers.tasks.archive_flac:2:archive"]
        run = Stream("--mic", "--broker", topology.url, "--id", "t-mic", *consumers, env=jack.env)
        wait_for(lambda: "streaming microphone" in run.stderr, 60, lambda: run.stderr)
        assert "microphone 'system' (JACK Audio Connection Kit), 16000 Hz, 1 channel(s)" in run.stderr
        connected = jack.metronome("PortAudio:in")  # 440 Hz clicks into the stream's input port
        assert connected == "PortAudio:in_0"
        wait_for(lambda: sum(x > -40 for x in run.dbfs()) >= 4, 60, lambda: f"4 loud chunks:\n{run.stderr}")
        run.proc.send_signal(signal.SIGINT)
        assert run.wait(60) == 0, run.stderr
    levels = run.dbfs()
    assert sum(x > -40 for x in levels) >= 4  # the clicks went through the device, the stream and the workers
    t0s = [t0 for t0, _ in (run.results("spl")[k] for k in sorted(run.results("spl")))]
    assert np.diff(t0s) == pytest.approx([0.5] * (len(t0s) - 1), abs=0.011)  # ADC times: no gaps, no overlaps
    match = re.search(r"stopped by SIGINT after ([\d.]+) s of audio", run.stderr)
    assert match and float(match.group(1)) >= 2.0
    assert "exit 0: every chunk done" in run.stderr
    assert "blocks dropped" not in run.stderr
