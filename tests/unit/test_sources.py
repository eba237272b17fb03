"""The sources of `ocycle-dist stream`, in-process: PCM decoding, stdin, files, and the microphone's callback path.

The microphone is driven here by a stand-in for ``sounddevice.InputStream`` that calls the source's callback from
its own thread, as PortAudio does: blocks with their ADC times and status flags go through the bounded queue to
the writer's ``get()``. A real PortAudio device (JACK's dummy driver) is used in
``tests/integration/test_stream.py``.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from ocycle_dist.app.sources import END, FileSource, Microphone, Source, StdinPCM, Synthetic, decode_pcm, synthetic
from ocycle_dist.errors import ConfigError
from tests.support.helpers import wait_for


def drain(source: Source, timeout: float = 10.0) -> list[tuple[np.ndarray, float]]:
    """Every (frame, t0) until END."""
    got: list[tuple[np.ndarray, float]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = source.get(0.1)
        if item is END:
            return got
        if item is not None:
            got.append(item)
    pytest.fail(f"no END after {timeout} s")


# ---- PCM ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "raw", "expected"),
    [
        ("S16_LE", np.array([0, 16384, -32768], "<i2").tobytes(), [0.0, 0.5, -1.0]),
        ("S16_BE", np.array([16384], ">i2").tobytes(), [0.5]),
        ("U8", bytes([128, 192, 0]), [0.0, 0.5, -1.0]),
        ("S8", np.array([64, -128], "i1").tobytes(), [0.5, -1.0]),
        ("S24_3LE", bytes([0, 0, 0x40, 0, 0, 0x80, 0xFF, 0xFF, 0xFF]), [0.5, -1.0, -1 / 8388608]),
        ("S32_LE", np.array([2**30], "<i4").tobytes(), [0.5]),
        ("FLOAT_LE", np.array([0.25, -0.5], "<f4").tobytes(), [0.25, -0.5]),
        ("FLOAT64_BE", np.array([0.75], ">f8").tobytes(), [0.75]),
    ],
)
def test_decode_pcm_formats(fmt: str, raw: bytes, expected: list[float]) -> None:
    out = decode_pcm(raw, fmt, 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_decode_pcm_mixes_channels_down_and_ignores_a_partial_frame() -> None:
    stereo = np.array([[16384, 0], [-32768, 32767]], "<i2").tobytes() + b"\x01\x02\x03"  # + 3 stray bytes
    np.testing.assert_allclose(decode_pcm(stereo, "S16_LE", 2), [0.25, (-32768 + 32767) / 2 / 32768])


def test_stdin_pcm_frames_with_sample_exact_t0s() -> None:
    samples = (np.arange(2500) % 200 - 100).astype("<i2")
    source = StdinPCM("S16_LE", 8000, 1, 1000, stream=io.BytesIO(samples.tobytes() + b"\x07"))
    before = time.time()
    got = drain(source.start())
    assert [len(f) for f, _ in got] == [1000, 1000, 500]
    np.testing.assert_allclose(np.concatenate([f for f, _ in got]), samples / 32768.0, rtol=1e-6)
    t0s = [t for _, t in got]
    assert before - 1000 / 8000 - 0.5 <= t0s[0] <= time.time()
    assert t0s[1] - t0s[0] == pytest.approx(0.125) and t0s[2] - t0s[1] == pytest.approx(0.125)
    assert (source.frames, source.samples, source.seconds, source.trailing_bytes) == (3, 2500, 2500 / 8000, 1)
    assert source.get(0.01) is END  # stays ended
    assert isinstance(source.error, EOFError)  # the stray byte: streamed what was whole, then said so
    assert str(source.error).startswith("stdin ended with 1 byte(s) that are not a whole sample frame (S16_LE, 1")


def test_stdin_pcm_ending_on_a_whole_sample_frame_is_no_error() -> None:
    source = StdinPCM("S16_LE", 8000, 2, 1000, stream=io.BytesIO(b"\0\0" * 2 * 2500))
    assert [len(f) for f, _ in drain(source.start())] == [1000, 1000, 500]
    assert source.error is None and source.trailing_bytes == 0


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [({"format": "S16"}, "format"), ({"rate": 0}, "rate"), ({"channels": 1.5}, "channels"), ({"frame": -1}, "frame")],
)
def test_stdin_pcm_checks_its_arguments(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ConfigError) as info:
        StdinPCM(**kwargs, stream=io.BytesIO())
    assert info.value.param == param and repr(info.value.value) in str(info.value)


def test_stdin_stop_ends_the_source_while_the_stream_blocks() -> None:
    class Slow(io.RawIOBase):
        def read(self, n: int = -1) -> bytes:
            time.sleep(0.05)
            return b"\0\0" * 10

    source = StdinPCM("S16_LE", 16000, 1, 10, stream=Slow()).start()  # type: ignore[arg-type]
    wait_for(lambda: source.get(0.1) is not None, 5, "a frame")
    source.stop()
    assert drain(source, 5) is not None  # END arrives


# ---- files -----------------------------------------------------------------------------------------------


def _write(path: Path, x: np.ndarray, rate: int) -> Path:
    sf.write(path, x, rate)
    return path


def test_file_source_mixes_down_and_counts_time(tmp_path: Path) -> None:
    t = np.arange(3000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 100 * t), np.zeros_like(t)], axis=1) * 0.5
    source = FileSource(str(_write(tmp_path / "a.flac", stereo, 8000)), frame=1024)
    assert (source.rate, source.channels) == (8000, 2)
    assert "FLAC, 8000 Hz, 2 channel(s), 0.4 s), as fast as the workers take it" in source.description
    got = drain(source.start())
    assert [len(f) for f, _ in got] == [1024, 1024, 952]
    np.testing.assert_allclose(np.concatenate([f for f, _ in got]), stereo.mean(axis=1), atol=1e-4)
    assert got[1][1] - got[0][1] == pytest.approx(1024 / 8000)


def test_file_source_in_real_time_takes_the_files_duration(tmp_path: Path) -> None:
    source = FileSource(str(_write(tmp_path / "a.wav", np.zeros(4000), 8000)), realtime=True, frame=800)
    started = time.monotonic()
    got = drain(source.start())
    assert len(got) == 5
    assert time.monotonic() - started >= 0.45  # 0.5 s of audio: the last frame is handed over at its end


def test_a_truncated_wav_streams_what_it_holds_then_says_it_is_truncated(tmp_path: Path) -> None:
    whole = _write(tmp_path / "whole.wav", np.linspace(-0.5, 0.5, 8000), 8000)
    data = whole.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: 44 + 2 * 3000 + 1])  # the header, 3000 samples and a half
    source = FileSource(str(cut), frame=1024)
    assert "(TRUNCATED: its header declares 8000 samples, the file holds 3000 (6001 of 16000" in source.description
    got = drain(source.start())
    assert sum(len(f) for f, _ in got) == 3000
    np.testing.assert_allclose(np.concatenate([f for f, _ in got]), np.linspace(-0.5, 0.5, 8000)[:3000], atol=1e-4)
    assert isinstance(source.error, EOFError)
    assert f"{cut} is truncated: its header declares 8000 samples, the file holds 3000" in str(source.error)
    assert "the 0.38 s it holds were streamed" in str(source.error)
    whole_source = FileSource(str(whole))  # the same file whole: no error
    drain(whole_source.start())
    assert whole_source.error is None and "TRUNCATED" not in whole_source.description


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_text("not audio")
    for path in (tmp_path / "x.wav", tmp_path / "missing.flac"):
        with pytest.raises(ConfigError, match=r"source='.*' is invalid: expected a readable WAV/FLAC file"):
            FileSource(str(path))


# ---- the microphone's callback-to-writer path --------------------------------------------------------------


class FakeInputStream:
    """Calls ``callback`` from its own thread like PortAudio: ``blocks`` blocks, each with its ADC time on the
    stream's clock (from 100.0 on), or the ones given; ``overflow_at``: blocks flagged as input overflow."""

    def __init__(self, *, blocks: int = 6, adc: list[float] | None = None, overflow_at: tuple[int, ...] = ()) -> None:
        self.blocks, self.adc, self.overflow_at = blocks, adc, overflow_at
        self.time, self.latency = 100.0, 0.01
        self.opened: dict[str, Any] = {}
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self, **kwargs: Any) -> FakeInputStream:  # the factory: InputStream(device=..., ...)
        self.opened = kwargs
        return self

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rate, n, channels = self.opened["samplerate"], self.opened["blocksize"], self.opened["channels"]
        for k in range(self.blocks):
            if self.stopped.is_set():
                return
            adc = self.adc[k] if self.adc is not None else 100.0 + k * n / rate
            block = np.full((n, channels), k / 10, dtype=np.float32)
            block[:, 0] += 0.5 if channels > 1 else 0.0
            status = SimpleNamespace(input_overflow=k in self.overflow_at)
            self.opened["callback"](block, n, SimpleNamespace(inputBufferAdcTime=adc, currentTime=adc), status)

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()

    def close(self) -> None:
        self.opened["finished_callback"]()


