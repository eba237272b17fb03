"""Where the producer keeps each chunk until its result has come back: memory, or a SQLite file on disk.

The durable spool survives a producer crash or reboot: a new producer on the same directory finds the
chunks that were pending and sends them again. A disk budget bounds it; when full, a named policy drops
either the new chunk (``reject_newest``) or the oldest one (``drop_oldest``), and the drop is counted.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..chunk import Chunk
from ..errors import ConfigError

SPOOL_POLICIES = ("reject_newest", "drop_oldest")


@dataclass
class Entry:
    """One chunk waiting for its result: everything needed to send its task again."""

    id: str
    task: str
    meta: Chunk
    chunk: bytes  # the encoded value (wire.dumps)
    attempts: int = 0
    expires_at: float | None = None  # wall-clock time after which no worker may start it (None: never)
    delivery_tag: str = ""  # of the last message sent: kombu's key for it in the unacked bookkeeping


class MemorySpool:
    """Entries in memory (lost with the process): the default."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> None:
        self._entries[entry.id] = entry
        self.nbytes += len(entry.chunk)

    def remove(self, entry_id: str) -> Entry | None:
        entry = self._entries.pop(entry_id, None)
        if entry is not None:
            self.nbytes -= len(entry.chunk)
        return entry

    def get(self, entry_id: str) -> Entry | None:
        return self._entries.get(entry_id)

    def oldest(self) -> Entry | None:
        return next(iter(self._entries.values()), None)

    def stored(self, stream: str) -> list[Entry]:
        """Entries of ``stream`` kept by an earlier producer (none in memory)."""
        return []

    def close(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class SqliteSpool(MemorySpool):
    """Entries in memory and in ``directory/spool.sqlite`` (WAL): each is on disk before submit() returns."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int | None = None) -> None:
        super().__init__(max_bytes)
        path = Path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".ocycle-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError("spool", str(directory), f"a writable directory ({exc.strerror})") from None
        self.path = path / "spool.sqlite"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # a process crash loses nothing committed
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS chunks (id TEXT PRIMARY KEY, stream TEXT, seq INTEGER, task TEXT,"
                " meta TEXT, chunk BLOB)"
            )

    def add(self, entry: Entry) -> None:
        meta = json.dumps(entry.meta._asdict())
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?)",
                (entry.id, entry.meta.stream, entry.meta.seq, entry.task, meta, entry.chunk),
            )
        super().add(entry)

    def remove(self, entry_id: str) -> Entry | None:
        with self._lock:
            self._db.execute("DELETE FROM chunks WHERE id = ?", (entry_id,))
        return super().remove(entry_id)

    def stored(self, stream: str) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, task, meta, chunk FROM chunks WHERE stream = ? ORDER BY seq", (stream,)
            ).fetchall()
        found = []
        for entry_id, task, meta, chunk in rows:
            if entry_id not in self._entries:
                entry = Entry(entry_id, task, Chunk(**json.loads(meta)), bytes(chunk))
                super().add(entry)
                found.append(entry)
        return found

    def close(self) -> None:
        with self._lock:
            self._db.close()
        super().close()


def open_spool(directory: Any, max_bytes: int | None) -> MemorySpool:
    """A durable spool in ``directory``, or a memory one when it is None."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
        raise ConfigError("spool_max_bytes", max_bytes, "a positive number of bytes or None")
    return MemorySpool(max_bytes) if directory is None else SqliteSpool(directory, max_bytes)
