"""The encrypted archive's parts in-process: names, keys, the streaming writer, the catalog, export, the task's
refusal without recipients. (The workers' files read by the real ``age`` CLI: ``integration/test_archive.py``.)"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

pyrage = pytest.importorskip("pyrage")  # the audio extra; installed with the test extra
from pyrage import x25519  # noqa: E402

from ocycle_dist.archive import catalog, export, keys, names, writer  # noqa: E402
from ocycle_dist.errors import ConfigError  # noqa: E402

RATE = 16000
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def identity() -> Any:
    return x25519.Identity.generate()


@pytest.fixture(scope="module")
def public(identity: Any) -> str:
    return str(identity.to_public())


def pcm(seconds: float, seed: int = 0, channels: int = 1) -> np.ndarray:
    shape = (round(seconds * RATE),) if channels == 1 else (round(seconds * RATE), channels)
    return (np.random.default_rng(seed).uniform(-0.4, 0.4, shape) * 32767).astype(np.int16)


def decrypt(path: str | Path, identity: Any) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(pyrage.decrypt(Path(path).read_bytes(), [identity])), dtype="int16")


# ---- names --------------------------------------------------------------------------------------------------------


def test_a_name_spells_what_list_needs_and_parses_back() -> None:
    md5 = names.pcm_digest(b"\x01\x00" * 10)
    name = names.make_name("host-1-archive", T0 + 0.0625, 12, 160000, RATE, md5, encrypted=True)
    assert name.filename == f"host-1-archive_20231114T221320.062500Z_00000012_160000@16000_{md5.hex()[:8]}.flac.age"
    assert names.parse(name.filename) == name
    assert name.end_us == name.t0_us + 10_000_000
    plain = names.make_name("a_b_c", 5.0, None, 10, 8000, md5, encrypted=False)
    assert plain.filename.startswith("a_b_c_19700101T000005.000000Z_x_10@8000_") and plain.filename.endswith(".flac")
    assert names.parse(plain.filename) == plain
    for other in ("notes.txt", "x.flac", ".x.flac.age.abc.tmp", plain.filename + ".bak"):
        assert names.parse(other) is None


def test_any_stream_id_becomes_a_safe_bounded_name_part() -> None:
    assert names.safe_stream("../../etc/passwd") == "s.._.._etc_passwd"
    assert names.safe_stream("") == "chunk"
    long_a, long_b = names.safe_stream("x" * 300), names.safe_stream("x" * 299 + "y")
    assert len(long_a) == names.MAX_STREAM and long_a != long_b  # cut, and the hash of the whole id tells them apart
    with pytest.raises(ValueError, match="t0"):
        names.make_name("s", -1.0, 0, 1, RATE, bytes(16), encrypted=True)


# ---- keys ---------------------------------------------------------------------------------------------------------


def test_recipients_are_comma_separated_keys_or_a_recipients_file(tmp_path: Path, public: str) -> None:
    other = str(x25519.Identity.generate().to_public())
    assert keys.parse_recipients(f" {public} , {other},") == [public, other]
    file = tmp_path / "recipients.txt"
    file.write_text(f"# the owner\n{public}\n\n# backup key\n{other}\n")
    assert keys.parse_recipients(str(file)) == [public, other]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "or a recipients file's path"),
        ("age1notakey", "'age1notakey' is not one"),
        ("/no/such/file", "readable recipients file (No such file or directory)"),
    ],
)
def test_bad_recipients_name_the_setting(value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="OCYCLE_ARCHIVE_RECIPIENTS=") as info:
        keys.parse_recipients(value)
    assert expected in str(info.value)


def test_a_secret_key_as_recipient_is_refused_and_not_shown(tmp_path: Path, identity: Any) -> None:
    secret = str(identity)
    with pytest.raises(ConfigError, match="public keys only") as info:
        keys.parse_recipients(secret)
    assert secret not in str(info.value)
    file = tmp_path / "r.txt"
    file.write_text(secret + "\n")
    with pytest.raises(ConfigError, match="it holds a secret key") as info:
        keys.parse_recipients(str(file))
    assert secret not in str(info.value)


def test_plaintext_only_when_asked_explicitly(public: str) -> None:
    with pytest.raises(ConfigError, match=r"OCYCLE_ARCHIVE_RECIPIENTS='' is invalid.*OCYCLE_ARCHIVE_PLAINTEXT=1"):
        keys.archive_keys("", "")
    with pytest.raises(ConfigError, match="OCYCLE_ARCHIVE_RECIPIENTS"):
        keys.archive_keys("", "0")
    assert keys.archive_keys("", "1") is None
    assert keys.archive_keys(public, "") == [public]
    with pytest.raises(ConfigError, match="OCYCLE_ARCHIVE_PLAINTEXT='yes' is invalid: expected unset, or"):
        keys.archive_keys(public, "yes")
    with pytest.raises(ConfigError, match="OCYCLE_ARCHIVE_PLAINTEXT='maybe'"):
        keys.archive_keys("", "maybe")


def test_the_demo_identity_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "ocycle-dist" / "id.txt"
    made, public, created = keys.ensure_identity(path)
    assert (made, created) == (path, True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not keys.too_open(path)
    text = path.read_text()
    assert f"# public key: {public}\n" in text and "AGE-SECRET-KEY-1" in text
    assert keys.ensure_identity(path) == (path, public, False)  # kept: earlier archives stay readable
    assert str(keys.read_identities(path)[0].to_public()) == public
    path.chmod(0o644)
    assert keys.too_open(path)


def test_identity_files_are_checked_and_named(tmp_path: Path, public: str) -> None:
    wrong = tmp_path / "pub.txt"
    wrong.write_text(public + "\n")
    with pytest.raises(ConfigError, match=r"identity=.*line 1 is a public key"):
        keys.read_identities(wrong)
    with pytest.raises(ConfigError, match="identity='/nope' is invalid: expected a readable age identity file"):
        keys.read_identities("/nope")


# ---- the writer ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "channels"), [(10.0, 1), (2.5, 2), (0.001, 1)])
def test_streamed_encryption_gives_the_samples_back_and_flacs_own_header(
    tmp_path: Path, identity: Any, public: str, seconds: float, channels: int
) -> None:
    samples = pcm(seconds, 1, channels)
    result = writer.write_chunk(samples, rate=RATE, directory=tmp_path, stream="s", t0=T0, seq=0, keys=[public])
    flac = pyrage.decrypt(Path(result["path"]).read_bytes(), [identity])
    data, rate = sf.read(io.BytesIO(flac), dtype="int16")
    assert rate == RATE
    np.testing.assert_array_equal(data, samples)
    reference = io.BytesIO()  # the same FLAC written to a seekable file: the encoder fills its header in itself
    sf.write(reference, samples, RATE, format="FLAC", subtype="PCM_16")
    ref = reference.getvalue()
    assert flac[18:42] == ref[18:42]  # sample count and MD5: what the encoder computed, computed here before it
    assert flac[12:18] == bytes(6) and flac[42:] == ref[42:]  # frame sizes "unknown"; the audio the same bytes


def test_an_encoder_rewrite_that_differs_from_what_was_encrypted_fails_the_chunk() -> None:
    sink = writer._FlacSink(10, RATE, 1, bytes(16))
    head = io.BytesIO()
    sf.write(head, np.zeros(10, dtype=np.int16), RATE, format="FLAC", subtype="PCM_16")
    sink.write(head.getvalue())
    assert sink.error is None and sink.out[0][:4] == b"fLaC"
    sink.seek(12)
    sink.write(b"\x00\x00\x10\x00\x00\x20")  # frame sizes: left "unknown", accepted
    assert sink.error is None
    sink.seek(26)
    sink.write(b"\xff" * 16)  # an MD5 that is not the one sent
    assert isinstance(sink.error, writer.ArchiveWriteError) and "header byte 26" in str(sink.error)
    assert sink.write(b"more") == 0  # failed for good


def test_a_chunk_over_a_killed_write_is_written_and_the_stale_temporary_removed(tmp_path: Path, public: str) -> None:
    samples = pcm(1.0)
    name = names.make_name("s", T0, 0, len(samples), RATE, names.pcm_digest(samples.tobytes()), encrypted=True)
    stale = tmp_path / f".{name.filename}.abc123.tmp"
    stale.write_bytes(b"age-encryption.org/v1\n-> X25519 cut short")
    old = stale.stat().st_mtime - writer.STALE_TEMP - 1
    os.utime(stale, (old, old))
    result = writer.write_chunk(samples, rate=RATE, directory=tmp_path, stream="s", t0=T0, seq=0, keys=[public])
    assert [p.name for p in tmp_path.iterdir()] == [name.filename] and result["path"].endswith(name.filename)


def test_the_task_refuses_a_chunk_without_recipients_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, public: str
) -> None:
    import workers.tasks as tasks

    base = replace(tasks.settings, archive_dir=str(tmp_path), archive_recipients="", archive_plaintext="")
    monkeypatch.setattr(tasks, "settings", base)
    chunk = pcm(0.5).astype(np.float32) / 32768
    with pytest.raises(ConfigError, match="OCYCLE_ARCHIVE_RECIPIENTS='' is invalid") as info:
        tasks.archive_flac(chunk, T0)
    assert "OCYCLE_ARCHIVE_PLAINTEXT=1" in str(info.value) and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(tasks, "settings", replace(base, archive_plaintext="1"))
    assert tasks.archive_flac(chunk, T0)["path"].endswith(".flac")
    monkeypatch.setattr(tasks, "settings", replace(base, archive_recipients=public))
    assert tasks.archive_flac(chunk, T0)["path"].endswith(".flac.age")


# ---- catalog and export -------------------------------------------------------------------------------------------


def archive_of(tmp_path: Path, public: str, layout: list[tuple[float, float]], stream: str = "mic") -> np.ndarray:
    """Files of ``stream`` at (t0 offset, seconds) over one source signal (its sample at offset t is t * RATE)."""
    source = pcm(max(t + s for t, s in layout), seed=5)
    for seq, (t, s) in enumerate(layout):
        a = round(t * RATE)
        piece = source[a : a + round(s * RATE)]
        writer.write_chunk(piece, rate=RATE, directory=tmp_path, stream=stream, t0=T0 + t, seq=seq, keys=[public])
    return source


def test_the_catalog_shows_streams_ranges_gaps_and_overlaps_from_names_only(tmp_path: Path, public: str) -> None:
    archive_of(tmp_path, public, [(0, 10), (10, 10), (22.5, 10), (32, 1)])
    archive_of(tmp_path, public, [(0, 2)], stream="other")
    (tmp_path / ".x.flac.age.zz.tmp").write_bytes(b"")
    (tmp_path / "README").write_text("hi")
    found = catalog.scan(tmp_path)
    mic = found.streams["mic"]
    assert [e.name.seq for e in mic.files] == [0, 1, 2, 3] and mic.seconds == 31.0
    assert [(g.start_us - mic.start_us, g.seconds) for g in mic.gaps] == [(20e6, 2.5)]
    assert [(o.start_us - mic.start_us, o.seconds) for o in mic.overlaps] == [(32e6, 0.5)]
    lines = catalog.report(found)
    assert lines[0].endswith("2 stream(s), 5 file(s) (5 encrypted, 0 unencrypted), 33.0 s of audio")
    assert "mic: 2023-11-14T22:13:20.000000Z .. 2023-11-14T22:13:53.000000Z, 31.0 s in 4 file(s) at 16000 Hz," \
           " 1 gap(s), 1 overlap(s)" in lines  # fmt: skip
    assert "  gap 2023-11-14T22:13:40.000000Z .. 2023-11-14T22:13:42.500000Z (2.500 s)" in lines
    assert lines[-2].startswith("1 temporary file(s) of writes in progress or interrupted")
    assert lines[-1] == "1 other file(s) not named as archive files, ignored"


def test_export_joins_sample_exactly_and_fills_gaps_with_silence(tmp_path: Path, identity: Any, public: str) -> None:
    source = archive_of(tmp_path / "a", public, [(0, 10), (10, 10), (20, 10), (32, 3)])
    found = catalog.scan(tmp_path / "a")
    out = tmp_path / "range.wav"
    said: list[str] = []
    start, end = names.to_us(T0 + 5.5), names.to_us(T0 + 25.25)
    done = export.export(found, out, identities=[identity], start_us=start, end_us=end, say=said.append)
    data, rate = sf.read(out, dtype="int16")
    np.testing.assert_array_equal(data, source[round(5.5 * RATE) : round(25.25 * RATE)])
    assert (rate, len(done.pieces), said, stat.S_IMODE(out.stat().st_mode)) == (RATE, 3, [], 0o600)
    whole = tmp_path / "whole.flac"
    done = export.export(found, whole, identities=[identity], say=said.append)
    data, _ = sf.read(whole, dtype="int16")
    assert len(data) == 35 * RATE and not data[30 * RATE : 32 * RATE].any()
    np.testing.assert_array_equal(data[: 30 * RATE], source[: 30 * RATE])
    np.testing.assert_array_equal(data[32 * RATE :], source[32 * RATE :])
    assert said == ["gap 2023-11-14T22:13:50.000000Z .. 2023-11-14T22:13:52.000000Z (2.000 s): filled with silence"]
    said.clear()  # a range that starts in a gap and ends after the archive: both ends said
    start, end = names.to_us(T0 + 31), names.to_us(T0 + 40)
    done = export.export(
        found, tmp_path / "ends.wav", identities=[identity], start_us=start, end_us=end, say=said.append
    )
    assert done.frames == 3 * RATE and said == [
        "no audio before 2023-11-14T22:13:52.000000Z: the output starts there, not at --from",
        "no audio after 2023-11-14T22:13:55.000000Z: the output ends there, not at --to",
    ]
    with pytest.raises(export.ExportError, match=r"1 gap\(s\) in the range \(--gaps fail\): nothing written"):
        export.export(found, tmp_path / "x.wav", identities=[identity], gaps="fail")
    assert not (tmp_path / "x.wav").exists()


def test_export_refuses_what_it_cannot_do_and_writes_nothing(tmp_path: Path, identity: Any, public: str) -> None:
    archive_of(tmp_path / "a", public, [(0, 1), (1, 1)])
    found = catalog.scan(tmp_path / "a")
    stranger = x25519.Identity.generate()
    out = tmp_path / "o.wav"
    with pytest.raises(export.ExportError, match="does not decrypt with the identity given"):
        export.export(found, out, identities=[stranger])
    with pytest.raises(ConfigError, match="identity=None is invalid: expected an age identity file"):
        export.export(found, out, identities=None)
    with pytest.raises(ConfigError, match=r"out='.*o.mp3' is invalid: expected a file name ending in .wav or .flac"):
        export.export(found, tmp_path / "o.mp3", identities=[identity])
    with pytest.raises(ConfigError, match=r"stream='nope' is invalid: expected a stream of .*: mic"):
        export.export(found, out, identities=[identity], stream="nope")
    with pytest.raises(export.ExportError, match="stream mic has no audio between"):
        export.export(found, out, identities=[identity], start_us=names.to_us(T0 + 60))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no output, no temporary file
    out.write_bytes(b"mine")
    with pytest.raises(ConfigError, match="a file that does not exist yet \\(--force to replace it\\)"):
        export.export(found, out, identities=[identity])
    assert out.read_bytes() == b"mine"
    first, second = found.streams["mic"].files
    os.rename(second.path, tmp_path / "a" / "moved")
    os.rename(first.path, second.path)  # a file under another chunk's name
    with pytest.raises(export.ExportError, match="not what its name says: renamed or damaged"):
        export.export(catalog.scan(tmp_path / "a"), out, identities=[identity], force=True)
    assert out.read_bytes() == b"mine"


@pytest.mark.parametrize(
    ("text", "us"),
    [("2023-11-14T22:13:20Z", 1_700_000_000_000_000), ("2023-11-14T23:13:20.5+01:00", 1_700_000_000_500_000),
     ("2023-11-14 22:13:20", 1_700_000_000_000_000), ("1700000000.25", 1_700_000_000_250_000)],
)  # fmt: skip
def test_times_are_iso_8601_or_epoch_seconds(text: str, us: int) -> None:
    assert export.parse_time(text, "from") == us


def test_a_bad_time_names_its_flag() -> None:
    with pytest.raises(ConfigError, match="from='noon' is invalid: expected a time"):
        export.parse_time("noon", "from")


def test_the_list_command_prints_json_and_names_a_missing_directory(
    tmp_path: Path, public: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from ocycle_dist.app.cli import main

    archive_of(tmp_path, public, [(0, 1), (2, 1)])
    assert main(["archive", "list", "--dir", str(tmp_path), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    [mic] = listing["streams"]
    assert (mic["stream"], mic["files"], mic["encrypted"], mic["seconds"]) == ("mic", 2, 2, 2.0)
    assert mic["gaps"] == [{"start": "2023-11-14T22:13:21.000000Z", "seconds": 1.0}]
    assert main(["archive", "list", "--dir", str(tmp_path / "none")]) == 2
    assert "dir=" in capsys.readouterr().err
