"""Test rigs as product code: the pieces the tests and the benchmarks run the system on.

- :mod:`.sentinel`: ``SentinelCluster``, a primary, a replica and three Redis Sentinels (kill the master).
- :mod:`.topology`: ``Topology``, the compose file's services as processes (Redis + worker groups).
- :mod:`.audio_device`: ``JackDummy``, a real PortAudio input device without sound hardware (JACK's dummy
  driver), and ``jack_metro`` clicks into it.

and, from :mod:`ocycle_dist.procs` (the child processes the embedded default starts too): ``free_port``,
``Proc``, ``RedisServer``, ``Worker``, ``wait_all_ready``.

Everything binds to loopback only.
"""

from ..procs.ports import free_port
from ..procs.processes import Proc
from ..procs.redis_server import RedisServer
from ..procs.workers import Worker, wait_all_ready
from .sentinel import SentinelCluster
from .topology import Topology

__all__ = ["Proc", "RedisServer", "SentinelCluster", "Topology", "Worker", "free_port", "wait_all_ready"]
