"""The recovery alone (no Redis): chunks sent again are said in one line per reason and second, not one per
chunk; what an evicting Redis took is looked for and sent again; a claimed chunk gone is a loss."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest

from ocycle_dist.chunk import Chunk
from ocycle_dist.errors import DeliveryError
from ocycle_dist.remote import recovery as recovery_module
from ocycle_dist.remote.liveness import ServerWatch
from ocycle_dist.remote.pending import Entry, Pending
from ocycle_dist.remote.recovery import Recovery
from ocycle_dist.remote.settings import Settings


class Owner:
    def __init__(self) -> None:
        self.settings = Settings(resend_after=120.0, max_attempts=2)
        self.counts = dict.fromkeys(("resent", "recovered", "lost", "evicted", "undelivered"), 0)


def sent(table: Pending, owner: Owner, n: int, tag: str = "m1") -> list[Entry]:
    entries = []
    for i in range(n):
        e = Entry(str(uuid.uuid4()), "t", Chunk("s", i, float(i), 4, 4 * i), b"\xc4\x04abcd")
        e.owner, e.tag = owner, tag  # type: ignore[assignment]
        table.add(e)
        entries.append(e)
    table.take(n, 1 << 30)
    table.sent(entries, time.monotonic())
    return entries


class FakeRedis:
    """What the recovery reads: evicted_keys, and (for locate) nothing in the queues or the deliveries."""

    def __init__(self) -> None:
        self.evicted = 0

    def info(self, section: str) -> dict[str, Any]:
        return {"evicted_keys": self.evicted}

    def zmscore(self, key: str, members: list[str]) -> list[Any]:
        return [None] * len(members)

    def register_script(self, script: str) -> Any:
        return lambda keys, args: [[], 0]


class Listener:
    """The reply listener, as the recovery sees it: it last found the reply lists empty long ago."""

    drained_at = 0.0

    def wake(self) -> None:
        pass


def make(table: Pending, client: Any = None, policy: str | None = None) -> tuple[Recovery, list[Any]]:
    failed: list[Any] = []
    server = ServerWatch(lambda run_id: None)
    server.policy = policy
    rec = Recovery(table, client or FakeRedis(), "redis://h/0", 0.0, lambda: 120.0,
                   lambda e, exc: failed.append((e, exc)) or table.pop(e.id), Listener(), server)  # fmt: skip
    return rec, failed


def test_chunks_sent_again_one_by_one_are_said_in_one_line_per_reason_and_second(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, owner = Pending(), Owner()
    entries = sent(table, owner, 1749)
    rec, _ = make(table)
    with caplog.at_level(logging.WARNING, logger="ocycle_dist.celery"):
        for e in entries:  # as replies come, one at a time: "its worker lost Redis"
            rec.requeue([e], "its worker lost Redis: ConnectionError")
        lines = [r.getMessage() for r in caplog.records]
        assert lines == ["1 chunk(s) sent again (its worker lost Redis: ConnectionError): s#0"]
        assert rec.next_check() <= time.monotonic() + recovery_module.SAY_EVERY
        monkeypatch.setattr(recovery_module, "SAY_EVERY", 0.0)
        rec.check()
        lines = [r.getMessage() for r in caplog.records]
    assert lines[1] == "1748 chunk(s) sent again (its worker lost Redis: ConnectionError) in the last 0 s: s#1-1748"
    assert len(lines) == 2 and owner.counts["resent"] == owner.counts["recovered"] == 1749


def test_keys_evicted_by_redis_send_again_what_is_found_nowhere_counted(caplog: pytest.LogCaptureFixture) -> None:
    table, owner = Pending(), Owner()
    entries = sent(table, owner, 5)
    client = FakeRedis()
    rec, _ = make(table, client, "allkeys-lru")
    rec.check()  # evicted_keys read once: the baseline
    assert owner.counts["evicted"] == 0
    client.evicted = 7
    rec._evicted_at = 0.0
    with caplog.at_level(logging.INFO, logger="ocycle_dist.celery"):
        rec.check()  # grew: looked for, found nowhere, suspected
        table.pop(entries[0].id)  # answered meanwhile: its reply was waiting
        rec._suspects_at -= recovery_module.EVICTION_SETTLE
        rec.check()
    assert owner.counts["evicted"] == 4 and owner.counts["resent"] == 4 and rec.counts["evictions"] == 1
    assert "Redis at redis://h/0 evicted 7 key(s) (maxmemory-policy allkeys-lru): of the 5 chunks out, 5 are gone" in (
        caplog.text
    )
    assert "4 chunk(s) sent again (Redis evicted them: maxmemory-policy allkeys-lru): s#1-4" in caplog.text


def test_a_redis_that_never_evicts_is_never_asked() -> None:
    table, owner = Pending(), Owner()
    sent(table, owner, 3)

    class Asked(FakeRedis):
        def info(self, section: str) -> dict[str, Any]:
            raise AssertionError("INFO read with a noeviction policy")

    rec, _ = make(table, Asked(), "noeviction")
    rec.check()
    assert rec.next_check() >= time.monotonic() + 60  # only the late check, after resend_after


def test_a_claimed_chunk_gone_is_a_loss_counted_against_max_attempts() -> None:
    table, owner = Pending(), Owner()
    [entry] = sent(table, owner, 1)
    rec, failed = make(table)
    rec.lose([entry], "its claimed chunk was gone from Redis when its worker fetched it")
    assert owner.counts["lost"] == 1 and table.get(entry.id) is entry and not failed
    table.take(1, 1 << 30)
    table.sent([entry], time.monotonic())
    rec.lose([entry], "its claimed chunk was gone from Redis when its worker fetched it")  # max_attempts=2
    [(e, exc)] = failed
    assert e is entry and isinstance(exc, DeliveryError) and owner.counts["undelivered"] == 1
    assert "was sent 2 times and lost each time (its claimed chunk was gone from Redis" in str(exc)


class DeadWorkerLeases:
    """The lease watch when a worker's lease is gone: it named none of these chunks."""

    def __init__(self) -> None:
        self.lease = 3.0
        self.named: set[str] = set()
        self.departed = {"celery@dead"}

    def check(self, tag_of: Any, task_of: Any) -> list[Any]:
        return []

    def take_released(self) -> set[str]:
        return set()


