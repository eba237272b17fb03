"""The pending table: every chunk of a process that waits for its result from one broker.

One table per :class:`~.hub.Hub` (per process and broker), with its own lock. The publisher takes what is
queued, the listener's replies pop what is answered, the liveness watch requeues what was lost; none of them
owns the others' state. An :class:`Entry` moves::

    queued --take/sent--> sent --pop (answered, dropped, given up)--> gone
                            |
                            +--requeue (a new server, a lapsed lease, a lost message)--> queued again, first

Entries queued again by recovery are sent before the chunks that never went out, in stream order, and a
recovery never counts against a chunk's ``max_attempts``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any, Protocol

from ..chunk import Chunk
from ..pieces import joined
from . import wire
from .settings import Settings

QUEUED, SENT = 0, 1


class Owner(Protocol):
    """What the hub and the publisher use of the executor (one per emitter) that keeps an entry."""

    settings: Settings  # its queue, batching, claim thresholds, resend_after, max_attempts...
    token: str  # names its reply list and, with the settings' secret, keys the replies' MAC
    mac_key: bytes
    expires: float | None
    batching: bool  # batch messages, until a worker says it lacks the batch task
    counts: dict[str, int]
    spool: Any  # remembers the delivery tags of what was sent (a durable spool)

    def dropped(self, entry: Entry) -> None:
        """``entry``'s Future is being cancelled (the emitter's policy drops it)."""


class Entry:
    """One chunk waiting for its result: everything needed to send its task again.

    Its value is encoded (``chunk``) when kept, or, for ``bytes`` and numpy arrays in a memory spool, later, by
    the publisher's thread (:meth:`encode`): ``value`` holds it until then and ``size`` is the length its
    encoding will have (:func:`.wire.encoded_size`), what the budget counts either way.
    """

    __slots__ = (
        "chunk",
        "claimed",
        "digest",
        "emitted_at",
        "expires_at",
        "future",
        "id",
        "lost",
        "meta",
        "owner",
        "sends",
        "sent_at",
        "size",
        "state",
        "tag",
        "task",
        "value",
    )

    def __init__(
        self,
        id: str,
        task: str,
        meta: Chunk,
        chunk: bytes,
        *,
        expires_at: float | None = None,
        value: Any = None,
        size: int = -1,
        emitted_at: float = 0.0,
        tag: str = "",
    ) -> None:
        self.id, self.task, self.meta, self.chunk = id, task, meta, chunk
        self.expires_at = expires_at  # wall-clock time after which no worker may start it (None: never)
        self.value = value  # the chunk's value until encode() (None once encoded)
        self.size = len(chunk) if size < 0 else size
        self.emitted_at = emitted_at  # wall-clock time of its first emit (its latency counts from there)
        self.tag = tag  # the delivery tag of the last message that carried it
        self.owner: Owner = None  # type: ignore[assignment]  # set by the executor that keeps it
        self.future: Future[Any] | None = None
        self.state = QUEUED
        self.sent_at = 0.0  # monotonic time of the last send
        self.sends = 0  # messages that carried it
        self.lost = 0  # times it vanished from Redis with no reason known: counted against max_attempts
        self.claimed = False  # sent by claim check at least once: its key is deleted once settled
        self.digest: bytes | None = None  # what its sealed messages bind it by (a deployment with a reply secret)

    def encode(self) -> None:
        """Encode a value left for later (see the class), once; EncodeError if it cannot be."""
        if self.value is not None:
            self.chunk, self.value = wire.dumps(self.value), None  # Pieces are joined by dumps

    def join(self) -> None:
        """Join a value left as :class:`~ocycle_dist.pieces.Pieces` (once: a resend sends the joined value)."""
        self.value = joined(self.value)

    def __repr__(self) -> str:
        return f"<Entry {self.meta.stream}#{self.meta.seq} {('queued', 'sent')[self.state]} sends={self.sends}>"


class Pending:
    """The chunks waiting for results (see the module). Every method takes the table's lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # the publisher reads the table while it holds the lock to wait
        self.changed = threading.Condition(self.lock)  # the publisher waits here for work
        self._entries: dict[str, Entry] = {}
        self._new: deque[Entry] = deque()  # queued, never sent, in emit order
        self._again: list[Entry] = []  # queued again by recovery: sent first
        self._sent: dict[str, Entry] = {}  # sent and unanswered, in the order of their last send
        self._tags: dict[str, list[Entry]] = {}  # delivery tag -> the entries of that message

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: Entry, *, sent: bool = False) -> None:
        """Keep ``entry``: queued to be sent, or (``sent``: taken over from an earlier producer) as sent with its
        old delivery tag, so that the liveness watch looks for it before it is sent again."""
        with self.lock:
            self._entries[entry.id] = entry
            if sent:
                entry.state = SENT
                self._sent[entry.id] = entry
                if entry.tag:
                    self._tags.setdefault(entry.tag, []).append(entry)
            else:
                self._new.append(entry)
                self.changed.notify()

    def get(self, entry_id: str) -> Entry | None:
        return self._entries.get(entry_id)

    def has_queued(self) -> bool:
        """Whether something waits to be sent (under the lock or not: a hint)."""
        return bool(self._again) or bool(self._new)

    def take(self, limit: int, max_bytes: int) -> list[Entry]:
        """Up to ``limit`` queued entries, and about ``max_bytes`` of chunks carried in their messages (a claimed
        chunk counts as its key), to publish: those queued again by recovery first (in stream order), then new
        ones (in emit order). They stay queued until :meth:`sent`."""
        with self.lock:
            out: list[Entry] = []
            nbytes = 0
            if self._again:
                self._again.sort(key=_stream_order)
                taken = 0
                while taken < len(self._again) and len(out) < limit and (not out or nbytes < max_bytes):
                    out.append(self._again[taken])
                    nbytes += _inline(self._again[taken])
                    taken += 1
                del self._again[:taken]
            while self._new and len(out) < limit and (not out or nbytes < max_bytes):
                entry = self._new.popleft()
                if entry.state == QUEUED and entry.id in self._entries:
                    out.append(entry)
                    nbytes += _inline(entry)
            return [e for e in out if e.id in self._entries]

    def untake(self, entries: list[Entry]) -> None:
        """Put back, at the front, entries taken and not sent (the publish failed)."""
        with self.lock:
            self._again[:0] = [e for e in entries if e.id in self._entries and e.state == QUEUED]

    def sent(self, entries: Iterable[Entry], at: float) -> None:
        """Record that ``entries`` (taken: queued, in no message) went out at monotonic time ``at``, each in the
        message its ``entry.tag`` names."""
        with self.lock:
            for entry in entries:
                if entry.id not in self._entries:
                    continue  # answered or dropped while it was being sent
                entry.state, entry.sent_at = SENT, at
                entry.sends += 1
                self._sent.pop(entry.id, None)
                self._sent[entry.id] = entry
                self._tags.setdefault(entry.tag, []).append(entry)

    def refresh(self, entries: Iterable[Entry], at: float) -> None:
        """Sent entries found still waiting in Redis: their wait for a result starts again at ``at``."""
        with self.lock:
            for entry in entries:
                if self._sent.pop(entry.id, None) is not None:
                    entry.sent_at = at
                    self._sent[entry.id] = entry

    def pop(self, entry_id: str) -> Entry | None:
        """Forget ``entry_id`` (answered, dropped, given up); the entry, or None when it was not here."""
        with self.lock:
            entry = self._entries.pop(entry_id, None)
            if entry is not None:
                self._sent.pop(entry_id, None)
                self._untag(entry)
            return entry

    def requeue(self, entries: Iterable[Entry]) -> list[Entry]:
        """Queue again, first, the sent entries of ``entries`` (a recovery); those requeued."""
        with self.lock:
            again = []
            for entry in entries:
                if entry.state != SENT or entry.id not in self._entries:
                    continue
                self._sent.pop(entry.id, None)
                self._untag(entry)
                entry.state = QUEUED
                again.append(entry)
            if again:
                self._again.extend(again)
                self.changed.notify()
            return again

    def in_message(self, tag: str) -> list[Entry]:
        """The entries the message with delivery tag ``tag`` carried (and still waiting)."""
        with self.lock:
            return list(self._tags.get(tag, ()))

    def due(self, now: float, soonest: float) -> list[Entry]:
        """Sent entries whose result is later than their owner's ``resend_after``, oldest first; ``soonest`` is
        the smallest ``resend_after`` of the owners (the scan stops at the first entry younger than that)."""
        with self.lock:
            out = []
            for entry in self._sent.values():
                if entry.sent_at + soonest > now:
                    break
                if entry.sent_at + entry.owner.settings.resend_after <= now:
                    out.append(entry)
            return out

    def sent_before(self, at: float) -> list[Entry]:
        """The sent entries whose last send was before monotonic time ``at``, oldest first."""
        with self.lock:
            out = []
            for entry in self._sent.values():
                if entry.sent_at >= at:
                    break
                out.append(entry)
            return out

    def oldest_sent(self) -> float | None:
        """Monotonic time of the oldest send still unanswered, or None."""
        with self.lock:
            return next(iter(self._sent.values())).sent_at if self._sent else None

    def sent_tags(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        """Of the sent entries: task id -> delivery tag, and delivery tag -> task ids (for the lease watch)."""
        with self.lock:
            tag_of = {entry_id: entry.tag for entry_id, entry in self._sent.items()}
            task_of = {tag: [e.id for e in entries] for tag, entries in self._tags.items()}
            return tag_of, task_of

    def owned_by(self, owner: Any) -> list[Entry]:
        """The entries of one executor."""
        with self.lock:
            return [e for e in self._entries.values() if e.owner is owner]

    def _untag(self, entry: Entry) -> None:
        entries = self._tags.get(entry.tag)
        if entries is not None:
            if len(entries) <= 1:
                del self._tags[entry.tag]
            elif entry in entries:
                entries.remove(entry)


def _inline(entry: Entry) -> int:
    """The bytes ``entry`` adds to a message: its chunk, or its key when it travels by claim check."""
    return entry.size if entry.size <= entry.owner.settings.claim_threshold else 64


def _stream_order(entry: Entry) -> tuple[str, int]:
    return entry.meta.stream, entry.meta.seq
