"""The device application: the ``ocycle-dist`` command and what it runs on top of the library.

- :mod:`.cli`: the ``ocycle-dist`` command (``demo``, ``stream``, ``status``, ``purge``, ``archive``).
- :mod:`.stream`: ``ocycle-dist stream``, the producer a device runs: a source, a ``Tap`` of consumers.
- :mod:`.demo`: ``ocycle-dist demo``, the main job: a synthetic source and the three canonical consumers.
- :mod:`.sources`: where frames come from: raw PCM on stdin, a sound file, a microphone.
- :mod:`.consumers`: which task gets chunks of how many seconds, on which queue.
- :mod:`.metrics`: the emitters' Prometheus metrics.
- :mod:`.embedded`: the default broker and worker when no Redis is reachable.

The library (``ocycle_dist``'s core, ``executors/``, ``remote/``) never imports this package.
"""
