"""The main job (`ocycle-dist demo`) and `ocycle-dist status`, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ocycle_dist import demo
from ocycle_dist.remote.settings import Settings
from ocycle_dist.testing import free_port
from workers import vad


def test_demo_on_real_workers_runs_the_three_consumers(topology: Any) -> None:
    lines: list[str] = []
    settings = Settings.from_env(broker_url=topology.url)
    stats = demo.run(topology.url, seconds=12.0, settings=settings, progress=0.05, out=lines.append)
    assert (stats["spl"].done, stats["classify"].done, stats["archive"].done) == (24, 6, 2)
    assert all(s.failed == 0 and s.dropped == 0 for s in stats.values())
    progress = [line for line in lines if line.startswith("progress: spl ")]
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
    flac = sorted(Path(topology.archive_dir).glob("*archive-0000000[01].flac"))
    assert len(flac) == 2 and all(f.stat().st_size > 0 for f in flac)


def test_demo_command_without_a_broker_runs_embedded(tmp_path: Path) -> None:
    env = {**os.environ, "OCYCLE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0", "OCYCLE_ARCHIVE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "ocycle_dist.cli", "demo", "--seconds", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "running an embedded broker (fakeredis) and worker in this process" in out
    assert "spl      every  0.5 s, queue 'spl': 4 chunks, 4 done, 0 failed, 0 dropped, 0 expired" in out
    assert "classify every  2.0 s, queue 'model': 1 chunks, 1 done" in out
    assert len(list(tmp_path.glob("*.flac"))) == 1


def test_demo_with_an_unreachable_explicit_broker_says_so() -> None:
    from ocycle_dist.demo import main_demo

    url = f"redis://127.0.0.1:{free_port()}/0"
    assert main_demo(url, 1.0, None, False) == 2


def test_status_reports_queue_replies_and_workers(topology: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from ocycle_dist.cli import main

    assert main(["status", "--broker", topology.url]) == 0
    out = capsys.readouterr().out
    for queue in ("celery", "spl", "archive", "model"):  # every queue a worker consumes
        assert f"queue {queue!r}: " in out
    assert "tasks delivered to workers, not yet acknowledged: " in out
    assert f"workers seen: {len(topology.workers)}" in out
    assert all(f"{w.name}@" in out for w in topology.workers)
