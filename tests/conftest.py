"""Shared fixtures of the whole suite.

Layout: ``unit/`` runs in-process (fakeredis at most), ``integration/`` starts real ``redis-server`` and
``celery worker`` processes, ``contract/`` runs one suite over every executor, ``deploy/`` the compose
deployment; ``support/`` holds what they share (helpers, the test tasks every test worker loads). Every test
that needs real processes carries the ``integration`` marker (set here by directory, and by fixture for the
contract suite's celery mode): ``make test-unit`` runs ``-m "not integration"`` over ``unit/`` and
``contract/``, ``make test-integration`` the rest.

``mode`` parametrizes the contract suite over every executor: add a mode to ``LOCAL_MODES`` (or a list
next to it) and every contract test runs on it. ``mode_options`` gives the executor options a mode needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ocycle_dist as ocycle

LOCAL_MODES = ["serial", "thread", "process"]
MODES = [*LOCAL_MODES, "celery"]  # celery: real redis-server and worker processes (the ``topology`` fixture)


INTEGRATION_FIXTURES = {"topology", "redis_server_required"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark as ``integration`` every test under ``integration/`` or using a fixture that starts processes."""
    for item in items:
        path = str(getattr(item, "path", ""))
        uses = set(getattr(item, "fixturenames", ())) & INTEGRATION_FIXTURES
        celery_param = getattr(item, "callspec", None) is not None and item.callspec.params.get("mode") == "celery"
        if "/integration/" in path or uses or celery_param:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """The executor mode under test."""
    return str(request.param)


@pytest.fixture
def mode_options(mode: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Executor options for ``mode``: the broker for celery, none for the local modes."""
    return {"broker": request.getfixturevalue("topology").url} if mode == "celery" else {}


@pytest.fixture
def task(mode: str) -> Callable[[Any], Any]:
    """The callback to give in ``mode``: the function, or for celery the name of its twin task."""
    return lambda fn: f"contract.{fn.__name__}" if mode == "celery" else fn


@pytest.fixture
def make_emitter(
    mode: str, mode_options: dict[str, Any], task: Callable[[Any], Any]
) -> Iterator[Callable[..., ocycle.BufferEmit]]:
    """Build emitters in ``mode``; each is closed at teardown so no pool outlives its test."""
    made: list[ocycle.BufferEmit] = []

    def make(callback: Any, size: int, *, cls: type[ocycle.BufferEmit] = ocycle.BufferEmit, **kwargs: Any) -> Any:
        emitter = cls(task(callback), size, mode=mode, **mode_options, **kwargs)
        made.append(emitter)
        return emitter

    yield make
    for emitter in made:
        emitter.close(wait=False)


def require_redis_server() -> None:
    """Skip the calling test when redis-server is not installed, except in CI (``CI`` set), where it fails."""
    import os
    import shutil

    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server_required() -> None:
    """For tests that start their own redis-server: skipped without it (failed in CI)."""
    require_redis_server()


@pytest.fixture(scope="session")
def topology(redis_server_required: None) -> Iterator[Any]:
    """A real redis-server (with a password) and the compose file's worker services as processes (2 + 1).

    The archive (``topology.archive_dir``) is encrypted to an identity made for the session
    (``topology.archive_identity``, its path). Skipped when redis-server is not installed, except in CI (``CI``
    set), where it fails.
    """
    import shutil
    import tempfile

    from ocycle_dist.archive.keys import ensure_identity
    from ocycle_dist.testing import Topology

    archive = tempfile.mkdtemp(prefix="ocycle-archive-")
    keys = Path(tempfile.mkdtemp(prefix="ocycle-keys-"))
    identity, public, _ = ensure_identity(keys / "identity.txt")
    env = {"OCYCLE_ARCHIVE_DIR": archive, "OCYCLE_ARCHIVE_RECIPIENTS": public}
    groups = {"worker": 2, "worker-model": 1}  # the compose file's services, as processes
    with Topology(
        0, groups=groups, concurrency=2, password="test-pw", include=("tests.support.tasks",), env=env
    ) as topo:
        topo.archive_dir = archive
        topo.archive_identity = identity
        yield topo
    shutil.rmtree(archive, ignore_errors=True)
    shutil.rmtree(keys, ignore_errors=True)


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on a 4 MiB filesystem, to fill a durable spool's disk: a tmpfs mounted there (as root); where
    mounting is not allowed, the spool is told its disk has 4 MiB less what its files take (SQLite then fails
    the same way, "database or disk is full")."""
    import os
    import shutil
    import subprocess

    from ocycle_dist.remote import spool
    from tests.support.helpers import footprint

    directory = tmp_path / "small"
    directory.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(directory)]
        mounted = subprocess.run(mount, capture_output=True).returncode == 0
    if not mounted:
        monkeypatch.setattr(spool, "_free_bytes", lambda d: max(0, (4 << 20) - footprint(d)))
    try:
        yield directory
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], check=True)
