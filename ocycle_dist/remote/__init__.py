"""The distributed path: chunks as Celery tasks on Redis, results back to the producer.

Producer side: :mod:`.executor` (``CeleryExecutor``, the executor behind ``mode='celery'``) keeps each chunk
in the :mod:`.spool` until its result is in, sends it with the :mod:`.publisher` and hears back through the
:mod:`.listener`. Worker side: :mod:`.worker` (``make_app()``, ``ChunkTask``, ``ReplyBackend``). Both sides
share :mod:`.protocol` (every Redis key name, the task message, the reply record), :mod:`.wire` (msgpack,
no pickle), :mod:`.settings` and :mod:`.redis_client`.

Nothing here is imported by ``import ocycle_dist``: the core loads it only for ``mode='celery'``.
"""
