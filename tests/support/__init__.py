"""What the tests share: helpers, the test tasks the test workers load, child-process scripts and apps.

- :mod:`.helpers`: waiting on conditions, files' footprint.
- :mod:`.dist_helpers`: the celery-mode unit tests' view of the fakeredis broker (queued messages, replies).
- :mod:`.tasks`: the test tasks (``tests.echo``, ``tests.fail``, the contract suite's ``contract.*``),
  loaded by every test worker with ``--include tests.support.tasks``.
- :mod:`.bad_tasks`: tasks for the bad-input tests' own worker.
- :mod:`.stock_app`: a stock Celery app (not ``make_app``) for the interoperability tests.
- :mod:`.blocked`: a Python child process in which the workers' packages cannot be imported.
- :mod:`.producer_proc`: a producer run as a child process, killed and restarted by the fault tests.
"""
