"""Settings of the distributed path, shared by the producer and the workers, read from ``OCYCLE_*`` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from ..errors import ConfigError
from .redis_client import DEFAULT_SENTINEL_MASTER, redact

_S = TypeVar("_S", bound="EnvSettings")
DEFAULT_BROKER = "redis://localhost:6379/0"


class EnvSettings:
    """Mixin of a frozen, keyword-only dataclass whose fields can be read from ``OCYCLE_<FIELD>`` variables."""

    @classmethod
    def from_env(cls: type[_S], env: Mapping[str, str] | None = None, **overrides: Any) -> _S:
        """Settings from ``OCYCLE_<FIELD>`` variables (e.g. ``OCYCLE_BROKER_URL``), then ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            raw = env.get(f"OCYCLE_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = type(getattr(cls(), f.name))
            if kind is bool:  # bool("0") is True
                flag = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                        "off": False}.get(raw.strip().lower())  # fmt: skip
                if flag is None:
                    raise ConfigError(f"OCYCLE_{f.name.upper()}", raw, "1 or 0 (true/false, yes/no, on/off)")
                values[f.name] = flag
                continue
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ConfigError(f"OCYCLE_{f.name.upper()}", raw, f"a {kind.__name__}") from None
        return replace(cls(**values), **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[type-var]


@dataclass(frozen=True, kw_only=True)
class Settings(EnvSettings):
    """How the distributed path is wired. Seconds are floats, sizes are bytes.

    Attributes:
        broker_url: the Redis URL (``redis://:password@host:port/db``, ``rediss://`` for TLS,
            ``unix://:password@/path/redis.sock?db=0`` for a Unix socket: the workers' Celery app gets it as
            kombu spells it, ``redis+socket://``), or Redis Sentinel's in kombu's form,
            ``sentinel://:password@host:26379/db;sentinel://host2:26379;...`` (the password and db of the
            first one are the master's).
        sentinel_master: the name Redis Sentinel monitors the master under (``sentinel://`` URLs only).
        queue: the Celery queue the chunks' tasks go to.
        claim_threshold: an encoded chunk larger than this is stored in Redis under its own key and the
            task carries only the key (a claim check), so big chunks skip the envelope's base64.
        max_chunk_bytes: the largest encoded chunk accepted, by the producer and by the workers.
        result_ttl: how long replies and claimed chunks are kept in Redis.
        visibility_timeout: Redis transport: seconds before an unacknowledged task is delivered again.
        worker_prefetch: tasks a worker process reserves ahead (Celery's prefetch multiplier). Short chunk
            tasks run much faster with a few; a killed worker's reserved tasks are re-sent by the producer.
        socket_timeout: seconds a Redis command may take before the connection is given up.
        resend_after: seconds without a result after which the producer looks for a chunk in Redis (its queue,
            the unacknowledged deliveries), when no worker's lease names it: still there, it waits on; gone
            (a purge, an evicting Redis, a worker that took it without replying), it is sent again, counted
            as lost. A chunk lost with a restarted server or a dead worker is sent again at once instead.
        worker_lease: seconds a worker's lease lives in Redis (renewed every third of that, also while a
            long task runs); a worker killed whole is known dead that long after (0: no leases).
        max_attempts: times one chunk may be lost with no known reason (see ``resend_after``) before it fails
            with DeliveryError. Recoveries with a known reason (Redis a new server, a dead worker, a worker that
            lost Redis mid-task) never count; a task's own error is its outcome at once.
        task_time_limit: seconds a chunk's task may run before its worker process is killed (0: no limit).
        spool_dir: a directory for the durable spool ("": chunks wait in memory only).
        spool_max_bytes: the budget of chunk bytes waiting for their result (0: no limit): in memory, of
            the chunks' bytes; in a durable spool, of the bytes they take on disk, the files staying under it
            + 1/16 of it + twice the largest chunk + 96 KiB. One budget per emitter (executor). The default,
            32 MiB, holds about 8.7 minutes of worker outage for each consumer of a 16 kHz float32 microphone
            (each keeps 64 kB per second of audio; 17.5 minutes of int16): the canonical three consumers keep
            96 MiB at most. When it is full, the emitter's ``policy`` acts (counted in ``stats().dropped``).
        spool_policy: removed: the emitter's ``policy`` (``block``, ``drop_oldest``, ``drop_newest``) is the one
            policy of every bound; setting it is a ConfigError naming the replacement.
        reply_secret: a secret shared by the producers and workers of a deployment (never stored in Redis):
            it keys the MAC of every reply, so that whoever can write to Redis cannot forge a result.
            Empty: the producer's token alone keys it (see ``protocol``).
        batch_max_chunks: the producer sends up to this many pending chunks of the same task and queue as one
            Celery message (task ``ocycle.batch``, run by workers made with ``make_app``); each chunk still has
            its own outcome. A lone pending chunk goes as a plain task message. 0 or 1: never batch.
        batch_max_bytes: the most encoded chunk bytes in one batch message (a claimed chunk counts as its
            key: it stays in Redis under its own key).
        batch_claim_threshold: in a batch message, a chunk larger than this travels by claim check (the
            batch carries its key; the worker fetches all of a batch's in one MGET), so that neither side
            base64s a backlog's data through the transport's JSON envelope.
        worker_drain: a worker's pool process, having run a short chunk, takes up to this many more waiting
            messages of the same queue in one Redis round trip and runs them in the same call (a fleet of
            producers each with one chunk in flight is then served at batch speed); they are recorded in the
            unacknowledged set and in a lease of the pool process, so a killed worker's are sent again at
            once. 0: never.
        worker_metrics_port: a worker serves its Prometheus metrics (chunks run, reply retries, junk messages,
            the backlog of its queues: :mod:`.worker_metrics`) on this port (0: not served).
        allow_eviction: accept a Redis whose ``maxmemory-policy`` may evict any key (``allkeys-*``), the queues
            with them: producers and workers refuse one otherwise (a ConfigError naming the policy and the fix,
            ``noeviction``). Either way, whatever a Redis that evicts takes is sent again within seconds, counted
            (:mod:`.recovery`).
    """

    broker_url: str = DEFAULT_BROKER
    sentinel_master: str = DEFAULT_SENTINEL_MASTER
    queue: str = "celery"
    claim_threshold: int = 128 * 1024
    max_chunk_bytes: int = 64 * 1024 * 1024
    result_ttl: float = 24 * 3600.0
    visibility_timeout: float = 300.0
    worker_prefetch: int = 4
    socket_timeout: float = 10.0
    resend_after: float = 120.0
    worker_lease: float = 3.0
    max_attempts: int = 5
    task_time_limit: float = 0.0
    spool_dir: str = ""
    spool_max_bytes: int = 32 * 1024 * 1024
    spool_policy: str = ""
    reply_secret: str = field(default="", repr=False)  # never shown (Celery's `inspect conf` prints the settings)
    batch_max_chunks: int = 64
    batch_max_bytes: int = 1024 * 1024
    batch_claim_threshold: int = 4 * 1024
    worker_drain: int = 64
    worker_metrics_port: int = 0
    allow_eviction: bool = False

    def __repr__(self) -> str:
        """The settings, the broker's password shown as ``***`` and the reply secret not at all: Celery's ``inspect
        conf`` prints a worker's settings to whoever can publish to its broker."""
        shown = (
            f"{f.name}={redact(value) if f.name == 'broker_url' and isinstance(value, str) else value!r}"
            for f in fields(self)
            if f.repr and (value := getattr(self, f.name)) is not None
        )
        return f"Settings({', '.join(shown)})"

    def __post_init__(self) -> None:
        if self.spool_policy:
            replacement = {"reject_newest": "drop_newest"}.get(self.spool_policy, self.spool_policy)
            raise ConfigError(
                "spool_policy",
                self.spool_policy,
                f"nothing: it was removed; give the emitter policy={replacement!r} (block, drop_oldest, drop_newest),"
                " the one policy of its backlog bound",
            )


def app_settings(app: Any) -> Settings:
    """The settings a Celery app was made with by ``make_app()`` (else read from the environment)."""
    settings = app.conf.get("ocycle_settings")
    return settings if isinstance(settings, Settings) else Settings.from_env()
