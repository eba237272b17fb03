"""The worker's repaired transport (remote/transport.py): the app uses it for every broker URL scheme, and a
channel whose connection was closed raises a connection error that Celery handles."""

from __future__ import annotations

import pytest

from ocycle_dist.errors import ConfigError
from ocycle_dist.remote.settings import Settings


def test_the_worker_app_uses_the_repaired_transports_and_names_the_sentinel_master() -> None:
    from kombu.transport import get_transport_cls

    from ocycle_dist.remote import transport, worker

    url = "sentinel://:pw@127.0.0.1:26379/0;sentinel://127.0.0.1:26380"
    app = worker.make_app(Settings(broker_url=url, sentinel_master="audio"))
    try:
        assert app.conf.broker_transport_options["master_name"] == "audio"
        assert get_transport_cls("redis") is transport.RedisTransport
        assert get_transport_cls("rediss") is transport.RedisTransport
        assert get_transport_cls("sentinel") is transport.SentinelTransport
        assert issubclass(transport.SentinelTransport.Channel, transport._ClosingChannel)
    finally:
        app.close()
    with pytest.raises(ConfigError) as excinfo:
        worker.make_app(Settings(broker_url="sentinel://a:1;redis://b"))
    assert excinfo.value.param == "broker"


def test_a_channel_whose_connection_was_closed_raises_a_connection_error() -> None:
    """What Celery's reconnect does to the task channel (see ocycle_dist.remote.transport._ClosingChannel): the
    transport is detached, then an ack or a restore builds a pool from it."""
    from types import SimpleNamespace

    import redis

    from ocycle_dist.remote.transport import RedisChannel

    channel = RedisChannel.__new__(RedisChannel)  # no connection needed to show it
    channel.connection = SimpleNamespace(client=None)
    with pytest.raises(redis.ConnectionError):
        channel._connparams()
