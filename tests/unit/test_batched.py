"""Batched functions (``ocycle_dist.batched``): one chunk at a time wherever they are called so, all the chunks
at hand in one call where a worker of ``make_app`` runs a batch message's or a drain's chunks (``run_items``).
Against real processes (a backlog, a drain, a stock worker): tests/integration/test_batching.py."""

from __future__ import annotations

import inspect
import time
import uuid
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from celery import current_task

import ocycle_dist as ocycle
from ocycle_dist.batched import MAX_CHUNKS, batch_of, call_batch
from ocycle_dist.chunk import Chunk
from ocycle_dist.errors import ConfigError
from ocycle_dist.remote import wire
from ocycle_dist.remote.batch import run_batch
from ocycle_dist.remote.protocol import claim_key, mac_key, reply_key, unseal
from ocycle_dist.remote.replies import ReplyWriter
from ocycle_dist.remote.runner import run_items
from ocycle_dist.remote.settings import Settings
from ocycle_dist.remote.worker import ChunkTask, make_app

TOKEN = "unitbatched01"


@ocycle.batched
def upper(chunks: list[bytes], t0s: list[float]) -> list[Any]:
    return [c.upper() if c != b"bad" else ValueError(f"chunk {c!r} at {t} is bad") for c, t in zip(chunks, t0s)]  # noqa: B905


@ocycle.batched(max_chunks=3)
def described(chunks: list[bytes], t0s: list[float], metas: list[Any]) -> list[Any]:
    return [[c, t, None if m is None else (m.stream, m.seq)] for c, t, m in zip(chunks, t0s, metas, strict=True)]


# ---- one chunk at a time ---------------------------------------------------------------------------------


def test_a_batched_function_is_a_function_of_one_chunk() -> None:
    assert upper(b"abc", 1.0) == b"ABC"
    with pytest.raises(ValueError, match=r"chunk b'bad' at 2\.0 is bad"):  # its exception object, raised
        upper(b"bad", 2.0)
    assert list(inspect.signature(upper).parameters) == ["chunk", "t0"]
    assert list(inspect.signature(described).parameters) == ["chunk", "t0", "meta"]
    assert described(b"x", 3.0) == [b"x", 3.0, None]  # no meta given: None
    assert described(b"x", 3.0, meta=Chunk("s", 4, 3.0, 1, 0)) == [b"x", 3.0, ("s", 4)]
    assert upper.__name__ == "upper" and upper.__module__ == __name__
    spec = batch_of(upper)
    assert spec is not None and spec.max_chunks == MAX_CHUNKS == 64 and not spec.wants_metas
    assert batch_of(described).max_chunks == 3 and batch_of(described).wants_metas  # type: ignore[union-attr]
    assert batch_of(lambda chunk, t0: chunk) is None


def test_a_batched_function_runs_one_chunk_at_a_time_as_a_local_callback() -> None:
    got: list[Any] = []
    with ocycle.BufferEmit(described, 2, clip=True, stream="s", on_done=got.append) as b:
        b.write(b"abcd", t0=5.0)
    assert got == [[b"ab", 5.0, ("s", 0)], [b"cd", 5.0, ("s", 1)]]  # meta given, as to any callback with meta


