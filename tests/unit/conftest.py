"""Fixtures of the unit tests: a fakeredis broker served over TCP, an admin client, celery-mode emitters."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.app.embedded import embedded_broker
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.remote.settings import Settings
from tests.support.dist_helpers import Collector


@pytest.fixture(autouse=True)
def wire_limits() -> Iterator[None]:
    """Each test starts from the process's decoding limits as they were: a worker app a test makes
    (``make_app``) sets them from its ``max_chunk_bytes`` for the whole process."""
    from ocycle_dist.remote import wire

    limits = wire.MAX_BYTES, wire.MAX_CONTAINERS
    yield
    wire.MAX_BYTES, wire.MAX_CONTAINERS = limits


@pytest.fixture
def broker() -> Iterator[str]:
    with embedded_broker() as url:
        yield url


@pytest.fixture
def admin(broker: str) -> Iterator[Any]:
    client = connect(broker)
    yield client
    client.close()


@pytest.fixture
def make(broker: str) -> Iterator[Callable[..., tuple[ocycle.BufferEmit, Collector]]]:
    """Build celery-mode emitters on the fakeredis broker; each is shut down (pending chunks dropped) after."""
    made: list[ocycle.BufferEmit] = []
    executors: list[Any] = []

    def build(
        *,
        stream: str | None = None,
        settings: dict[str, Any] | None = None,
        size: int = 4,
        clip: bool = True,
        **options: Any,
    ) -> tuple[ocycle.BufferEmit, Collector]:
        collector = Collector()
        emitter = ocycle.BufferEmit(
            "tests.echo",
            size,
            clip=clip,
            mode="celery",
            settings=Settings(broker_url=broker, **{"batch_max_chunks": 0, **(settings or {})}),  # a message each
            stream=stream or f"unit-{uuid.uuid4().hex[:8]}",
            on_done=collector.on_done,
            on_error=collector.on_error,
            **options,
        )
        made.append(emitter)
        executors.append(emitter.executor)
        return emitter, collector

    yield build
    for emitter in made:
        emitter.close(wait=False)
    for executor in executors:
        executor.shutdown(wait=False, cancel_futures=True)
        assert executor.finished.wait(10), "the executor did not finish after shutdown(cancel_futures)"
