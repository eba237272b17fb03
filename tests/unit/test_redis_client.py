"""Unit tests of the distributed path's own logic, on fakeredis: no redis-server, no celery worker.

``embedded_broker()`` serves fakeredis over TCP on a loopback port, so the executor's own clients (the
publisher's, the listener's) talk to it as to a Redis. A worker's reply is simulated by RPUSHing
``wire.dumps({"id": task_id, "ok": True, "result": ...})`` to ``ocycle:reply:<stream>``, the task id
taken from the message the producer LPUSHed.
"""

from __future__ import annotations

from typing import Any

import pytest

import ocycle_dist as ocycle
from ocycle_dist.errors import ConfigError
from ocycle_dist.remote.redis_client import connect
from ocycle_dist.remote.settings import Settings


@pytest.mark.parametrize(
    ("unix", "kombu", "path", "db"),
    [
        ("unix:///run/redis.sock", "redis+socket:///run/redis.sock", "/run/redis.sock", 0),
        ("unix://:pw@/run/redis.sock?db=3", "redis+socket://:pw@/run/redis.sock?virtual_host=3", "/run/redis.sock", 3),
        (
            "unix://u:p%40ss@/tmp/r.sock?db=1&health_check_interval=5",
            "redis+socket://u:p%40ss@/tmp/r.sock?virtual_host=1&health_check_interval=5",
            "/tmp/r.sock",
            1,
        ),
    ],
)
def test_a_unix_socket_url_is_spelled_for_kombu_and_back(unix: str, kombu: str, path: str, db: int) -> None:
    from ocycle_dist.remote.redis_client import kombu_url, redis_py_url
    from ocycle_dist.remote.worker import make_app

    assert kombu_url(unix) == kombu and redis_py_url(kombu) == unix
    assert kombu_url("redis://h:1/0") == "redis://h:1/0" == redis_py_url("redis://h:1/0")
    assert make_app(Settings(broker_url=unix)).conf.broker_url == kombu  # the workers' transport knows it
    for url in (unix, kombu):  # the producer takes either spelling
        client = connect(url)
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["path"], int(kwargs.get("db", 0))) == (path, db)
        client.close()


@pytest.mark.parametrize(
    "options",
    [
        {"broker": "redis//x"},
        {"broker": "localhost:6379"},
        {"settings": Settings(broker_url="http://localhost:6379/0")},
        {"settings": Settings(broker_url="redis://localhost:notaport/0")},
        {"broker": "sentinel://"},
        {"broker": "sentinel://a:26379;redis://b:6379/0"},
        {"broker": "sentinel://a:26379/zero;sentinel://b"},
        {"broker": "sentinel://a:notaport;sentinel://b"},
        {"broker": "sentinel://a:26379/0?master_name=x"},
    ],
    ids=[
        *("no-scheme-separator", "no-scheme", "http", "bad-port"),
        *("sentinel-no-host", "sentinel-and-redis", "sentinel-bad-db", "sentinel-bad-port", "sentinel-query"),
    ],
)
def test_a_malformed_broker_url_is_a_config_error_naming_broker(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        ocycle.BufferEmit("tests.echo", 4, mode="celery", **options)
    assert excinfo.value.param == "broker"
    assert str(excinfo.value).startswith("broker=")


def test_a_sentinel_url_gives_a_client_of_the_named_master(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "sentinel://:p%40ss@10.0.0.1:26380/2;sentinel://:p%40ss@10.0.0.2;sentinel://10.0.0.3:26381"
    client = connect(url, socket_timeout=3.0, master_name="audio")
    try:
        pool = client.connection_pool
        assert pool.service_name == "audio" and pool.is_master
        assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (2, "p@ss")
        assert pool.connection_kwargs["socket_timeout"] == 3.0
        hosts = [s.connection_pool.connection_kwargs for s in client.sentinel.sentinels]
        expected = [("10.0.0.1", 26380), ("10.0.0.2", 26379), ("10.0.0.3", 26381)]  # 26379 by default
        assert [(h["host"], h["port"]) for h in hosts] == expected
        assert all(h.get("password") is None for h in hosts)  # the password is the master's, not the sentinels'
    finally:
        client.close()
    monkeypatch.setenv("OCYCLE_SENTINEL_MASTER", "from-env")
    client = connect(url)
    assert client.connection_pool.service_name == "from-env"
    client.close()
    with pytest.raises(ConfigError) as excinfo:
        connect(url, master_name="")
    assert excinfo.value.param == "sentinel_master"


def test_sentinel_urls_are_redacted_part_by_part() -> None:
    from ocycle_dist.remote.redis_client import redact

    assert redact("sentinel://:pw@a:1/0;sentinel://:pw@b:2;sentinel://c:3") == (
        "sentinel://:***@a:1/0;sentinel://:***@b:2;sentinel://c:3"
    )
    with pytest.raises(ConfigError) as excinfo:
        connect("sentinel://:secret@a:1/x;sentinel://:secret@b")
    assert "secret" not in str(excinfo.value)


# ---- maxmemory-policy: a Redis that may evict ----------------------------------------------------------------------


def test_a_policy_that_may_evict_any_key_is_a_config_error_naming_it_and_the_fix_unless_accepted() -> None:
    from ocycle_dist.remote.redis_client import check_policy

    with pytest.raises(ConfigError) as info:
        check_policy("allkeys-lru", "20.00M", "redis://:pw@h:6379/0", False)
    text = str(info.value)
    assert text.startswith("maxmemory-policy='allkeys-lru' is invalid: expected noeviction: Redis at redis://:***@h")
    assert "CONFIG SET maxmemory-policy noeviction" in text and "OCYCLE_ALLOW_EVICTION=1" in text and "pw" not in text
    said = check_policy("allkeys-random", "20.00M", "redis://h/0", True)
    assert said is not None and "may evict any key" in said and "sent again within seconds, counted" in said
    said = check_policy("volatile-ttl", "0B", "redis://h/0", False)
    assert said is not None and "claimed chunks (ocycle:chunk:*), reply lists (ocycle:reply:*)" in said
    assert "never the queues" in said and "its maxmemory, once set" in said
    assert check_policy("noeviction", "20.00M", "redis://h/0", False) is None
    assert check_policy(None, None, "redis://h/0", False) is None  # not known (INFO refused)


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("false", False)])
def test_boolean_settings_read_from_the_environment(raw: str, value: bool) -> None:
    assert Settings.from_env({"OCYCLE_ALLOW_EVICTION": raw}).allow_eviction is value


def test_a_boolean_setting_that_is_no_boolean_is_named() -> None:
    with pytest.raises(ConfigError, match=r"OCYCLE_ALLOW_EVICTION='maybe' is invalid: expected 1 or 0"):
        Settings.from_env({"OCYCLE_ALLOW_EVICTION": "maybe"})


def test_the_reply_secret_is_never_in_the_settings_repr() -> None:
    assert "hunter2" not in repr(Settings(reply_secret="hunter2"))  # Celery's `inspect conf` prints it


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@10.0.0.2:6379/0", "redis://:***@10.0.0.2:6379/0"),
        ("rediss://user:secret@host/1", "rediss://user:***@host/1"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("sentinel://:pw@a:26379/0;sentinel://:pw@b:26379", "sentinel://:***@a:26379/0;sentinel://:***@b:26379"),
    ],
)
def test_messages_never_show_the_brokers_password(url: str, shown: str) -> None:
    from ocycle_dist.remote.redis_client import redact

    assert redact(url) == shown
