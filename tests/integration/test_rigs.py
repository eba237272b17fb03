"""The rigs themselves: workers started together, readiness read from the log or by ping, logs where asked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ocycle_dist.procs.workers import ping
from ocycle_dist.testing import RedisServer, Worker, wait_all_ready

pytestmark = pytest.mark.usefixtures("redis_server_required")

ROOT = Path(__file__).resolve().parents[2]


def test_workers_started_together_are_ready_by_log_and_by_ping(tmp_path: Path) -> None:
    with RedisServer(log=tmp_path / "redis.log") as redis:
        workers = [
            Worker(redis.url, name="loud", queues="rig-a", log=tmp_path / "loud.log"),  # INFO: read from the log
            Worker(redis.url, name="quiet", queues="rig-b", loglevel="WARNING", cwd=ROOT),  # pinged, msgpack
        ]
        try:
            for worker in workers:
                worker.start(wait=False)
            assert wait_all_ready(workers, timeout=90) >= 0
            assert ping(redis.url, ["loud", "quiet", "absent"], serializer=workers[1].serializer) == {"loud", "quiet"}
            assert workers[1].env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
        finally:
            for worker in workers:
                worker.stop()
        assert (tmp_path / "loud.log").read_text().count(" ready.") == 1
    assert (tmp_path / "redis.log").exists()


def test_wait_all_ready_reports_a_worker_that_exits(tmp_path: Path) -> None:
    with RedisServer() as redis:
        worker = Worker(redis.url, name="broken", app="no_such_app_module", loglevel="WARNING", log=tmp_path / "b.log")
        worker.start(wait=False)
        try:
            with pytest.raises(RuntimeError, match="broken exited"):
                wait_all_ready([worker], timeout=60)
        finally:
            worker.stop()
