"""Where on_done/on_error run: mailboxes on a small shared pool. Each emitter's callbacks one at a time, in order;
one slow callback delays only its own emitter; a few threads serve many emitters; ``ordered`` waits for earlier
chunks, up to its bound."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.callbacks import CallbackPool, Mailbox
from ocycle_dist.executors.base import ChunkExecutor
from tests.support.helpers import wait_for


def test_a_mailbox_runs_its_items_one_at_a_time_in_order() -> None:
    pool = CallbackPool()
    seen: list[int] = []
    inside = [0]

    def handle(i: int) -> None:
        inside[0] += 1
        assert inside[0] == 1, "two items of one mailbox ran at once"
        seen.append(i)
        inside[0] -= 1

    box = Mailbox(handle, pool)
    for i in range(500):
        box.put(i)
    wait_for(lambda: len(seen) == 500 and box.backlog == 0, what="every item handled")
    assert seen == list(range(500))


def test_a_slow_callback_delays_only_its_own_mailbox_and_many_mailboxes_share_few_threads() -> None:
    pool = CallbackPool(spawn_after=0.02)
    release = threading.Event()
    slow = Mailbox(lambda: release.wait(10), pool)
    got: dict[int, list[float]] = {}
    boxes = [Mailbox(lambda k=k: got.setdefault(k, []).append(time.monotonic()), pool) for k in range(100)]
    slow.put()  # stuck until released
    started = time.monotonic()
    for _ in range(20):
        for box in boxes:
            box.put()
    wait_for(lambda: sum(map(len, got.values())) == 2000, 5, "every quick callback, while the slow one blocks")
    assert max(max(times) for times in got.values()) - started < 2.0
    assert pool.threads <= 4, pool.threads  # one stuck, a second (and perhaps a third) for the hundred others
    release.set()
    wait_for(lambda: slow.backlog == 0, what="the slow one finished")


class Manual(ChunkExecutor):
    """An executor whose chunks resolve when the test says, in any order."""

    def __init__(self) -> None:
        self.futures: dict[int, Future[Any]] = {}

    wants_meta = True

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.futures[kwargs["meta"].seq] = future
        return future


def test_ordered_outcomes_reach_on_done_in_stream_order_whatever_order_they_come_in() -> None:
    executor, got = Manual(), []
    b = ocycle.BufferEmit(lambda v, t0: v, 1, clip=True, mode=executor, ordered=True, on_done=got.append)
    b.write(b"abcde")
    assert sorted(executor.futures) == [0, 1, 2, 3, 4]
    for seq in (3, 1, 4):
        executor.futures[seq].set_result(seq)
    time.sleep(0.1)  # nothing may run: chunk 0 has not come yet (a wait for an absence)
    assert got == []
    executor.futures[0].set_result(0)
    wait_for(lambda: got == [0, 1], what="0 and 1, then a wait for 2")
    executor.futures[2].set_result(2)
    wait_for(lambda: got == [0, 1, 2, 3, 4], what="the rest, in order")
    assert b.stats().out_of_order == 0
    b.close()


def test_an_ordered_outcome_waits_for_an_earlier_one_only_as_long_as_allowed_and_is_counted() -> None:
    executor, got = Manual(), []
    b = ocycle.BufferEmit(lambda v, t0: v, 1, clip=True, mode=executor, ordered=0.3, on_done=got.append)
    b.write(b"ab")
    executor.futures[1].set_result(1)
    started = time.monotonic()
    wait_for(lambda: got == [1], what="chunk 1 after its wait for chunk 0")
    assert time.monotonic() - started >= 0.25
    assert b.stats().out_of_order == 1
    executor.futures[0].set_result(0)
    wait_for(lambda: got == [1, 0], what="chunk 0 when it comes")
    b.close()


def test_a_dropped_chunk_never_holds_back_the_later_ones() -> None:
    executor, got = Manual(), []
    b = ocycle.BufferEmit(lambda v, t0: v, 1, clip=True, mode=executor, ordered=True, on_done=got.append,
                          max_inflight=2, policy="drop_oldest")  # fmt: skip
    b.write(b"abc")  # the third drops chunk 0
    executor.futures[2].set_result(2)
    executor.futures[1].set_result(1)
    wait_for(lambda: got == [1, 2], what="1 then 2, without waiting for the dropped 0")
    assert b.stats().dropped == 1 and b.stats().out_of_order == 0
    b.close()


@pytest.mark.parametrize("ordered", [-1, "yes", float("inf")])
def test_ordered_must_be_a_bool_or_seconds(ordered: Any) -> None:
    with pytest.raises(ocycle.ConfigError, match=r"^ordered="):
        ocycle.BufferEmit(lambda v, t0: v, 1, ordered=ordered)
