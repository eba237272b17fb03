"""The queues' backlog (messages waiting, the oldest's age) and the worker side's per-chunk task events, in-process."""

from __future__ import annotations

import fakeredis
from prometheus_client import CollectorRegistry, generate_latest

from ocycle_dist.remote.backlog import BacklogCollector, declared_queues, read_backlog, sent_at
from ocycle_dist.remote.events import args_repr
from ocycle_dist.remote.protocol import SENT_HEADER, _envelope


def message(queue: str, sent: float | None = None) -> bytes:
    raw = _envelope("id-1", "workers.tasks.spl", b"\x93\x92\xc0\xcb", {}, None, "tag-1", queue)
    if sent is not None:
        raw = raw.replace(b'"' + SENT_HEADER.encode() + b'": ', b'"' + SENT_HEADER.encode() + b'": %f, "was": ' % sent)
    return raw


def test_every_message_says_when_it_was_sent_and_the_backlog_reads_it() -> None:
    raw = message("spl")
    assert sent_at(raw) is not None
    assert sent_at(b'{"body": "", "headers": {}}') is None and sent_at(b"junk") is None and sent_at(None) is None
    client = fakeredis.FakeRedis()
    client.lpush("model", message("model", sent=1000.0))  # the oldest: pushed first, at the tail
    client.lpush("model", message("model", sent=1010.0))
    client.lpush("odd", b'{"body": "", "headers": {"task": "x"}}')
    got = {b.queue: b for b in read_backlog(client, ["model", "spl", "odd"], now=1012.5)}
    assert (got["model"].messages, got["model"].oldest_age) == (2, 12.5)
    assert (got["spl"].messages, got["spl"].oldest_age) == (0, 0.0)
    assert (got["odd"].messages, got["odd"].oldest_age) == (1, None)  # not a producer's message: age unknown


def test_queues_declared_by_workers_stay_known_after_they_left() -> None:
    client = fakeredis.FakeRedis()
    client.sadd("_kombu.binding.model", "model\x06\x16\x06\x16model")
    client.sadd("_kombu.binding.celery", "celery\x06\x16\x06\x16celery")
    assert declared_queues(client) == {"model", "celery"}


def test_the_backlog_collector_serves_both_gauges_per_queue() -> None:
    client = fakeredis.FakeRedis()
    client.lpush("spl", message("spl"))
    registry = CollectorRegistry()
    registry.register(BacklogCollector(lambda: client, ["spl", "archive"]))
    text = generate_latest(registry).decode()
    assert 'ocycle_queue_messages{queue="spl"} 1.0' in text
    assert 'ocycle_queue_messages{queue="archive"} 0.0' in text
    assert 'ocycle_queue_oldest_age_seconds{queue="archive"} 0.0' in text
    assert 'ocycle_queue_oldest_age_seconds{queue="spl"}' in text


def test_a_chunks_task_event_summarizes_its_arguments_as_a_plain_message_does() -> None:
    item = ["id", "workers.tasks.spl", b"x" * 16, 12.5, {"stream": "mic-spl", "seq": 7, "length": 8000}, None]
    assert args_repr(item) == "(<chunk mic-spl#7 len=8000>, 12.5)"