def test_microphone_blocks_reach_the_writer_with_their_adc_time_as_wall_clock_time() -> None:
    fake = FakeInputStream(blocks=6, overflow_at=(3,))
    mic = Microphone("hw:test", 8000, 2, 400, stream_factory=fake)
    before = time.time()
    mic.start()
    offset = mic._offset
    assert before - 100.0 - 0.5 < offset < time.time() - 100.0 + 0.5  # wall clock minus the stream's clock
    assert {k: fake.opened[k] for k in ("device", "samplerate", "channels", "dtype", "blocksize")} == {
        "device": "hw:test", "samplerate": 8000, "channels": 2, "dtype": "float32", "blocksize": 400
    }  # fmt: skip
    got = [wait_for(lambda: mic.get(0.1), 5, f"block {k}") for k in range(6)]
    mic.stop()
    assert mic.get(1.0) is END
    assert [t0 for _, t0 in got] == pytest.approx([100.0 + offset + k * 0.05 for k in range(6)])
    for k, (frame, _) in enumerate(got):  # channels mixed down: (k/10 + 0.5 + k/10) / 2
        assert frame.shape == (400,) and frame.dtype == np.float32
        np.testing.assert_allclose(frame, k / 10 + 0.25, rtol=1e-6)
    assert (mic.frames, mic.samples, mic.overflows, mic.dropped) == (6, 2400, 1, 0)
    assert mic.error is None


