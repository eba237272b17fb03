"""The worker's result backend: each task's outcome RPUSHed to the reply list its message names.

Both sides accept only the msgpack content type: a pickle message is refused unread. Replies are written by
:class:`.replies.ReplyWriter` (sealed with a reply secret), the one writer of every reply on the worker.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.base import DisabledBackend
from celery.exceptions import TaskRevokedError

from .protocol import BATCH_HEADER, is_reply_key, reply_error, reply_expired, reply_ok
from .replies import ReplyWriter
from .runner import broker_client, describe
from .settings import app_settings


class ReplyBackend(DisabledBackend):  # type: ignore[misc]
    """A Celery result backend that RPUSHes each task's outcome to the reply list named in its message.

    Celery calls it for every way a task ends: returned, raised, killed by its hard time limit, and even
    for a task name the worker does not know, so the producer hears of each. Messages without an ocycle
    reply list (plain ``apply_async``) are not stored: results of this app go to producers only. A reply that
    cannot be written (Redis away) is retried, then left to the producer's recovery (:mod:`.replies`): it
    never raises, so Celery never turns it into a failed task.
    """

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        reply = getattr(request, "reply_to", None)
        if not isinstance(reply, str) or not is_reply_key(reply):
            return result
        batch = getattr(request, BATCH_HEADER, None)
        if batch:  # a batch message: its chunks were answered one by one; a failure of the whole fails the rest
            if state in (states.FAILURE, states.REVOKED):
                self._fail_batch(batch, result, reply)
            return result
        if state == states.SUCCESS:
            record = reply_ok(task_id, result)
        elif state == states.REVOKED and isinstance(result, TaskRevokedError) and str(result) == "expired":
            record = reply_expired(task_id)  # not started before its `expires` header: discarded unread
        elif state in (states.FAILURE, states.REVOKED):
            record = reply_error(task_id, type(result).__name__, describe(result))
        else:  # STARTED, RETRY: not an outcome
            return result
        writer = self._writer()
        writer.add(reply, record)
        writer.send()
        return result

    def _writer(self) -> ReplyWriter:
        settings = app_settings(self.app)
        return ReplyWriter(broker_client(self.app), settings.result_ttl, settings.reply_secret)

    def _fail_batch(self, batch: list[Any], exc: Any, reply: str) -> None:
        """Every chunk of a failed batch message (its time limit) fails with its error (those already answered
        keep their first outcome: the producer ignores a second reply)."""
        writer = self._writer()
        for task_id, _stream in batch:
            writer.add(reply, reply_error(str(task_id), type(exc).__name__, describe(exc)))
        writer.send()
