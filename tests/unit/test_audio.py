"""Unit tests for workers.audio (numpy/soundfile only, no Celery)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from workers import audio
from workers.audio import archive_flac, as_float, classify, noise, spl, tone

RATE = 16_000


def _plain(value: object) -> bool:
    """Tell whether value holds only str/int/float/dict (msgpack/JSON-friendly)."""
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v) for k, v in value.items())
    return type(value) in (str, int, float)


# --- as_float -------------------------------------------------------------------------


def test_as_float_int16_and_bytes_are_equivalent() -> None:
    pcm = tone(0.5, RATE, amplitude=0.5, dtype=np.int16)
    from_array = as_float(pcm)
    from_bytes = as_float(pcm.astype("<i2").tobytes())
    assert from_array.dtype == np.float32 and from_bytes.dtype == np.float32
    np.testing.assert_array_equal(from_array, from_bytes)
    np.testing.assert_array_equal(from_array, pcm / 32768.0)
    np.testing.assert_allclose(from_array, tone(0.5, RATE, amplitude=0.5), atol=0.5 / 32768 + 1e-7)


def test_as_float_keeps_channels_and_copies() -> None:
    stereo = np.zeros((100, 2), dtype=np.float64)
    out = as_float(stereo)
    assert out.shape == (100, 2) and out.dtype == np.float32
    mono = np.zeros(10, dtype=np.float32)
    out = as_float(mono)
    out[0] = 1.0
    assert mono[0] == 0.0


@pytest.mark.parametrize(
    ("chunk", "detail"),
    [
        (np.array([0.1, "x"], dtype=object), "object"),
        ("abc", "str"),
        ([0.0, 0.1], "list"),
        (np.zeros((4, 2, 2)), "(4, 2, 2)"),
        (np.array(0.5, dtype=np.float32), "()"),
        (np.float32(0.5), "float32"),
        (np.zeros(8, dtype=np.int32), "int32"),
        (np.zeros(8, dtype=np.complex64), "complex64"),
        (np.zeros(0, dtype=np.float32), "at least one sample"),
        (b"\x00\x01\x02", "even length"),
        (np.array([0.0, np.nan], dtype=np.float32), "NaN"),
    ],
)
def test_as_float_rejects_bad_chunks(chunk: object, detail: str) -> None:
    with pytest.raises(ValueError, match="chunk") as err:
        as_float(chunk)  # type: ignore[arg-type]
    assert detail in str(err.value)


@pytest.mark.parametrize("func", [spl, lambda c: classify(c, rate=RATE)])
def test_public_functions_validate_chunk(func) -> None:
    with pytest.raises(ValueError, match="chunk"):
        func("not audio")


# --- spl ------------------------------------------------------------------------------


@pytest.mark.parametrize(("amplitude", "expected"), [(1.0, -3.0103), (0.1, -23.0103)])
def test_spl_of_sine(amplitude: float, expected: float) -> None:
    result = spl(tone(1.0, 48_000, freq=1000.0, amplitude=amplitude))
    assert set(result) == {"n", "dbfs", "db_spl", "peak_dbfs"}
    assert result["n"] == 48_000
    assert result["dbfs"] == pytest.approx(expected, abs=1e-3)
    assert result["db_spl"] == pytest.approx(expected + 94.0, abs=1e-3)
    assert result["peak_dbfs"] == pytest.approx(20 * math.log10(amplitude), abs=1e-3)


def test_spl_offset_and_int16_match_float() -> None:
    as_pcm = spl(tone(1.0, RATE, amplitude=0.1, dtype=np.int16), offset_db=120.0)
    as_flt = spl(tone(1.0, RATE, amplitude=0.1))
    assert as_pcm["dbfs"] == pytest.approx(as_flt["dbfs"], abs=0.01)
    assert as_pcm["db_spl"] == pytest.approx(as_pcm["dbfs"] + 120.0)


def test_spl_of_silence_is_a_finite_floor() -> None:
    for chunk in (np.zeros(RATE, dtype=np.float32), bytes(2 * RATE)):
        result = spl(chunk)
        assert result["dbfs"] == audio.FLOOR_DBFS == result["peak_dbfs"]
        assert result["db_spl"] == audio.FLOOR_DBFS + 94.0
        json.dumps(result, allow_nan=False)
        assert _plain(result)


def test_spl_rejects_non_finite_offset() -> None:
    with pytest.raises(ValueError, match="offset_db"):
        spl(tone(0.1, RATE), offset_db=math.nan)


# --- archive_flac ---------------------------------------------------------------------


T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.fixture(scope="module")
def identity() -> object:
    from pyrage import x25519

    return x25519.Identity.generate()


def _decrypted(path: str, identity: object) -> tuple[np.ndarray, int]:
    import io

    import pyrage

    with open(path, "rb") as f:
        return sf.read(io.BytesIO(pyrage.decrypt(f.read(), [identity])), dtype="int16")


def test_archive_flac_round_trip_encrypted(tmp_path, identity) -> None:
    chunk = tone(1.0, RATE, amplitude=0.5)
    folder = tmp_path / "new" / "dir"
    result = archive_flac(
        chunk, rate=RATE, directory=folder, stream="mic0", t0=T0, seq=1, recipients=[str(identity.to_public())]
    )
    name = f"mic0_20231114T221320.000000Z_00000001_{RATE}@{RATE}_"
    path = folder / result["path"].rsplit("/", 1)[1]
    assert path.name.startswith(name) and path.name.endswith(".flac.age")
    assert result == {
        "path": str(path),
        "bytes": path.stat().st_size,
        "frames": RATE,
        "rate": RATE,
        "encrypted": True,
        "existed": False,
    }
    assert _plain({k: v for k, v in result.items() if not isinstance(v, bool)})
    assert path.read_bytes().startswith(b"age-encryption.org/v1\n")
    data, rate = _decrypted(str(path), identity)
    assert rate == RATE
    np.testing.assert_array_equal(data, audio._to_pcm16(as_float(chunk)))
    assert sorted(p.name for p in folder.iterdir()) == [path.name]


def test_archive_flac_plaintext_only_when_asked(tmp_path) -> None:
    chunk = tone(1.0, RATE, amplitude=0.5)
    result = archive_flac(chunk, rate=RATE, directory=tmp_path, stream="mic0", t0=T0, seq=1, recipients=None)
    assert result["path"].endswith(".flac") and result["encrypted"] is False
    info = sf.info(result["path"])
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", RATE, 1)
    data, rate = sf.read(result["path"], dtype="float64")
    assert rate == RATE and data.shape == chunk.shape
    np.testing.assert_allclose(data, chunk, rtol=0, atol=0.5 / 32768 + 1e-7)
    with pytest.raises(ValueError, match="recipients"):  # an empty list is not "plaintext"
        archive_flac(chunk, rate=RATE, directory=tmp_path, stream="mic0", t0=T0 + 1, seq=2, recipients=[])


def test_archive_flac_int16_stereo_is_lossless(tmp_path, identity) -> None:
    pcm = np.stack(
        [tone(0.5, RATE, dtype=np.int16), noise(0.5, RATE, dtype=np.int16, seed=3)],
        axis=1,
    )
    keys = [str(identity.to_public())]
    result = archive_flac(pcm, rate=RATE, directory=tmp_path, stream="stereo", t0=T0, recipients=keys)
    data, _ = _decrypted(result["path"], identity)
    np.testing.assert_array_equal(data, pcm)


def test_archive_flac_same_chunk_is_recognised_as_written_and_never_rewritten(tmp_path, identity) -> None:
    chunk = noise(2.0, RATE, seed=7)
    keys = [str(identity.to_public())]
    first = archive_flac(chunk, rate=RATE, directory=tmp_path, stream="n", t0=T0, seq=0, recipients=keys)
    content = Path(first["path"]).read_bytes()
    second = archive_flac(chunk, rate=RATE, directory=str(tmp_path), stream="n", t0=T0, seq=0, recipients=keys)
    assert second == {**first, "existed": True}
    assert Path(first["path"]).read_bytes() == content  # age output is random: the same bytes mean not rewritten
    other_run = archive_flac(chunk, rate=RATE, directory=tmp_path, stream="n", t0=T0 + 60, seq=0, recipients=keys)
    other_samples = archive_flac(noise(2.0, RATE, seed=8), rate=RATE, directory=tmp_path, stream="n", t0=T0, seq=0,
                                 recipients=keys)  # fmt: skip
    paths = {first["path"], other_run["path"], other_samples["path"]}
    assert len(paths) == 3 and sorted(p.name for p in tmp_path.iterdir()) == sorted(p.rsplit("/", 1)[1] for p in paths)


def test_archive_flac_failure_leaves_no_file_and_no_temp(tmp_path, monkeypatch, identity) -> None:
    from ocycle_dist.archive import writer

    keys = [str(identity.to_public())]
    kept = archive_flac(tone(0.5, RATE), rate=RATE, directory=tmp_path, stream="a", t0=T0, recipients=keys)

    def broken_encrypt(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(writer, "_encrypt_flac", broken_encrypt)
    with pytest.raises(OSError, match="disk full"):
        archive_flac(noise(0.5, RATE, seed=1), rate=RATE, directory=tmp_path, stream="a", t0=T0 + 1, recipients=keys)
    assert [p.name for p in tmp_path.iterdir()] == [kept["path"].rsplit("/", 1)[1]]


@pytest.mark.parametrize("stream", ["../evil", "a/b", "..", "", ".hidden", "a\\b", "/abs", "x" * 300])
def test_archive_flac_makes_any_stream_id_a_plain_file_name(tmp_path, stream: str) -> None:
    inner = tmp_path / "inner"
    result = archive_flac(tone(0.1, RATE), rate=RATE, directory=inner, stream=stream, t0=T0, recipients=None)
    assert [str(p) for p in inner.iterdir()] == [result["path"]]
    assert len(result["path"].rsplit("/", 1)[1]) < 200 and not result["path"].rsplit("/", 1)[1].startswith(".")


@pytest.mark.parametrize("rate", [0, -8000, 16000.0, True])
def test_archive_flac_rejects_bad_rate(tmp_path, rate: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        archive_flac(tone(0.1, RATE), rate=rate, directory=tmp_path, stream="r", t0=T0, recipients=None)  # type: ignore[arg-type]


# --- classify -------------------------------------------------------------------------


@pytest.mark.parametrize(("freq", "rate"), [(100.0, RATE), (440.0, RATE), (441.3, 44_100), (3000.0, 48_000)])
def test_classify_tone(freq: float, rate: int) -> None:
    result = classify(tone(2.0, rate, freq=freq), rate=rate)
    assert result["label"] == "tone"
    assert result["features"]["peak_hz"] == pytest.approx(freq, abs=1.0)


@pytest.mark.parametrize("amplitude", [1.0, 0.3, 0.05])
def test_classify_noise(amplitude: float) -> None:
    assert classify(noise(2.0, RATE, amplitude=amplitude, seed=11), rate=RATE)["label"] == "noise"


@pytest.mark.parametrize(
    "chunk",
    [
        np.zeros(2 * RATE),
        bytes(4 * RATE),
        tone(2.0, RATE, amplitude=1e-4),
        noise(2.0, RATE, amplitude=1e-4, seed=2),
    ],
)
def test_classify_silence(chunk: object) -> None:
    assert classify(chunk, rate=RATE)["label"] == "silence"  # type: ignore[arg-type]


def test_classify_int16_and_stereo_tone() -> None:
    pcm = tone(2.0, RATE, dtype=np.int16)
    assert classify(pcm, rate=RATE)["label"] == "tone"
    assert classify(np.stack([pcm, pcm], axis=1), rate=RATE)["label"] == "tone"


def test_classify_result_is_plain_and_normalised() -> None:
    result = classify(noise(2.0, RATE, seed=5), rate=RATE)
    assert set(result["scores"]) == set(audio.LABELS)
    assert sum(result["scores"].values()) == pytest.approx(1.0)
    assert result["label"] == max(result["scores"], key=result["scores"].get)
    assert set(result["features"]) == {
        "rms_dbfs",
        "loudness",
        "flatness",
        "peak_fraction",
        "centroid_hz",
        "peak_hz",
    }
    assert _plain(result)
    json.dumps(result, allow_nan=False)


def test_classify_ignores_dc_offset() -> None:
    assert classify(np.full(2 * RATE, 0.5), rate=RATE)["label"] == "silence"
    assert classify(tone(2.0, RATE) + np.float32(0.2), rate=RATE)["label"] == "tone"


# --- signal helpers -------------------------------------------------------------------


def test_tone_and_noise_helpers() -> None:
    sine = tone(0.25, 8000, freq=1000.0, amplitude=0.3, dtype=np.float64)
    assert sine.shape == (2000,) and sine.dtype == np.float64
    assert np.abs(sine).max() == pytest.approx(0.3)
    pcm = tone(0.25, 8000, amplitude=1.0, dtype=np.int16)
    assert pcm.dtype == np.int16 and pcm.max() == 32767
    a, b = noise(1.0, RATE, seed=1), noise(1.0, RATE, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and np.abs(a).max() <= 0.3
    assert not np.array_equal(a, noise(1.0, RATE, seed=2))


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"amplitude": 1.5}, "amplitude"),
        ({"dtype": np.int32}, "dtype"),
        ({"seconds": -1.0}, "seconds"),
    ],
)
def test_helpers_validate(kwargs: dict, word: str) -> None:
    args = {"seconds": 0.1, "rate": RATE} | kwargs
    for make in (tone, noise):
        with pytest.raises(ValueError, match=word):
            make(**args)
