"""Where the producer keeps each chunk until its result has come back: memory, or a SQLite file on disk.

The durable spool survives a producer crash or reboot: a new producer on the same directory finds the
chunks that were pending (with the delivery tag of their last message and the time of their first emit) and
looks for them in Redis before it sends any again. Its size (``nbytes``) is what the emitter's budget
measures; the emitter's policy acts when it is full. Its directory deleted, or its disk full, are handled too
(:class:`SqliteSpool`): never a raw sqlite3 error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..chunk import Chunk
from ..errors import ConfigError, SpoolError
from .pending import Entry

log = logging.getLogger("ocycle_dist.spool")


class MemorySpool:
    """Chunks kept in memory (lost with the process), the default: only their bytes are counted here (the
    entries themselves live in the pending table)."""

    durable = False

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._count = 0

    def add(self, entry: Entry) -> None:
        self.nbytes += entry.size
        self._count += 1

    def remove(self, entry: Entry) -> None:
        self.nbytes -= entry.size
        self._count -= 1

    def mark_sent(self, entries: Iterable[Entry]) -> None:
        """Remember the delivery tags of the messages that carried ``entries`` (durable spools only)."""

    def stored(self, stream: str) -> list[Entry]:
        """Entries of ``stream`` kept by an earlier producer (none in memory)."""
        return []

    def close(self) -> None:
        """Nothing to release."""

    def __len__(self) -> int:
        return self._count


class SqliteSpool(MemorySpool):
    """Entries in ``directory/spool.sqlite`` (WAL), each on disk before submit() returns, with the delivery tag
    of its last message and the time of its first emit.

    It fails clearly, never with a raw ``sqlite3`` exception:

    - **The file vanishes** (its directory deleted, or the file replaced): noticed at the next chunk kept
      or released (one ``stat``), logged, and the file is written again with every chunk still pending, so a
      restarted producer still finds them all. If that cannot be done, :class:`SpoolError`.
    - **The disk is full**: the database grows only as far as it leaves a reserve free on its disk (the
      WAL allowance, twice the largest chunk, 128 KiB), so that it can always delete the chunks whose results
      come back and reuse their room. A chunk that does not fit makes :meth:`add` raise :class:`SpoolError`
      (the executor fails that chunk: ``on_error``, ``stats().failed``), as does any other SQLite error. A row
      that cannot be deleted (the reserve eaten by another process) is logged and deleted later.
    - **The budget** (``max_bytes``) counts what the chunks take on disk: ``nbytes`` is the size of the
      database pages in use beyond an empty spool's, row overhead and page slack included. The WAL is
      checkpointed every ``max_bytes / 16`` bytes (at most 1 MiB) and cut back to that size, so the files
      (database, WAL, shared-memory index) stay within ``max_bytes`` + that WAL allowance + the largest
      chunk twice (the one that crossed the budget, and its transaction in the WAL) + 96 KiB of SQLite's
      fixed costs (the header and root pages, the 32 KiB shared-memory index, a transaction's own pages).
    """

    durable = True

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int | None = None) -> None:
        super().__init__(max_bytes)
        self._entries: dict[str, Entry] = {}  # what the file holds: written again if the file vanishes
        path = Path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".ocycle-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError("spool", str(directory), f"a writable directory ({exc.strerror})") from None
        self.path = path / "spool.sqlite"
        self._wal = path / "spool.sqlite-wal"
        self._lock = threading.Lock()
        self._undeleted: set[str] = set()  # ids whose row could not be deleted yet (disk full)
        self._warned = False
        self._largest = 0  # the largest chunk kept so far: what a transaction may need
        try:
            self._open()
        except sqlite3.Error as exc:
            raise ConfigError("spool", str(directory), f"a directory where SQLite can write ({exc})") from None

    def _open(self) -> None:
        """Open (or create) the database file and remember which file it is."""
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a process crash loses nothing committed
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        # checkpoint the WAL often enough, and cut it back after: max_bytes / 16, at most 1 MiB
        self._wal_limit = wal = min(max((self.max_bytes or 2**62) // 16, self._page_size), 1024 * 1024)
        self._db.execute(f"PRAGMA wal_autocheckpoint={max(1, wal // self._page_size)}")
        self._db.execute(f"PRAGMA journal_size_limit={wal}")
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(chunks)")}
        for name, kind in (("tag", "TEXT"), ("emitted_at", "REAL")):  # a spool written by an older version
            if name not in columns:
                self._db.execute(f"ALTER TABLE chunks ADD COLUMN {name} {kind}")
        self._base_pages = _empty_pages(self._page_size)
        stat = os.stat(self.path)
        self._ident = (stat.st_dev, stat.st_ino)
        self._measure()

    def _limit_pages(self) -> tuple[int, int]:
        """Under the lock: let the database grow only as far as leaves ``reserve`` bytes free on its disk.

        What is kept free lets the WAL grow and be checkpointed, so a spool that filled its disk can still
        delete the chunks whose results come back, and reuse their pages. Returns (free, reserve) in bytes.
        """
        free = _free_bytes(self.path.parent)
        reserve = self._wal_limit + 2 * self._largest + 128 * 1024
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count={pages + max(0, free - reserve) // self._page_size}")
        return free, reserve

    def _measure(self) -> None:
        """``nbytes``: bytes of the database pages in use, beyond those of an empty spool."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        self.nbytes = max(0, pages - free - self._base_pages) * self._page_size

    def _check_file(self) -> None:
        """Under the lock: if the database file is gone or replaced, write it again from memory."""
        try:
            stat = os.stat(self.path)
            if (stat.st_dev, stat.st_ino) == self._ident:
                return
        except OSError:
            pass
        log.warning(
            "the spool file %s vanished (its directory deleted, or the file replaced): writing it again with"
            " the %d chunks pending",
            self.path,
            len(self._entries),
        )
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
            self._db.execute("BEGIN")
            self._db.executemany(_INSERT, map(_row, self._entries.values()))
            self._db.execute("COMMIT")
            self._undeleted.clear()
            self._measure()
        except (OSError, sqlite3.Error) as exc:
            self._ident = (-1, -1)  # try again at the next chunk
            raise SpoolError(f"the spool file {self.path} vanished and cannot be written again: {exc}") from exc

    def add(self, entry: Entry) -> None:
        """Keep ``entry`` on disk (encoded: :meth:`Entry.encode` first), then in memory.

        Raises:
            SpoolError: it cannot be written (disk full, file gone and not re-creatable...); nothing is kept.
        """
        entry.encode()
        with self._lock:
            self._check_file()
            self._largest = max(self._largest, len(entry.chunk))
            try:
                free, reserve = self._limit_pages()
                self._db.execute(_INSERT, _row(entry))
            except (OSError, sqlite3.Error) as exc:
                self._rollback()
                why = str(exc)
                if "database or disk is full" in why:  # SQLITE_FULL (its code is in sqlite3 only from 3.11)
                    why = f"the disk is full ({free} bytes free, {reserve} kept for the spool's own upkeep)"
                raise SpoolError(
                    f"chunk {entry.meta.stream}#{entry.meta.seq} ({len(entry.chunk)} bytes) cannot be kept in the"
                    f" spool {self.path}: {why}"
                ) from exc
            self._entries[entry.id] = entry
            self._count = len(self._entries)
            self._retry_deletes()
            self._measure()

    def remove(self, entry: Entry) -> None:
        """Forget ``entry``; a row that cannot be deleted now (disk full) is logged and deleted later."""
        with self._lock:
            if self._entries.pop(entry.id, None) is None:
                return
            self._count = len(self._entries)
            try:
                self._check_file()
                self._delete(entry.id)
                self._retry_deletes()
                self._measure()
            except (SpoolError, sqlite3.Error) as exc:
                self._rollback()
                self._undeleted.add(entry.id)
                if not self._warned:
                    log.warning("the spool %s cannot delete done chunks for now (%s); will retry", self.path, exc)
                    self._warned = True

    def mark_sent(self, entries: Iterable[Entry]) -> None:
        """Record the delivery tag of each entry's last message (one transaction), so that a producer restarted
        on this spool can look for the message in Redis before sending the chunk again. Best effort: a tag that
        cannot be written only means the chunk is sent again after a restart."""
        rows = [(e.tag, e.id) for e in entries if e.id in self._entries]
        if not rows:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany("UPDATE chunks SET tag = ? WHERE id = ?", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                log.debug("the spool %s could not record delivery tags: %s", self.path, exc)

    def _delete(self, entry_id: str) -> None:
        self._db.execute("DELETE FROM chunks WHERE id = ?", (entry_id,))

    def _retry_deletes(self) -> None:
        for entry_id in list(self._undeleted):
            self._delete(entry_id)
            self._undeleted.discard(entry_id)
        self._warned = False

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def stored(self, stream: str) -> list[Entry]:
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, task, meta, chunk, tag, emitted_at FROM chunks WHERE stream = ? ORDER BY seq",
                    (stream,),
                ).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"the spool {self.path} cannot be read: {exc}") from exc
            found = []
            for entry_id, task, meta, chunk, tag, emitted_at in rows:
                if entry_id not in self._entries:
                    entry = Entry(
                        entry_id, task, Chunk(**json.loads(meta)), bytes(chunk), tag=tag or "",
                        emitted_at=float(emitted_at or 0.0),
                    )  # fmt: skip
                    self._entries[entry_id] = entry
                    found.append(entry)
            self._count = len(self._entries)
            self._measure()
        return found

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                log.exception("closing the spool %s", self.path)
        self._entries.clear()


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS chunks"
    " (id TEXT PRIMARY KEY, stream TEXT, seq INTEGER, task TEXT, meta TEXT, chunk BLOB, tag TEXT, emitted_at REAL)"
)
_INSERT = "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


def _row(entry: Entry) -> tuple[Any, ...]:
    meta = json.dumps(entry.meta._asdict())
    return (entry.id, entry.meta.stream, entry.meta.seq, entry.task, meta, entry.chunk, entry.tag, entry.emitted_at)


def _free_bytes(directory: Path) -> int:
    """Bytes an unprivileged process may still write on the filesystem of ``directory``."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


@functools.lru_cache
def _empty_pages(page_size: int) -> int:
    """Pages of a spool database holding no chunk (its header, the table's and the index's roots)."""
    db = sqlite3.connect(":memory:")
    try:
        db.execute(f"PRAGMA page_size={page_size}")
        db.execute(_SCHEMA)
        return int(db.execute("PRAGMA page_count").fetchone()[0])
    finally:
        db.close()


def open_spool(directory: Any, max_bytes: int | None) -> MemorySpool:
    """A durable spool in ``directory``, or a memory one when it is None."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
        raise ConfigError("spool_max_bytes", max_bytes, "a positive number of bytes or None")
    return MemorySpool(max_bytes) if directory is None else SqliteSpool(directory, max_bytes)
