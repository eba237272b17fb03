"""The encrypted archive end to end: real redis-server and celery worker processes write it, Debian's ``age`` CLI
reads it, ``ocycle-dist archive`` lists and exports it.

One stream of known audio goes through ``workers.tasks.archive_flac`` (10 s chunks) while a watcher reads every
file that appears in the archive directory; the tests below check what it wrote and what the watcher saw.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

import ocycle_dist as ocycle
from ocycle_dist.archive.keys import ensure_identity
from ocycle_dist.archive.names import format_time, is_temporary, parse, to_us
from ocycle_dist.testing import RedisServer, Worker
from tests.support.helpers import wait_for
from workers.audio import _to_pcm16

REPO = Path(__file__).resolve().parents[2]
RATE = 16000
T0 = 1_700_000_000.0
AGE_HEADER = b"age-encryption.org/v1\n"


def age_decrypt(path: Path | str, identity: Path | str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["age", "-d", "-i", str(identity), str(path)], capture_output=True, timeout=60)


def source(seconds: float, seed: int = 0) -> np.ndarray:
    """Float audio: a tone under noise."""
    t = np.arange(round(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 440 * t) + rng.uniform(-0.2, 0.2, t.size)).astype(np.float32)


@dataclass
class Watcher:
    """Reads the head of every file in a directory, over and over, while a run goes on.

    Attributes:
        plaintext: files seen whose first bytes are not (a prefix of) an age header, with those bytes.
        temporary: temporary files seen with bytes in them (writes caught in progress).
    """

    folder: Path
    plaintext: dict[str, bytes] = field(default_factory=dict)
    temporary: set[str] = field(default_factory=set)
    final: set[str] = field(default_factory=set)
    rounds: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="archive-watcher", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.rounds += 1
            for entry in os.scandir(self.folder):
                if entry.name in self.final:
                    continue  # complete files do not change: read once
                try:
                    with open(entry.path, "rb") as f:
                        head = f.read(len(AGE_HEADER))
                except OSError:
                    continue  # renamed or removed in between
                if head != AGE_HEADER[: len(head)] or entry.name.endswith(".flac"):
                    self.plaintext[entry.name] = head
                if is_temporary(entry.name):
                    if head:
                        self.temporary.add(entry.name)
                elif len(head) == len(AGE_HEADER):
                    self.final.add(entry.name)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class Archived:
    """What one run archived: the source audio, the result of each chunk, what the watcher saw."""

    stream: str
    audio: np.ndarray
    results: dict[int, dict[str, Any]]
    watcher: Watcher
    folder: Path
    identity: Path


def stream_through_archive(url: str, stream: str, audio: np.ndarray, seconds_per_chunk: float = 10.0) -> Any:
    results: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def on_done(result: Any, meta: ocycle.Chunk) -> None:
        results[meta.seq] = result

    emitter = ocycle.NumpyEmit(
        "workers.tasks.archive_flac", int(seconds_per_chunk * RATE), clip=True, rate=RATE, mode="celery",
        broker=url, queue="archive", stream=stream, on_done=on_done, on_error=errors.append,
    )  # fmt: skip
    for i in range(0, len(audio), 1024):
        emitter.write(audio[i : i + 1024], t0=T0 + i / RATE)
    return emitter, results, errors


@pytest.fixture(scope="module")
def archived(topology: Any) -> Iterator[Archived]:
    folder = Path(topology.archive_dir)
    audio = source(35.0)
    stream = f"t-arch-{uuid.uuid4().hex[:6]}"
    with Watcher(folder) as watcher:
        emitter, results, errors = stream_through_archive(topology.url, stream, audio)
        assert emitter.close(flush=True, timeout=120) == 0 and not errors, errors
    yield Archived(stream, audio, results, watcher, folder, Path(topology.archive_identity))


def test_the_workers_files_decrypt_with_the_age_cli_to_the_chunks_samples(archived: Archived) -> None:
    assert sorted(archived.results) == [0, 1, 2, 3]  # 10 + 10 + 10 + the 5 s flushed at the end
    pcm = _to_pcm16(archived.audio)
    for seq, result in archived.results.items():
        path = Path(result["path"])
        assert path.parent == archived.folder and path.name.endswith(".flac.age") and result["encrypted"]
        name = parse(path.name)
        assert name is not None and (name.seq, name.t0_us, name.rate) == (seq, to_us(T0 + seq * 10), RATE)
        proc = age_decrypt(path, archived.identity)
        assert proc.returncode == 0, proc.stderr
        samples, rate = sf.read(io.BytesIO(proc.stdout), dtype="int16")
        assert rate == RATE
        np.testing.assert_array_equal(samples, pcm[seq * 10 * RATE : (seq + 1) * 10 * RATE])


def test_another_identity_is_refused_by_the_age_cli(archived: Archived, tmp_path: Path) -> None:
    stranger, _, _ = ensure_identity(tmp_path / "stranger.txt")
    proc = age_decrypt(archived.results[0]["path"], stranger)
    assert proc.returncode != 0 and not proc.stdout
    assert b"no identity matched any of the recipients" in proc.stderr


def test_no_plaintext_file_ever_appears_in_the_archive_directory(archived: Archived) -> None:
    watcher = archived.watcher
    assert watcher.plaintext == {}
    assert {Path(r["path"]).name for r in archived.results.values()} <= watcher.final
    # the watcher did see the writes as they happened: temporary files, ciphertext from their first bytes
    assert watcher.temporary, f"no write caught in progress in {watcher.rounds} rounds"


def test_list_shows_the_stream_its_range_and_no_gap(archived: Archived) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ocycle_dist.app.cli", "archive", "list", "--dir", str(archived.folder)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    start, end = format_time(to_us(T0)), format_time(to_us(T0 + 35))
    assert f"{archived.stream}: {start} .. {end}, 35.0 s in 4 file(s) at 16000 Hz, 0 gap(s)" in proc.stdout


def test_export_of_a_range_spanning_three_files_equals_the_source_audio(archived: Archived, tmp_path: Path) -> None:
    out = tmp_path / "range.wav"
    start, end = format_time(to_us(T0 + 5.5)), str(T0 + 27.25)  # ISO 8601 and epoch seconds
    proc = subprocess.run(
        [sys.executable, "-m", "ocycle_dist.app.cli", "archive", "export", "--dir", str(archived.folder),
         "--identity", str(archived.identity), "--stream", archived.stream, "--from", start, "--to", end, str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "from 3 file(s), 0 gap(s)" in proc.stderr
    samples, rate = sf.read(out, dtype="int16")
    assert rate == RATE
    np.testing.assert_array_equal(samples, _to_pcm16(archived.audio)[round(5.5 * RATE) : round(27.25 * RATE)])


# ---- a worker killed while writing; a worker without recipients ------------------------------------------------


@pytest.fixture
def redis_url(redis_server_required: None) -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


def test_a_killed_worker_leaves_no_file_under_a_final_name_that_does_not_decrypt(
    redis_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    identity, public, _ = ensure_identity(tmp_path / "identity.txt")
    env = {"OCYCLE_ARCHIVE_DIR": str(folder), "OCYCLE_ARCHIVE_RECIPIENTS": public}
    worker = Worker(redis_url, name="archiver", queues="archive", env=env)
    audio = source(6 * 60.0, seed=1)  # six chunks of 60 s: a write takes long enough to be caught in progress
    with ExitStack() as stack:
        stack.callback(worker.stop)
        worker.start()
        emitter, results, errors = stream_through_archive(redis_url, "t-kill", audio, seconds_per_chunk=60.0)
        interrupted: list[str] = []
        for _ in range(3):  # kill it while it writes; until one kill interrupts a write (nearly always the first)
            caught = wait_for(lambda: [p.name for p in folder.iterdir() if is_temporary(p.name) and p.stat().st_size],
                              60, lambda: f"a write in progress\n{worker.tail()}")  # fmt: skip
            worker.kill(signal.SIGKILL)
            worker.wait_exit(10)
            left = [p.name for p in folder.iterdir() if is_temporary(p.name)]
            for path in folder.iterdir():  # what is under a final name decrypts, complete
                if not is_temporary(path.name):
                    assert age_decrypt(path, identity).returncode == 0, path.name
            interrupted += [name for name in left if name in caught]
            worker.start()
            if interrupted:
                break
        assert interrupted, "no kill interrupted a write"
        assert emitter.close(flush=True, timeout=180) == 0 and not errors, errors  # resent: every chunk written
    pcm = _to_pcm16(audio)
    finals = sorted(p for p in folder.iterdir() if not is_temporary(p.name))
    assert len(finals) == 6 and sorted(results) == list(range(6))
    for seq, path in enumerate(finals):
        proc = age_decrypt(path, identity)
        assert proc.returncode == 0, path.name
        samples, _ = sf.read(io.BytesIO(proc.stdout), dtype="int16")
        np.testing.assert_array_equal(samples, pcm[seq * 60 * RATE : (seq + 1) * 60 * RATE])
    for name in interrupted:  # the interrupted write's temporary file: never given a final name
        assert (folder / name).read_bytes().startswith(AGE_HEADER)
        assert name[1:].split(".flac.age.")[0] + ".flac.age" in {p.name for p in finals}  # written again in full


def test_without_recipients_the_archive_worker_refuses_to_start_and_a_chunk_is_refused(
    redis_url: str, tmp_path: Path
) -> None:
    env = {"OCYCLE_ARCHIVE_DIR": str(tmp_path), "OCYCLE_ARCHIVE_RECIPIENTS": "", "OCYCLE_ARCHIVE_PLAINTEXT": ""}
    archiver = Worker(redis_url, name="archiver", queues="archive", env=env)
    other = Worker(redis_url, name="other", queues="celery", env=env)  # gets an archive chunk all the same
    with ExitStack() as stack:
        stack.callback(archiver.stop)
        stack.callback(other.stop)
        archiver.start(wait=False)
        assert archiver.wait_exit(60) == 78, archiver.tail()
        assert "refusing to start: it consumes queue 'archive' and OCYCLE_ARCHIVE_RECIPIENTS='' is invalid" in (
            archiver.tail()
        )
        other.start()
        errors: list[BaseException] = []
        emitter = ocycle.NumpyEmit("workers.tasks.archive_flac", RATE, clip=True, rate=RATE, mode="celery",
                                   broker=redis_url, on_error=errors.append)  # fmt: skip
        emitter.write(source(1.0), t0=T0)
        assert emitter.close(timeout=60) == 0
    [error] = errors
    assert isinstance(error, ocycle.RemoteTaskError)
    assert "OCYCLE_ARCHIVE_RECIPIENTS='' is invalid" in str(error) and "OCYCLE_ARCHIVE_PLAINTEXT=1" in str(error)
    assert list(tmp_path.iterdir()) == []
