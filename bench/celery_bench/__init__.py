"""The sections of ``bench/bench_celery.py``, one module each, and what they share.

- :mod:`.common`: constants, :class:`~.common.Config`, :class:`~.common.Collector`, emitter helpers.
- :mod:`.rig`: the processes (redis-server, ocycle_dist's workers w0-w3, stock Celery's r0-r3), built on
  ``ocycle_dist.testing``, and the bench-only process helpers.
- Sections, in the order they run: :mod:`.publish` (1: goals 1, 2), :mod:`.write_latency` (3a),
  :mod:`.latency` (4), :mod:`.scaling` (5), :mod:`.outage` (3b), :mod:`.memory` (6). Each has
  ``run(rig, cfg, verdicts)``: it prints its tables and adds its PASS/MISS verdicts.
"""
