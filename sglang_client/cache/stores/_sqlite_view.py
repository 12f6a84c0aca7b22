"""The event loop's picture of a SQLite cache: the file as committed, plus queued writes.

Records with queued writes live in ``_dirty`` (each is the file's row plus every queued
write, so it is authoritative) until ``committed_seq`` passes their ``seq``; then they move to
``_hot``, a bounded LRU of clean records (rows the file holds, or known misses). A key in
neither has no queued writes, so the file is authoritative. This keeps reads correct
(read-your-writes) with no lock shared with the writer thread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict, deque

import anyio

from sglang_client.cache.stores._sqlite_schema import GET_ENTRY
from sglang_client.cache.stores._sqlite_writer import SQLiteWriter
from sglang_client.cache.stores.base import StoreCounts, StoreError

__all__ = ["FileView", "Record"]


class Record:
    """An entry as the loop sees it; ``completions`` is its JSON array text, ``None`` if deleted."""

    __slots__ = ("completions", "created_at", "n", "request", "seq", "updated_at")

    def __init__(
        self,
        request: str | None,
        completions: str | None,
        n: int,
        created_at: float,
        updated_at: float,
        seq: int = 0,
    ) -> None:
        self.request = request
        self.completions = completions
        self.n = n
        self.created_at = created_at
        self.updated_at = updated_at
        self.seq = seq


_ABSENT = Record(None, None, 0, 0.0, 0.0)


class FileView:
    """Look entries up in the queued writes, the read cache, then the file.

    Args:
        reader: A read-only connection, used synchronously from the event loop's thread.
        writer: The thread that owns the writes.
        ttl: Seconds after its last write at which an entry reads as absent.
        read_cache_size: Records kept beyond those with queued writes.
        location: For error messages.
    """

    def __init__(
        self,
        reader: sqlite3.Connection,
        writer: SQLiteWriter,
        ttl: float | None,
        read_cache_size: int,
        location: str,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.seq = 0
        self._dirty: dict[str, Record] = {}
        self._dirty_order: deque[tuple[int, str]] = deque()
        self._hot: OrderedDict[str, Record] = OrderedDict()
        self._clear_seq = 0
        self._ttl = ttl
        self._read_cache_size = read_cache_size
        self._location = location

    @property
    def pending(self) -> int:
        """Queued operations not yet committed (or failed)."""
        return self.seq - self.writer.committed_seq

    def begin_clear(self) -> int:
        """Forget everything: until the clear commits, rows read from the file are pre-clear."""
        self.seq += 1
        self._clear_seq = self.seq
        self._hot.clear()
        self._dirty.clear()
        self._dirty_order.clear()
        return self.seq

    def mark_dirty(self, key: str, rec: Record) -> int:
        """Hold ``rec`` (new state, or a delete marker) until its write commits; return its seq."""
        self.seq += 1
        rec.seq = self.seq
        self._hot.pop(key, None)
        self._dirty[key] = rec
        self._dirty_order.append((self.seq, key))
        return self.seq

    def lookup(self, key: str) -> Record | None:
        """Return ``key``'s record (possibly a delete marker), or ``None`` if absent/expired."""
        self._settle()
        rec = self._dirty.get(key)
        if rec is None:
            rec = self._hot.get(key)
            if rec is not None:
                self._hot.move_to_end(key)
        ttl = self._ttl
        if rec is not None:
            expired = ttl is not None and time.time() - rec.updated_at > ttl
            return None if expired and rec.completions is not None else rec
        if self._clear_seq > self.writer.committed_seq:
            return None
        try:
            rows = self.reader.execute(GET_ENTRY, (key,)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading {self._location} failed: {exc}") from exc
        rec = Record(*rows[0]) if rows else None
        if rec is None or (ttl is not None and time.time() - rec.updated_at > ttl):
            # Remember the miss: a miss is usually followed by an append of the same key.
            self.remember(key, _ABSENT)
            return None
        self.remember(key, rec)
        return rec

    def remember(self, key: str, rec: Record) -> None:
        """Cache a clean record (one the file holds) as the most recently used."""
        hot = self._hot
        hot[key] = rec
        hot.move_to_end(key)
        while len(hot) > self._read_cache_size:
            hot.popitem(last=False)

    def _settle(self) -> None:
        """Move records whose writes committed to the read cache; drop invalidated keys."""
        writer, dirty, order = self.writer, self._dirty, self._dirty_order
        committed = writer.committed_seq
        while order and order[0][0] <= committed:
            seq, key = order.popleft()
            rec = dirty.get(key)
            if rec is not None and rec.seq == seq:  # no later write of this key is queued
                del dirty[key]
                self.remember(key, rec)
        invalidated = writer.invalidated
        while invalidated:
            key = invalidated.popleft()
            self._hot.pop(key, None)
            rec = dirty.get(key)
            # Read committed_seq after the key: the writer advances it before publishing keys.
            if rec is not None and rec.seq <= writer.committed_seq:
                del dirty[key]

    def counts(self) -> StoreCounts:
        """Read ``(num_keys, total_responses)`` from the stats row (committed writes only)."""
        try:
            row = self.reader.execute("SELECT num_keys, total_responses FROM stats").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading cache stats from {self._location} failed: {exc}") from exc
        return StoreCounts(*row[0])

    def raise_failure(self) -> None:
        """Raise ``StoreError`` if the writer died, or (once) if a batch failed."""
        writer = self.writer
        if not writer.running:
            crash = writer.crash
            raise StoreError(f"the writer thread for {self._location} stopped: {crash}") from crash
        error = writer.error
        if error is not None:
            writer.error = None
            raise StoreError(f"writing {self._location} failed: {error}") from error

    def check_writable(self, max_pending: int) -> None:
        """Raise ``StoreError`` as ``raise_failure`` does, or if the queue is full."""
        self.raise_failure()
        if self.pending >= max_pending:
            raise StoreError(f"{self.pending} writes are queued for {self._location}; dropped")

    async def wait(self, done: threading.Event) -> None:
        """Wait until the writer sets ``done``."""
        # Polling keeps this backend-agnostic and cancellable without parking a worker thread.
        delay = 0.0005
        while not done.is_set():
            if not self.writer.running:
                self.raise_failure()
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.01)
