"""The main job (`ocycle-dist demo`) and `ocycle-dist status`, end to end."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from ocycle_dist.app import demo
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import free_port
from workers import vad


def test_demo_on_real_workers_runs_the_three_consumers(topology: Any) -> None:
    lines: list[str] = []
    settings = Settings.from_env(broker_url=topology.url)
    outcome = demo.run(topology.url, seconds=12.0, settings=settings, progress=0.05, out=lines.append)
    stats = outcome.stats
    assert outcome.code == 0 and outcome.left == {"spl": 0, "classify": 0, "archive": 0}
    assert (stats["spl"].done, stats["classify"].done, stats["archive"].done) == (24, 6, 2)
    assert all(s.failed == 0 and s.dropped == 0 for s in stats.values())
    progress = [line for line in lines if line.startswith("progress ") and "s of audio: spl " in line]
    assert progress and "classify" in progress[-1] and "archive" in progress[-1]
    classified = sorted(
        (int(line.split("#")[1].split()[0]), line.split("]")[1].split()[0])
        for line in lines
        if line.startswith("[classify")
    )
    labels = [label for _, label in classified]  # in stream order: workers answer out of order
    if vad.available():  # the workers run this interpreter: Silero VAD hears no speech in tone, noise, silence
        assert labels == ["no_speech"] * 6
    else:  # the hand-set fallback
        assert labels == ["tone", "tone", "noise", "noise", "silence", "silence"]
    archived = [line.split("] ", 1)[1].split(" (")[0] for line in lines if line.startswith("[archive")]
    assert len(archived) == 2 and all(p.endswith(".flac.age") for p in archived)
    for path in archived:  # encrypted to the workers' recipient: the owner's identity reads them with the age CLI
        age = ["age", "-d", "-i", str(topology.archive_identity), path]
        flac = subprocess.run(age, capture_output=True, check=True).stdout
        assert sf.info(io.BytesIO(flac)).frames in (10 * 16000, 2 * 16000)


def test_demo_command_without_a_broker_runs_embedded_and_two_runs_keep_both_runs_files(tmp_path: Path) -> None:
    archive, config = tmp_path / "archive", tmp_path / "config"
    env = {**os.environ, "OCYCLE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0", "OCYCLE_ARCHIVE_DIR": str(archive),
           "XDG_CONFIG_HOME": str(config)}  # fmt: skip
    for name in ("OCYCLE_ARCHIVE_RECIPIENTS", "OCYCLE_ARCHIVE_PLAINTEXT"):  # nothing configured
        env.pop(name, None)
    identity = config / "ocycle-dist" / "archive-identity.txt"
    runs = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "ocycle_dist.app.cli", "demo", "--seconds", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert proc.returncode == 0, proc.stderr
        runs.append(proc.stdout + proc.stderr)  # results on stdout; progress, summary and the broker on stderr
    out = runs[0]
    assert "starting an embedded broker and worker" in out
    assert "embedded broker: redis-server 7" in out  # redis-server is on PATH here: a real server, a child process
    assert "embedded workers: 1 celery worker child process" in out and "consuming celery,spl,model,archive" in out
    assert "  spl        every 0.5 s, queue 'spl': 4 chunks: 4 done, 0 left, 0 failed, 0 dropped, 0 expired" in out
    assert "  classify   every 2 s, queue 'model': 1 chunks: 1 done, 0 left" in out
    assert "  archive    every 10 s, queue 'archive': 1 chunks: 1 done, 0 left" in runs[1]
    assert "exit 0: every chunk done" in out
    # the first run made the user an identity, readable by them only, and said where and how to decrypt
    assert f"encrypting to your identity {identity} (made now, mode 0600" in out
    assert f"age -d -i {identity} {archive}/FILE.flac.age > FILE.flac" in out
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    assert f"encrypting to your identity {identity}\n" in runs[1]  # the second run kept it
    files = sorted(archive.iterdir())
    assert len(files) == 2 and all(f.name.endswith(".flac.age") for f in files)  # one per run, both kept
    for f in files:
        flac = subprocess.run(["age", "-d", "-i", str(identity), str(f)], capture_output=True, check=True).stdout
        assert sf.info(io.BytesIO(flac)).frames == 2 * 16000


def test_demo_with_an_unreachable_explicit_broker_says_so() -> None:
    from ocycle_dist.app.demo import main_demo

    url = f"redis://127.0.0.1:{free_port()}/0"
    assert main_demo(url, 1.0, None, False) == 2


def test_status_reports_queue_replies_and_workers(topology: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from ocycle_dist.app.cli import main

    assert main(["status", "--broker", topology.url]) == 0
    out = capsys.readouterr().out
    for queue in ("celery", "spl", "archive", "model"):  # every queue a worker consumes
        assert f"queue {queue!r}: " in out
    assert "tasks delivered to workers, not yet acknowledged: " in out
    assert f"workers seen: {len(topology.workers)}" in out
    assert all(f"{w.name}@" in out for w in topology.workers)