def test_a_full_queue_drops_blocks_and_counts_them() -> None:
    fake = FakeInputStream(blocks=10)
    mic = Microphone(None, 8000, 1, 100, queue_blocks=3, stream_factory=fake).start()
    assert fake.thread is not None
    fake.thread.join(5)  # the writer did not read: the callback never waits
    assert (mic.frames, mic.dropped) == (3, 7)
    assert [round(mic.get(0.1)[1] - mic._offset, 4) for _ in range(3)] == [100.0, 100.0125, 100.025]


def test_t0s_never_go_backwards_and_jitter_is_absorbed_but_gaps_are_kept() -> None:
    # block length 0.05 s: 100.0, then 100.04 (early: jitter), 100.06 (late by 0.01: jitter), 99.0 (backwards),
    # 100.5 (a gap: samples lost)
    fake = FakeInputStream(blocks=5, adc=[100.0, 100.04, 100.11, 99.0, 100.5])
    mic = Microphone(None, 8000, 1, 400, stream_factory=fake).start()
    got = [wait_for(lambda: mic.get(0.1), 5, "a block") for _ in range(5)]
    mic.stop()
    assert [round(t0 - mic._offset, 6) for _, t0 in got] == [100.0, 100.05, 100.1, 100.15, 100.5]


def test_without_adc_times_the_callbacks_time_minus_the_block_and_the_latency() -> None:
    fake = FakeInputStream(blocks=1, adc=[0.0])
    mic = Microphone(None, 8000, 1, 400, stream_factory=fake)
    before = time.time()
    mic.start()
    _, t0 = wait_for(lambda: mic.get(0.1), 5, "a block")
    mic.stop()
    assert before - 0.05 - 0.01 - 0.01 <= t0 <= time.time() - 0.05 - 0.01 + 0.01


def test_a_stream_that_ends_by_itself_ends_the_source_with_an_error() -> None:
    fake = FakeInputStream(blocks=2)
    mic = Microphone(None, 8000, 1, 400, stream_factory=fake).start()
    assert fake.thread is not None
    fake.thread.join(5)
    fake.close()  # PortAudio's finished callback, the device gone
    assert len(drain(mic)) == 2
    assert isinstance(mic.error, RuntimeError) and "ended by itself" in str(mic.error)


def test_a_device_that_cannot_be_opened_is_a_config_error() -> None:
    def refuse(**kwargs: Any) -> Any:
        raise ValueError("No input device matching 'nope'")

    with pytest.raises(ConfigError, match=r"device='nope' is invalid: expected an input device PortAudio can open"):
        Microphone("nope", stream_factory=refuse).start()


def test_the_test_signal_is_tone_noise_and_silence_in_frames_with_sample_accurate_t0s() -> None:
    source = Synthetic(12.0, 16000, frame=1000)
    assert source.paced and not Synthetic(1.0, 16000, realtime=True).paced  # fast: the writer waits for the workers
    got = drain(source.start())
    assert source.error is None and source.seconds == 12.0 and {len(f) for f, _ in got} == {1000}
    assert all(t0 == got[0][1] + i * 1000 / 16000 for i, (_, t0) in enumerate(got))
    signal = np.concatenate([f for f, _ in got])
    assert np.array_equal(signal, np.concatenate(list(synthetic(12.0, 16000, 1000))))
    tone, noise, silence = signal[:64000], signal[64000:128000], signal[128000:]  # 4 s each
    assert np.abs(tone).max() > 0.29 and np.abs(noise).max() > 0.29 and not silence.any()
    assert np.corrcoef(tone[:-1], tone[1:])[0, 1] > 0.5 > np.corrcoef(noise[:-1], noise[1:])[0, 1]  # a tone, noise
