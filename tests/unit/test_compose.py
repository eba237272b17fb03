"""Static checks of docker-compose.yml, Dockerfile and .dockerignore (no Docker needed)."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
NETWORKS: dict[str, dict | None] = COMPOSE.get("networks") or {}
CLIENTS = ("worker", "flower", "producer")
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _command(name: str) -> str:
    cmd = SERVICES[name]["command"]
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


def _networks(name: str) -> list[str]:
    return list(SERVICES[name].get("networks") or [])


def _env(name: str) -> dict[str, str]:
    env = SERVICES[name].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _requirepass() -> str:
    args = shlex.split(_command("redis"))
    return args[args.index("--requirepass") + 1]


def _broker_url(name: str) -> str:
    args = shlex.split(_command(name))
    if "--broker" in args:
        return args[args.index("--broker") + 1]
    return _env(name)["OCYCLE_BROKER_URL"]


def _interpolate(text: str) -> str:
    """Resolve ``${VAR:-default}`` the way Compose does with VAR unset."""
    return _VARIABLE.sub(lambda m: m.group(2) or "", text)


def test_services_exist() -> None:
    assert {"redis", "worker", "flower", "producer"} <= set(SERVICES)


def test_redis_persists_and_requires_a_password() -> None:
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:7")
    args = shlex.split(_command("redis"))
    assert args[args.index("--appendonly") + 1] == "yes"
    assert _interpolate(_requirepass())
    assert any(str(v).split(":")[-1] == "/data" for v in redis.get("volumes", []))
    check = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in check
    assert "ping" in check
    assert _requirepass() in check


def test_redis_is_on_internal_networks_only() -> None:
    assert "ports" not in SERVICES["redis"]
    assert "network_mode" not in SERVICES["redis"]
    assert _networks("redis")
    for network in _networks("redis"):
        assert (NETWORKS[network] or {}).get("internal") is True, network


def test_worker_can_scale_and_stop_gracefully() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["stop_grace_period"]
    assert _command("worker").startswith("celery -A workers worker")
    check = " ".join(worker["healthcheck"]["test"])
    assert "celery -A workers inspect ping" in check
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    archive = _env("worker")["OCYCLE_ARCHIVE_DIR"]
    assert any(str(v).split(":")[1] == archive for v in worker.get("volumes", []))


def test_the_archive_worker_takes_its_recipients_from_the_environment_with_no_default() -> None:
    from workers import ARCHIVE_QUEUE

    archivers = [n for n in SERVICES if ARCHIVE_QUEUE in _command(n).split("-Q ", 1)[-1].split()[0].split(",")]
    assert archivers == ["worker"]
    env = _env("worker")
    # given as `OCYCLE_ARCHIVE_RECIPIENTS=age1... docker compose up`; unset, both are empty and the worker
    # refuses to start (tests/integration/test_archive.py), rather than archive unencrypted
    assert env["OCYCLE_ARCHIVE_RECIPIENTS"] == "${OCYCLE_ARCHIVE_RECIPIENTS:-}"
    assert env["OCYCLE_ARCHIVE_PLAINTEXT"] == "${OCYCLE_ARCHIVE_PLAINTEXT:-}"
    assert _interpolate(env["OCYCLE_ARCHIVE_RECIPIENTS"]) == _interpolate(env["OCYCLE_ARCHIVE_PLAINTEXT"]) == ""


@pytest.mark.parametrize("name", CLIENTS)
def test_redis_clients_get_the_password(name: str) -> None:
    assert set(_networks(name)) & set(_networks("redis")), "cannot reach redis"
    url = urlsplit(_broker_url(name))
    assert url.scheme == "redis"
    assert (url.hostname, url.port) == ("redis", 6379)
    assert url.password == _requirepass()
    assert _interpolate(url.password)


def test_flower_publishes_5555_from_a_non_internal_network() -> None:
    flower = SERVICES["flower"]
    assert re.match(r"celery -A workers (--config workers\.flower_config )?flower\b", _command("flower"))
    ports = [_interpolate(str(p)) for p in flower["ports"]]
    assert any(p == "5555:5555" or p.endswith(":5555:5555") for p in ports), ports
    assert any(not (NETWORKS[n] or {}).get("internal") for n in _networks("flower"))


def test_producer_runs_the_demo_after_redis_and_worker() -> None:
    producer = SERVICES["producer"]
    assert _command("producer").startswith("ocycle-dist demo")
    assert producer["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "worker" in producer["depends_on"]


def test_declared_networks_and_volumes_are_used_consistently() -> None:
    volumes = COMPOSE.get("volumes") or {}
    for name, service in SERVICES.items():
        for network in _networks(name):
            assert network in NETWORKS, (name, network)
        for mount in service.get("volumes", []):
            source = str(mount).split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in volumes, (name, source)


def test_celery_app_module_exists() -> None:
    assert (ROOT / "workers" / "__init__.py").is_file()


def test_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "ocycle-dist" in project["scripts"]


def test_dockerfile_installs_libsndfile_and_the_built_package_not_the_source_tree() -> None:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"apt-get install[^\n]*\blibsndfile1\b", text)
    assert re.search(r"^COPY \. ", text, re.MULTILINE)
    # a source tree on the path would shadow the installed package and its C hot path
    assert not re.search(r"^ENV [^\n]*PYTHONPATH", text, re.MULTILINE)
    assert re.search(r"pip wheel [^\n]*/src", text) and re.search(r"pip install --no-deps /wheels/", text)
    assert re.search(r"for x in \('celery', 'audio', 'model', 'flower', 'metrics'\)", text)
    assert "appender_class().__module__ == 'ocycle_dist._speedups'" in text
    workdir = re.findall(r"^WORKDIR (\S+)", text, re.MULTILINE)[-1]
    assert workdir not in ("/src", "/app")  # `celery -A workers` puts the working directory on sys.path


def test_dockerignore_keeps_secrets_and_git_out() -> None:
    entries = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in entries
    assert ".env" in entries


def test_worker_services_consume_the_queue_groups_of_the_process_topology_and_every_demo_queue() -> None:
    from ocycle_dist.app.consumers import QUEUES
    from ocycle_dist.testing.topology import COMPOSE_GROUPS

    consumed = {}
    for name in SERVICES:
        command = _command(name)
        if command.startswith("celery -A workers worker"):
            words = command.split()
            consumed[name] = words[words.index("-Q") + 1]
    assert consumed == COMPOSE_GROUPS
    assert set(QUEUES) <= {q for group in consumed.values() for q in group.split(",")}
    assert SERVICES["worker-model"]["depends_on"]["redis"]["condition"] == "service_healthy"


# ---- docker-compose.ha.yml: Redis Sentinel over the base file ------------------------------------------------

HA = yaml.safe_load((ROOT / "docker-compose.ha.yml").read_text())
HA_SERVICES: dict[str, dict] = HA["services"]
SENTINELS = sorted(name for name in HA_SERVICES if name.startswith("sentinel"))


def _ha_args(name: str) -> list[str]:
    cmd = HA_SERVICES[name]["command"]
    return shlex.split(_interpolate(cmd if isinstance(cmd, str) else cmd[-1]))


def _option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _sentinel_conf(name: str) -> list[str]:
    """The lines of the configuration file a sentinel service writes before starting."""
    script = _interpolate(HA_SERVICES[name]["command"][-1])
    body = script.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    return [line.strip() for line in body.splitlines()]


def _ha_env(name: str) -> dict[str, str]:
    """The service's environment with the override merged over the base file's (Compose merges by key)."""
    env = {**_env(name), **{k: str(v) for k, v in (HA_SERVICES[name].get("environment") or {}).items()}}
    return {k: _interpolate(v) for k, v in env.items()}


def test_ha_redis_servers_replicate_each_other_with_the_password() -> None:
    password = _interpolate(_requirepass())
    for name in ("redis", "redis-replica"):
        args = _ha_args(name)
        assert _option(args, "--requirepass") == _option(args, "--masterauth") == password, name
        assert _option(args, "--appendonly") == "yes", name
        assert _option(args, "--replica-announce-ip") == name  # either may be master after a failover
    replica = HA_SERVICES["redis-replica"]
    assert _ha_args("redis-replica")[-3:] == ["--replicaof", "redis", "6379"]
    assert replica["image"] == SERVICES["redis"]["image"]
    assert "ports" not in replica
    assert any(str(v).split(":")[-1] == "/data" for v in replica["volumes"])
    assert str(replica["volumes"][0]).split(":")[0] in HA["volumes"]
    assert replica["networks"] == _networks("redis")


def test_ha_three_sentinels_watch_the_master_with_a_majority_quorum() -> None:
    assert len(SENTINELS) == 3
    for name in SENTINELS:
        conf = _sentinel_conf(name)
        monitor = next(line.split() for line in conf if line.startswith("sentinel monitor "))
        master_name, host, port, quorum = monitor[2:]
        assert (host, port, int(quorum)) == ("redis", "6379", len(SENTINELS) // 2 + 1)
        assert f"sentinel auth-pass {master_name} {_interpolate(_requirepass())}" in conf
        assert conf.index("sentinel resolve-hostnames yes") < conf.index(" ".join(monitor))
        assert "port 26379" in conf
        service = HA_SERVICES[name]
        assert "ports" not in service
        assert service["networks"] == _networks("redis")
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_ha_backend_is_not_internal_so_sentinels_resolve_names_at_once() -> None:
    # On Docker < 26 a lookup of an unknown name on an internal-only network takes 20 s (moby/moby#43430):
    # the sentinels go into TILT and never fail over. Nothing of Redis is published instead.
    assert (HA["networks"]["backend"] or {}).get("internal") is False
    assert all("ports" not in HA_SERVICES[name] for name in ("redis", "redis-replica", *SENTINELS))


REDIS_CLIENTS = [n for n in SERVICES if "OCYCLE_BROKER_URL" in _env(n) or "--broker" in _command(n)]


def test_ha_overrides_every_redis_client_of_the_base_file() -> None:
    assert set(CLIENTS) <= set(REDIS_CLIENTS)
    assert set(REDIS_CLIENTS) <= set(HA_SERVICES)


@pytest.mark.parametrize("name", REDIS_CLIENTS)
def test_ha_clients_find_the_master_through_every_sentinel(name: str) -> None:
    from ocycle_dist.remote.redis_client import sentinel_hosts

    env = _ha_env(name)
    url = _option(_ha_args(name), "--broker") if "command" in HA_SERVICES[name] else env["OCYCLE_BROKER_URL"]
    hosts, master = sentinel_hosts(url)
    assert sorted(hosts) == [(s, 26379) for s in SENTINELS]
    assert master["password"] == _interpolate(_requirepass()) and master["db"] == 0
    monitored = _sentinel_conf(SENTINELS[0])
    assert f"sentinel monitor {env['OCYCLE_SENTINEL_MASTER']} redis 6379 2" in monitored
    assert "sentinel1" in HA_SERVICES[name]["depends_on"]


def test_no_producer_identity_is_fixed_so_runs_never_share_stream_ids() -> None:
    # stream ids are <hostname>-<consumer>: a fixed hostname made every run's archive file names the same
    assert "hostname" not in SERVICES["producer"] and "container_name" not in SERVICES["producer"]
    assert "--id" not in shlex.split(_command("producer"))


def test_metrics_are_served_by_the_workers_and_the_producer() -> None:
    for name in ("worker", "worker-model"):
        assert int(_env(name)["OCYCLE_WORKER_METRICS_PORT"]) > 0
    args = shlex.split(_interpolate(_command("producer")))
    assert _option(args, "--metrics-port") and _option(args, "--metrics-host") == "0.0.0.0"
    assert _option(_ha_args("producer"), "--metrics-port") == _option(args, "--metrics-port")


def test_flower_lists_every_queue_of_the_deployment_before_it_has_seen_a_worker() -> None:
    from ocycle_dist.app.consumers import QUEUES

    assert "--config workers.flower_config" in _command("flower")
    from workers import flower_config

    assert {q.name for q in flower_config.task_queues} == {"celery", *QUEUES}


def test_the_services_share_one_image_built_from_the_dockerfile() -> None:
    built = {name for name, s in SERVICES.items() if "build" in s}
    assert built == {"worker", "worker-model", "flower", "producer"}
    assert len({SERVICES[name]["image"] for name in built}) == 1
