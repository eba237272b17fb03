"""What a worker takes from a queue (ocycle_dist.remote.intake): each kind of junk named, kept, said once."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from ocycle_dist.chunk import Chunk
from ocycle_dist.remote import intake, wire
from ocycle_dist.remote.intake import JunkError, check, refuse
from ocycle_dist.remote.pending import Entry
from ocycle_dist.remote.protocol import DEAD_BYTES, DEAD_KEY, DEAD_MAX, DEAD_TTL, task_message
from ocycle_dist.remote.settings import Settings


def good() -> dict[str, Any]:
    message, _ = task_message(Entry("id-1", "t.echo", Chunk("s", 0, 1.0, 1, 0), wire.dumps(b"x")), Settings(), "tok")
    envelope: dict[str, Any] = json.loads(message)
    return envelope


def changed(path: tuple[str, ...], value: Any) -> bytes:
    envelope = good()
    where = envelope
    for key in path[:-1]:
        where = where[key]
    if value is KeyError:
        del where[path[-1]]
    else:
        where[path[-1]] = value
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"junk junk ju", "not-json"),
        (b"\xff\xfe", "not-json"),
        (b"[1,2,3]", "not-an-object"),
        (b"42", "not-an-object"),
        (changed(("headers",), KeyError), "no-headers"),
        (changed(("headers", "task"), KeyError), "no-headers"),
        (changed(("headers", "id"), 7), "no-headers"),
        (changed(("properties",), KeyError), "bad-properties"),
        (changed(("properties", "delivery_tag"), None), "bad-properties"),
        (changed(("properties", "delivery_info"), "celery"), "bad-properties"),
        (changed(("body",), "!!!notbase64"), "bad-base64"),
        (changed(("body",), 12), "bad-base64"),
        (changed(("properties", "body_encoding"), "rot13"), "bad-base64"),
        (changed(("content-type",), "application/x-python-serialize"), "content-type"),
    ],
)
def test_each_kind_of_junk_is_named(raw: bytes, kind: str) -> None:
    with pytest.raises(JunkError) as info:
        check(raw)
    assert info.value.kind == kind and kind in intake.KINDS


def test_a_task_message_passes_and_kombus_own_replies_are_checked_only_for_what_kombu_needs() -> None:
    assert check(json.dumps(good()))["headers"]["task"] == "t.echo"
    reply = changed(("content-type",), "application/json")  # a remote-control reply from a stock worker
    assert check(reply, task_queue=False)["content-type"] == "application/json"
    with pytest.raises(JunkError):
        check(b"[1]", task_queue=False)


def test_a_refused_message_is_kept_cut_short_with_a_ttl_and_said_once_per_kind(
    admin: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "_logged", set())
    big = b"x" * (DEAD_BYTES * 3)
    with caplog.at_level(logging.DEBUG, logger="ocycle_dist.worker"):
        for raw in (big, b"junk", b"[1]"):
            try:
                check(raw)
            except JunkError as junk:
                refuse(admin, raw, junk, "celery")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage().split("(")[1].split(")")[0] for r in errors] == ["not-json", "not-an-object"]
    kept = intake.dead_letters(admin)
    assert [r["kind"] for r in kept] == ["not-an-object", "not-json", "not-json"]
    assert kept[2]["size"] == DEAD_BYTES * 3 and len(kept[2]["raw"]) == DEAD_BYTES and kept[2]["queue"] == "celery"
    assert 0 < admin.ttl(DEAD_KEY) <= DEAD_TTL


def test_the_dead_letter_list_keeps_the_latest(admin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert DEAD_MAX == 1000
    monkeypatch.setattr(intake, "DEAD_MAX", 10)  # the same bound, fewer round trips to fakeredis
    for i in range(15):
        intake.keep(admin, b"%d" % i, JunkError("not-json", "x"), "q")
    kept = intake.dead_letters(admin)
    assert len(kept) == 10 and kept[0]["raw"] == "14" and kept[-1]["raw"] == "5"


def test_a_redis_away_loses_the_copy_not_the_worker() -> None:
    class Away:
        def pipeline(self, **_: Any) -> Any:
            raise ConnectionError("away")

    intake.keep(Away(), b"junk", JunkError("not-json", "x"), "q")  # no exception


def test_purge_deletes_junk_like_any_message_that_is_no_chunk(admin: Any, broker: str) -> None:
    from ocycle_dist.remote.purge import purge_queue
    from ocycle_dist.remote.worker import make_app

    message = json.dumps(good()).encode()
    admin.lpush("q", b"junk junk ju", message, b"[1,2,3]")
    settings = Settings(broker_url=broker)
    done = purge_queue(make_app(settings), admin, "q", settings)
    assert (done.messages, done.chunks, done.other) == (3, 1, 2)
    assert admin.llen("ocycle:reply:tok") == 1 and admin.llen("q") == 0