def test_a_message_a_dead_worker_took_but_never_recorded_goes_again_once_looked_for_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Killed between kombu's BRPOP and its unacked entry, a worker takes a message with it that is named nowhere:
    when its lease goes, the chunks out that no lease names are looked for; those still nowhere a moment later go
    again; one a live worker recorded meanwhile does not."""
    table, owner = Pending(), Owner()
    taken = sent(table, owner, 3, tag="m1")  # popped by the dead worker
    recorded = sent(table, owner, 2, tag="m2")  # popped by a live worker, in its unacked entry a moment later

    class Redis(FakeRedis):
        looks = 0

        def zmscore(self, key: str, members: list[str]) -> list[Any]:
            self.looks += 1
            return [1.0 if m == "m2" and self.looks > 1 else None for m in members]

    rec, failed = make(table, Redis())
    rec.leases = DeadWorkerLeases()  # type: ignore[assignment]
    rec._check_leases()
    assert table.take(10, 1 << 30) == []  # suspects: not yet
    rec._suspects_at -= recovery_module.EVICTION_SETTLE
    with caplog.at_level(logging.WARNING, logger="ocycle_dist.celery"):
        rec.check()
    assert [e.id for e in table.take(10, 1 << 30)] == [e.id for e in taken]
    assert all(table.get(e.id) is e for e in recorded) and not failed
    assert owner.counts["resent"] == 3 and owner.counts["lost"] == 0
    assert "3 chunk(s) sent again (taken from the queue by a worker that died before recording it): s#0-2" in (
        caplog.text
    )