def test_what_a_batch_function_returns_is_checked() -> None:
    @ocycle.batched
    def short(chunks: list[Any], t0s: list[float]) -> list[Any]:
        return chunks[:-1]

    @ocycle.batched
    def not_a_list(chunks: list[Any], t0s: list[float]) -> Any:
        return "x"

    with pytest.raises(TypeError, match=r"returned 1 results for 2 chunks: expected a list of one result"):
        call_batch(batch_of(short), [b"a", b"b"], [0.0, 1.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returned a str for 1 chunks"):
        not_a_list(b"a", 0.0)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4", None])
def test_max_chunks_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"max_chunks=.* is invalid: expected a positive int"):
        ocycle.batched(max_chunks=bad)


def test_batched_needs_a_callable() -> None:
    with pytest.raises(ConfigError, match="fn=3 is invalid"):
        ocycle.batched(3)  # type: ignore[arg-type]


# ---- a worker runs them together -------------------------------------------------------------------------


@pytest.fixture
def admin() -> Any:
    return fakeredis.FakeRedis()


@pytest.fixture(scope="module")
def app() -> Any:
    app = make_app(Settings(broker_url="redis://127.0.0.1:9/0", max_chunk_bytes=100), name=f"unit-{uuid.uuid4().hex}")
    app.calls = []  # each call of a batch function: the chunks it was given, its request's ids, current_task

    @app.task(name="b.upper")
    @ocycle.batched
    def upper_task(chunks: list[bytes], t0s: list[float]) -> list[Any]:
        request = current_task.request
        app.calls.append(("upper", list(chunks), request.ids, current_task.name))
        return [c.upper() if c != b"bad" else ValueError(f"{c!r} is bad") for c in chunks]

    @app.task(name="b.meta")
    @ocycle.batched(max_chunks=2)
    def meta_task(chunks: list[bytes], t0s: list[float], metas: list[Any]) -> list[Any]:
        app.calls.append(("meta", list(chunks)))
        return [[m.stream, m.seq, t] for m, t in zip(metas, t0s, strict=True)]

    @app.task(name="b.raises")
    @ocycle.batched
    def raises(chunks: list[bytes], t0s: list[float]) -> list[Any]:
        app.calls.append(("raises", list(chunks)))
        raise RuntimeError(f"model crashed on {len(chunks)} chunks")

    @app.task(name="b.short")
    @ocycle.batched
    def short(chunks: list[bytes], t0s: list[float]) -> list[Any]:
        return chunks[:1]

    @app.task(name="b.plain")
    def plain(chunk: bytes, t0: float) -> bytes:
        app.calls.append(("plain", [chunk]))
        return chunk[::-1]

    class Own(ChunkTask):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return ["own", super().__call__(*args, **kwargs)]

    @app.task(name="b.own", base=Own)
    @ocycle.batched
    def own(chunks: list[bytes], t0s: list[float]) -> list[Any]:
        app.calls.append(("own", list(chunks)))
        return list(chunks)

    return app


def item(task: str, chunk: Any, seq: int, *, stream: str = "s", expires: float | None = None) -> list[Any]:
    return [f"id{seq}", task, chunk, 100.0 + seq, Chunk(stream, seq, 100.0 + seq, 4, 0, False)._asdict(), expires]


def outcomes(admin: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for key in admin.keys(reply_key(TOKEN)):
        for raw in admin.lrange(key, 0, -1):
            record = unseal(wire.loads(raw), mac_key("", TOKEN))
            assert record is not None
            out[record["id"]] = record
    return out


def run(app: Any, admin: Any, items: list[list[Any]]) -> dict[str, dict[str, Any]]:
    app.calls.clear()
    replies = ReplyWriter(admin, 60, "")
    ran = run_items(app, admin, items, replies, hostname="h", delivery_info={"routing_key": "celery"},
                    reply_to=reply_key(TOKEN))  # fmt: skip
    assert replies.send()
    got = outcomes(admin)
    assert ran == len([i for i in items if i[5] is None])
    return got


def test_the_chunks_of_a_batched_task_run_in_one_call_each_with_its_own_outcome(app: Any, admin: Any) -> None:
    items = [item("b.upper", c, i, stream=f"s{i % 2}") for i, c in enumerate([b"ab", b"bad", b"cd", b"ef"])]
    got = run(app, admin, items)
    assert app.calls == [("upper", [b"ab", b"bad", b"cd", b"ef"], ["id0", "id1", "id2", "id3"], "b.upper")]
    assert [got[f"id{i}"].get("result") for i in (0, 2, 3)] == [b"AB", b"CD", b"EF"]
    assert got["id1"]["ok"] is False and got["id1"]["error"] == ["ValueError", "b'bad' is bad"]  # fails alone


def test_calls_hold_max_chunks_at_most_and_get_each_chunks_meta(app: Any, admin: Any) -> None:
    got = run(app, admin, [item("b.meta", b"%d" % i, i, stream="m") for i in range(5)])
    assert app.calls == [("meta", [b"0", b"1"]), ("meta", [b"2", b"3"]), ("meta", [b"4"])]
    assert [got[f"id{i}"]["result"] for i in range(5)] == [["m", i, 100.0 + i] for i in range(5)]


def test_an_exception_raised_by_the_call_fails_its_chunks_and_no_other(app: Any, admin: Any) -> None:
    items = [item("b.raises", b"a", 0), item("b.plain", b"xy", 1), item("b.raises", b"b", 2), item("b.short", b"c", 3),
             item("b.short", b"d", 4)]  # fmt: skip
    got = run(app, admin, items)
    assert got["id0"]["error"] == got["id2"]["error"] == ["RuntimeError", "model crashed on 2 chunks"]
    assert got["id1"]["result"] == b"yx"
    assert got["id3"]["error"][0] == got["id4"]["error"][0] == "TypeError"
    assert "returned 1 results for 2 chunks" in got["id3"]["error"][1]


def test_each_chunk_is_checked_before_the_call_and_fails_alone(app: Any, admin: Any) -> None:
    admin.set(claim_key("id2"), wire.dumps(b"claimed"))
    items = [
        item("b.upper", b"a", 0),
        item("b.upper", b"b", 1, expires=time.time() - 1),  # expired: not run
        item("b.upper", wire.Claim(claim_key("id2")), 2),  # its claim, fetched
        item("b.upper", wire.Claim(claim_key("id3")), 3),  # its claim, gone
        item("b.upper", b"x" * 200, 4),  # over max_chunk_bytes
        item("b.upper", wire.Claim("some:key"), 5),  # not its own claim: refused
    ]
    got = run(app, admin, items)
    assert app.calls == [("upper", [b"a", b"claimed"], ["id0", "id2"], "b.upper")]
    assert got["id0"]["result"] == b"A" and got["id2"]["result"] == b"CLAIMED"
    assert got["id1"]["expired"] is True
    assert got["id3"]["error"][0] == "ClaimGoneError"
    assert got["id4"]["error"][0] == "EncodeError" and "max_chunk_bytes=100" in got["id4"]["error"][1]
    assert got["id5"]["error"][0] == "EncodeError"


def test_a_task_class_with_its_own_call_runs_one_chunk_at_a_time(app: Any, admin: Any) -> None:
    got = run(app, admin, [item("b.own", b"a", 0), item("b.own", b"b", 1)])
    assert app.calls == [("own", [b"a"]), ("own", [b"b"])]
    assert got["id0"]["result"] == ["own", b"a"] and got["id1"]["result"] == ["own", b"b"]


def test_a_batch_message_of_a_batched_task_runs_in_calls_of_max_chunks(app: Any, admin: Any) -> None:
    items = [[*item("b.upper", b"c%02d" % i, i), reply_key(TOKEN)] for i in range(40)]
    request = SimpleNamespace(reply_to=reply_key(TOKEN), hostname="h", delivery_info={"routing_key": "celery"})
    app.calls.clear()
    run_batch(SimpleNamespace(app=app, request=request), items, admin, Settings(reply_secret=""))
    assert [len(c[1]) for c in app.calls] == [40]  # not in slices of 16: one model run
    got = outcomes(admin)
    assert [got[f"id{i}"]["result"] for i in range(40)] == [b"C%02d" % i for i in range(40)]
    meta_items = [[*item("b.meta", b"m", i), reply_key(TOKEN)] for i in range(5)]
    app.calls.clear()
    run_batch(SimpleNamespace(app=app, request=request), meta_items, admin, Settings(reply_secret=""))
    assert [len(c[1]) for c in app.calls] == [2, 2, 1]


def test_a_long_run_of_items_is_fetched_and_run_a_window_at_a_time(app: Any, admin: Any) -> None:
    """However many items (a drain's take of 64 batch messages), claims are fetched FETCH items at a time and a
    batched task's chunks run as soon as max_chunks are ready: the chunks held at once stay bounded."""
    mgets: list[int] = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            if name == "mget":
                return lambda keys: mgets.append(len(keys)) or admin.mget(keys)
            return getattr(admin, name)

    items = []
    for i in range(150):
        admin.set(claim_key(f"id{i}"), wire.dumps(b"c%03d" % i))
        items.append(item("b.upper" if i % 10 else "b.plain", wire.Claim(claim_key(f"id{i}")), i))
    app.calls.clear()
    replies = ReplyWriter(admin, 60, "")
    assert run_items(app, Counting(), items, replies, hostname="h", delivery_info={}, reply_to=reply_key(TOKEN)) == 150
    assert mgets == [64, 64, 22]
    assert [len(c[1]) for c in app.calls if c[0] == "upper"] == [64, 64, 7]  # as soon as 64 are ready; the rest
    assert [len(c[1]) for c in app.calls if c[0] == "plain"] == [1] * 15
