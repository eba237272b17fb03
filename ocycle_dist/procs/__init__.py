"""Child processes on loopback: what the embedded default (:mod:`ocycle_dist.app.embedded`) and the test rigs
(:mod:`ocycle_dist.testing`) start.

- :mod:`.ports`: ``free_port()``, a loopback port outside the ephemeral range.
- :mod:`.processes`: ``Proc``, a child process in its own process group, with a log.
- :mod:`.redis_server`: ``RedisServer``, a real ``redis-server`` child (kill, restart empty on the same port).
- :mod:`.workers`: ``Worker``, a real ``celery -A <app> worker`` child (queues, concurrency, restart);
  ``wait_all_ready()`` for workers started together.
"""
