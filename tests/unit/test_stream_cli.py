"""`ocycle-dist stream`'s usage errors (exit 2, before anything starts), its help, and its signal handling."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ocycle_dist.app.cli import main
from ocycle_dist.app.consumers import Consumer
from ocycle_dist.app.embedded import embedded_broker
from ocycle_dist.app.sources import Source
from ocycle_dist.app.stream import EXIT_CODES, EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, Stopper, run
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import free_port


@pytest.fixture
def wav(tmp_path: Path) -> str:
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(1600), 16000)
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "source=None is invalid: expected '-' (stdin) or a sound file, or --mic, or --synthetic (one of them)"),
        (["-", "--mic"], "source='-' is invalid"),
        (["-", "--synthetic", "2"], "source='-' is invalid"),
        (["--synthetic", "0"], "seconds=0.0 is invalid: expected a positive number"),
        (["-", "--consumer", "workers.tasks.spl"], "consumer='workers.tasks.spl' is invalid: expected task:seconds"),
        (["-", "--consumer", "workers.tasks.spl:0"], "seconds='0' is invalid"),
        (["-", "--consumer", "workers.tasks.spl:1e-9"], "seconds='1e-9' is invalid: expected seconds >= 0.01 (each"),
        (["-", "-r", "50", "--consumer", "x.t:0.01"], "seconds=0.01 is invalid: expected at least one sample at 50 Hz"),
        (["-", "--broker", "redis//x"], "broker='redis//x' is invalid: expected a redis://, rediss://, unix:// or"),
        (["-", "--broker", "redis://:pw@h:port/0"], "broker='<an unparsable URL>' is invalid"),
        (["-", "--consumer", "a:1", "--config", "c.toml"], "config='c.toml' is invalid: expected either --config"),
        (["-", "--config", "/nonexistent/c.toml"], "config='/nonexistent/c.toml' is invalid: expected a readable"),
        (["/nonexistent/a.wav"], "source='/nonexistent/a.wav' is invalid: expected a readable WAV/FLAC file"),
        (["-", "--progress", "-1"], "progress=-1.0 is invalid"),
        (["-", "--drain-timeout", "nan"], "drain_timeout=nan is invalid"),
        (["-", "--max-inflight", "0"], "max_inflight=0 is invalid"),
        (["-", "--rate", "0"], "rate=0 is invalid"),
        (["-", "--channels", "0"], "channels=0 is invalid"),
        (["-", "--metrics-port", "70000"], "metrics_port=70000 is invalid: expected a TCP port"),
    ],
)
def test_usage_errors_exit_2_naming_the_parameter(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stream", *args]) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_a_file_at_another_rate_says_how_to_fix_it(wav: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", wav, "--rate", "8000"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "a file sampled at the stream's rate, 8000 Hz (it has 16000)" in err
    assert "--rate 16000 (the workers must then run with OCYCLE_SAMPLE_RATE=16000)" in err


def test_a_malformed_broker_url_from_the_environment_is_a_usage_error(
    wav: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCYCLE_BROKER_URL", "redis//x")
    assert main(["stream", wav]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "broker='redis//x' is invalid" in err and "not reachable" not in err and "embedded" not in err


def test_an_explicit_broker_that_is_not_reachable(wav: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["stream", wav, "--broker", url]) == EXIT_USAGE
    assert f"broker {url} is not reachable" in capsys.readouterr().err


def test_a_bad_format_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["stream", "-", "-f", "S17_LE"])
    assert info.value.code == 2
    assert "invalid choice: 'S17_LE'" in capsys.readouterr().err


def test_help_lists_the_sources_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["stream", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "'-' for raw PCM on stdin" in out and "--mic" in out and "--realtime" in out and "--config FILE" in out
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {' '.join(meaning.split())}" in out


def test_the_first_signal_asks_to_stop_the_second_stops_at_once() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    stopper = Stopper().install()
    try:
        assert signal.getsignal(signal.SIGINT) == stopper._handle
        assert not stopper.requested
        stopper._handle(signal.SIGTERM, None)
        assert (stopper.requested, stopper.signal_name) == (True, "SIGTERM")
        with pytest.raises(KeyboardInterrupt):
            stopper._handle(signal.SIGINT, None)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # a third one cannot cut the cleanup short
    finally:
        stopper.restore()
    assert signal.getsignal(signal.SIGTERM) == previous


def test_a_signal_while_draining_stops_at_once() -> None:
    stopper = Stopper().install()
    try:
        stopper.draining = True
        with pytest.raises(KeyboardInterrupt):
            stopper._handle(signal.SIGINT, None)
    finally:
        stopper.restore()


# ---- run(): the exit code from the outcome, in-process on fakeredis's server with no worker -----------------


class Frames(Source):
    """``n`` frames of silence, then the end, or an error."""

    description = "test frames"

    def __init__(self, n: int, error: BaseException | None = None) -> None:
        super().__init__(16000, 1)
        self.n, self.fail_with = n, error

    def start(self) -> Frames:
        def read() -> None:
            for k in range(self.n):
                self._put(np.zeros(1000, np.float32), 100.0 + k / 16)
            if self.fail_with is not None:
                raise self.fail_with

        self._thread(read, "test-frames")
        return self


def quick_exit(url: str) -> Settings:
    """Settings whose result listener polls every 0.5 s: the chunks left after the drain keep the listener of
    their process waiting for their results (as a producer does while it lives), and the test's broker waits
    for that poll before it stops. What is tested is the exit code, not the default timeouts."""
    return Settings(broker_url=url, socket_timeout=1.0)


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (None, EXIT_INCOMPLETE, "end of input"),
        (OSError("the recorder died"), EXIT_FAILED, "the source failed (OSError('the recorder died'))"),
    ],
)
def test_the_exit_code_says_how_it_ended(error: BaseException | None, code: int, reason: str) -> None:
    lines: list[str] = []
    consumer = Consumer("spl", "workers.tasks.spl", 0.5, "nobody")
    with embedded_broker() as url:  # no worker: every chunk is left after the drain
        outcome = run(Frames(12, error), [consumer], quick_exit(url), drain_timeout=0.2, progress=0,
                      err=lines.append, out=lines.append)  # fmt: skip
    assert (outcome.code, outcome.reason, outcome.left) == (code, reason, {"spl": 2})  # 12000 samples: 1 + partial
    assert f"{reason} after 0.8 s of audio: flushing and draining (up to 0.2 s)" in lines
    assert "  spl        every 0.5 s, queue 'nobody': 2 chunks: 0 done, 2 left, 0 failed, 0 dropped, 0 expired" in lines
    assert lines[-1] == f"exit {code}: {' '.join(EXIT_CODES[code].split())}"


def test_a_stop_request_ends_the_writer_and_drains() -> None:
    lines: list[str] = []
    stopper = Stopper()
    stopper.request("SIGINT")
    with embedded_broker() as url:
        outcome = run(Frames(3), [Consumer("spl", "workers.tasks.spl", 0.5)], Settings(broker_url=url),
                      drain_timeout=0.1, progress=0, stopper=stopper, err=lines.append)  # fmt: skip
    assert outcome.reason == "stopped by SIGINT"
    assert outcome.code == EXIT_OK  # nothing was written: nothing left
