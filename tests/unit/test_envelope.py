"""Reading what a drain takes (envelope.envelope_of): kombu's envelope without parsing its body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from ocycle_dist.remote.envelope import envelope_of
from ocycle_dist.remote.publisher import publish
from ocycle_dist.remote.settings import Settings
from tests.support.dist_helpers import TOKEN, entry
from tests.support.helpers import owned


@pytest.fixture
def admin() -> Iterator[Any]:
    yield fakeredis.FakeRedis()


def test_a_taken_envelope_is_read_as_json_would_read_it_its_body_cut_out_unparsed(admin: Any) -> None:
    entries = [entry(b"x" * 3000, seq=i) for i in range(3)]
    publish(admin, owned(entries, Settings(), TOKEN))  # one batch message
    publish(admin, owned([entry(b"lone", seq=9)], Settings(), TOKEN))  # one plain one
    for raw in admin.lrange("celery", 0, -1):
        envelope, body = envelope_of(raw)
        full = json.loads(raw)
        assert isinstance(body, memoryview) and bytes(body) == full["body"].encode()
        assert {**envelope, "body": full["body"]} == full


@pytest.mark.parametrize(
    "raw",
    [
        b'{"body": "YWJj\\/", "content-type": "x"}',  # an escape in the body
        b'{"body": "YWJj", "content-type": "x", "body": "ZGVm"}',  # a second body: JSON's is the last
        b'{"content-type": "x", "body": "YWJj"}',  # not first
        b'{"body": "YWJj"',  # truncated
    ],
)
def test_any_other_envelope_is_parsed_whole(raw: bytes) -> None:
    try:
        full = json.loads(raw)
    except ValueError:
        with pytest.raises(ValueError):
            envelope_of(raw)
        return
    envelope, body = envelope_of(raw)
    assert envelope == full and body == full["body"]
