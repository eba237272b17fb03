"""The spools on fakeredis: a cancelled chunk leaves them, the durable one outlives its producer (a new one adopts
its chunks and sends again only those gone from Redis), its directory deleted, its disk full, its footprint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.errors import ConfigError, SpoolError
from ocycle_dist.remote import wire
from ocycle_dist.remote.settings import Settings
from tests.support.dist_helpers import (
    answer,
    assert_accounted,
    queued,
    reply,
    settled,
    spool_rows,
    warnings_of,
)
from tests.support.helpers import footprint, wait_for


def test_a_cancelled_chunk_leaves_the_spool(make: Any, admin: Any, tmp_path: Path) -> None:
    emitter, got = make(settings={"spool_dir": str(tmp_path)}, max_inflight=2, policy="drop_oldest")
    for i in range(3):
        emitter.write(bytes([97 + i]) * 4)
    assert emitter.stats().dropped == 1 and emitter.stats().in_flight == 2
    assert emitter.executor.pending == 2
    assert spool_rows(tmp_path, emitter.stream) == [1, 2]
    wait_for(lambda: {m["headers"]["ocycle"]["seq"] for m in queued(admin)} >= {1, 2}, what="chunks 1, 2 sent")
    for message in queued(admin):
        reply(admin, emitter.stream, message["headers"]["id"], result="ok")
    assert emitter.wait(10)
    assert got.done_seqs == [1, 2]
    wait_for(lambda: spool_rows(tmp_path, emitter.stream) == [], what="the spool emptied")
    assert_accounted(emitter, 3)


def die(executor: Any) -> None:
    """What a producer's exit does to an executor after shutdown(wait=False): its chunks are no longer followed,
    the disk stays (in one test process the old executor would otherwise go on answering the adopted chunks)."""
    executor.abandon()
    assert executor.finished.is_set()


def test_sqlite_spool_outlives_its_executor_and_a_new_emitter_adopts_it_sending_again_only_what_redis_lost(
    make: Any, admin: Any, tmp_path: Path
) -> None:
    settings = {"spool_dir": str(tmp_path)}
    first, got1 = make(stream="adopt-me", settings=settings)
    first.write(b"aaaabbbbccccdddd")
    messages = wait_for(lambda: len(q := queued(admin)) == 4 and q, what="4 published messages")
    ids = {m["headers"]["ocycle"]["seq"]: m["headers"]["id"] for m in messages}
    reply(admin, "adopt-me", ids[0], result="first")
    wait_for(lambda: got1.done_seqs == [0], what="chunk 0 done in the first producer")
    wait_for(lambda: spool_rows(tmp_path, "adopt-me") == [1, 2, 3], what="chunk 0 out of the spool")
    old = first.executor
    first.close(wait=False)  # shutdown(wait=False): chunks 1, 2 and 3 pending
    die(old)
    assert spool_rows(tmp_path, "adopt-me") == [1, 2, 3]
    reply(admin, "adopt-me", ids[1], result="one")  # answered while no producer ran: waits in the reply list
    lost = next(raw for raw in admin.lrange("celery", 0, -1) if ids[3].encode() in raw)
    admin.lrem("celery", 1, lost)  # chunk 3's message is gone (a purge, an evicting Redis); chunk 2's waits

    second, got2 = make(stream="adopt-me", settings=settings)
    executor = second.executor
    assert second.stats().emitted == 3 and second.stats().in_flight == 3 and executor.pending == 3
    wait_for(lambda: executor.counts["published"] == 1, what="the lost chunk sent again")
    assert executor.counts["resent"] == 1 and executor.counts["lost"] == 1  # from the spool's delivery tags
    again = queued(admin)[0]  # ahead of the message that waited
    assert (again["headers"]["id"], again["headers"]["ocycle"]["seq"]) == (ids[3], 3)
    assert [m["headers"]["id"] for m in queued(admin)] == [ids[3], ids[0], ids[1], ids[2]]  # 1, 2: not again
    reply(admin, "adopt-me", ids[2], result="two")  # to the first producer's message
    reply(admin, "adopt-me", ids[3], result="three")
    assert second.wait(10)
    assert sorted(got2.done) == [(1, "one"), (2, "two"), (3, "three")]
    assert got1.done_seqs == [0]
    wait_for(lambda: spool_rows(tmp_path, "adopt-me") == [], what="the spool emptied")
    second.write(b"eeee")  # the stream goes on after the adopted chunks
    last = wait_for(lambda: (q := queued(admin)) and q[-1]["headers"]["ocycle"]["seq"] == 4 and q[-1], what="#4 sent")
    reply(admin, "adopt-me", last["headers"]["id"], result="four")
    assert second.wait(10)
    assert got2.done_seqs == [1, 2, 3, 4] and got2.errors == []
    assert_accounted(second, 4)
    assert second.stats().latency_p99 > 0.0  # the adopted chunks' latency counts from their first emit


def test_a_spool_dir_that_is_not_writable_is_a_config_error_naming_spool(broker: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = str(blocker / "spool")
    with pytest.raises(ConfigError, match=r"^spool=.*writable directory") as excinfo:
        ocycle.BufferEmit("t", 4, mode="celery", settings=Settings(broker_url=broker, spool_dir=bad))
    assert excinfo.value.param == "spool" and excinfo.value.value == bad
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit("t", 4, mode="celery", broker=broker, spool=bad)
    assert excinfo.value.param == "spool"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError) as excinfo:
            ocycle.BufferEmit("t", 4, mode="celery", broker=broker, spool=str(locked))
        assert excinfo.value.param == "spool"


def test_a_spool_directory_deleted_mid_run_is_written_again_and_a_restart_adopts_every_chunk(
    make: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    settings = {"spool_dir": str(directory), "resend_after": 60.0}  # no reply comes: all 300 stay pending
    first, got1 = make(stream="vanish", settings=settings, max_inflight=1000)
    for i in range(150):
        first.write(b"%04d" % i)
    shutil.rmtree(directory)  # e.g. a tmp cleaner
    for i in range(150, 300):
        first.write(b"%04d" % i)  # nothing raises
    assert len(warnings_of(caplog, "vanished")) == 1
    assert "writing it again with the 150 chunks pending" in warnings_of(caplog, "vanished")[0]
    assert spool_rows(directory, "vanish") == list(range(300))
    assert got1.errors == [] and first.stats().in_flight == 300
    old = first.executor
    first.close(wait=False)
    die(old)  # the producer stops; a new one starts on the same directory and stream
    second, _ = make(stream="vanish", settings=settings, max_inflight=1000)
    assert second.stats().emitted == 300 and second.stats().in_flight == 300  # was 0


def test_a_spool_directory_that_cannot_be_written_again_fails_the_chunk_with_a_spool_error(
    make: Any, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    emitter, got = make(settings={"spool_dir": str(directory), "resend_after": 60.0})
    emitter.write(b"aaaa")
    shutil.rmtree(directory)
    directory.write_text("a file where the directory was")
    emitter.write(b"bbbb")  # returns: the chunk fails
    settled(emitter)
    ((seq, exc),) = got.errors
    assert seq == 1 and isinstance(exc, SpoolError) and isinstance(exc, OSError)
    assert "vanished and cannot be written again" in str(exc)
    directory.unlink()
    emitter.write(b"cccc")  # the directory can be made again: written with every chunk pending
    assert spool_rows(directory, emitter.stream) == [0, 2]
    stats = emitter.stats()
    assert (stats.emitted, stats.in_flight, stats.failed, stats.dropped) == (3, 2, 1, 0)


def test_a_full_disk_fails_the_chunks_the_spool_cannot_keep_and_the_spool_recovers(
    make: Any, admin: Any, small_disk: Path
) -> None:
    emitter, got = make(settings={"spool_dir": str(small_disk), "resend_after": 60.0}, size=16384, max_inflight=1000)
    for i in range(400):  # 400 chunks of 16 KiB: more than the disk holds
        emitter.write(bytes([i % 256]) * 16384)  # never raises
    wait_for(  # each chunk kept on disk or failed (the publisher's thread writes the spool): every one accounted
        lambda: emitter.stats().failed + len(spool_rows(small_disk, emitter.stream)) == 400,
        what="every chunk kept or failed",
    )
    settled(emitter)
    stats = emitter.stats()
    assert stats.emitted == 400 and stats.dropped == 0
    assert 0 < stats.failed < 400 and stats.in_flight == 400 - stats.failed  # every chunk counted
    assert all(type(exc) is SpoolError and "the disk is full" in str(exc) for _, exc in got.errors), got.errors[:1]
    assert len(spool_rows(small_disk, emitter.stream)) == stats.in_flight  # what was kept is on disk
    messages = wait_for(lambda: len(q := queued(admin)) == stats.in_flight and q, what="the kept chunks sent")
    for message in messages:  # their results come back: the spool empties
        answer(admin, emitter.stream, message, result="ok")
    assert emitter.wait(10)
    wait_for(lambda: spool_rows(small_disk, emitter.stream) == [], what="the spool emptied on disk")
    failed = emitter.stats().failed
    for i in range(400, 410):
        emitter.write(bytes([i % 256]) * 16384)  # and keeps new chunks again
    settled(emitter)
    assert emitter.stats().failed == failed and emitter.stats().in_flight == 10
    assert spool_rows(small_disk, emitter.stream) == list(range(400, 410))


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
@pytest.mark.parametrize(
    ("budget", "size", "writes"),
    [
        (20000, 16, 400),
        (20000, 400, 300),
        (20000, 5000, 40),
        pytest.param(1_000_000, 400, 3000, marks=pytest.mark.integration),  # 3000 chunks on disk: seconds
    ],
)
def test_spool_max_bytes_bounds_the_files_on_disk(
    make: Any, tmp_path: Path, policy: str, budget: int, size: int, writes: int
) -> None:
    settings = {"spool_dir": str(tmp_path), "spool_max_bytes": budget, "resend_after": 60.0}
    emitter, got = make(settings=settings, size=size, max_inflight=writes, policy=policy)
    chunk = len(wire.dumps(b"x" * size))
    bound = budget + min(budget // 16, 4 << 20) + 2 * chunk + 96 * 1024  # docs/recovery.md's bound
    peak = 0
    for i in range(writes):  # no reply comes: the budget fills up, then the policy drops
        emitter.write(bytes([i % 256]) * size)
        peak = max(peak, footprint(tmp_path))
    stats = emitter.stats()
    assert stats.dropped > 0 and stats.failed == 0 and got.errors == []
    assert stats.emitted == writes == stats.in_flight + stats.dropped
    # the chunk that crosses the budget may take a new leaf page and, when the B-tree splits, a page above it
    assert stats.spooled_bytes <= budget + chunk + 2 * 4096
    assert peak <= bound, f"{peak} bytes on disk, over {bound} (budget {budget})"  # was 222 KB to 4.1 MB
