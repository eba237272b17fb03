"""The one backlog bound, alone: by count or by cost (the celery mode's bytes), with one policy vocabulary."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any

import pytest

import ocycle_dist.inflight as inflight_module
from ocycle_dist.inflight import InFlight


class Kept:
    """What an executor keeps: the cost of each chunk, freed when its Future is cancelled or settled."""

    def __init__(self) -> None:
        self.cost: dict[int, int] = {}

    def meter(self) -> int:
        return sum(self.cost.values())

    def future(self, inflight: InFlight, seq: int, cost: int) -> Future[Any]:
        self.cost[seq] = cost
        future: Future[Any] = Future()
        future.add_done_callback(lambda f: f.cancelled() and self.cost.pop(seq, None))
        inflight.submitted(seq, future)
        return future


@pytest.mark.parametrize(("policy", "kept"), [("drop_oldest", [2, 3]), ("drop_newest", [0, 1])])
def test_a_cost_bound_drops_by_the_policy_and_counts(policy: str, kept: list[int]) -> None:
    store = Kept()
    inflight = InFlight(None, policy, max_cost=100, meter=store.meter)
    for seq in range(4):
        inflight.emitted(seq)
        if inflight.admit(seq, 50):
            store.future(inflight, seq, 50)
    assert sorted(store.cost) == kept and store.meter() == 100
    assert inflight.counts["dropped"] == 2 and len(inflight) == 2


def test_a_chunk_costlier_than_the_whole_bound_is_dropped_alone() -> None:
    store = Kept()
    inflight = InFlight(None, "block", max_cost=100, meter=store.meter)
    inflight.emitted(0)
    assert inflight.admit(0, 50)
    store.future(inflight, 0, 50)
    inflight.emitted(1)
    assert not inflight.admit(1, 101)  # even with block: it could never fit
    assert inflight.counts["dropped"] == 1 and list(store.cost) == [0]


def test_block_waits_for_room_and_a_settled_chunk_makes_it() -> None:
    store = Kept()
    inflight = InFlight(None, "block", max_cost=100, meter=store.meter)
    inflight.emitted(0)
    assert inflight.admit(0, 80)
    store.future(inflight, 0, 80)
    admitted = threading.Event()

    def writer() -> None:
        inflight.emitted(1)
        if inflight.admit(1, 80):
            admitted.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert not admitted.wait(0.2)  # full: the writer waits
    del store.cost[0]  # the chunk's result is in: its bytes freed, then it settles
    inflight.settle(0, "done")
    assert admitted.wait(5)
    thread.join(5)
    assert inflight.counts == {"emitted": 2, "done": 1, "failed": 0, "dropped": 0, "expired": 0}


def test_a_count_and_a_cost_bound_apply_together() -> None:
    store = Kept()
    inflight = InFlight(2, "drop_newest", max_cost=1000, meter=store.meter)
    for seq in range(3):
        inflight.emitted(seq)
        if inflight.admit(seq, 10):
            store.future(inflight, seq, 10)
    assert list(store.cost) == [0, 1] and inflight.counts["dropped"] == 1


def test_a_bound_that_fills_at_every_chunk_is_logged_once_a_minute_with_the_episodes_between_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    inflight = InFlight(1, "drop_newest", name="spl")  # one chunk out at a time: full at every chunk
    clock = [1000.0]
    monkeypatch.setattr(inflight_module.time, "monotonic", lambda: clock[0])
    with caplog.at_level(logging.INFO, logger="ocycle_dist"):
        for seq in range(0, 20, 2):
            inflight.emitted(seq)
            assert inflight.admit(seq)
            inflight.emitted(seq + 1)
            assert not inflight.admit(seq + 1)  # full: dropped, an episode
            inflight.settle(seq, "done")
        full = [r.getMessage() for r in caplog.records if "is full" in r.getMessage()]
        assert len(full) == 1 and "max_inflight=1" in full[0] and "more time" not in full[0]
        assert sum(r.getMessage().endswith("has room again") for r in caplog.records) == 1  # the one said
        clock[0] += inflight_module.SAY_FULL_EVERY
        inflight.emitted(20)
        assert inflight.admit(20)
        inflight.emitted(21)
        assert not inflight.admit(21)
    full = [r.getMessage() for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 2 and "full 9 more time(s) since the last such line" in full[1]
    assert inflight.counts["dropped"] == 11  # every drop counted, said or not
