"""The event loop's picture of a SQLite cache: the file as committed, plus queued writes.

Invariant: a key held in ``FileView.hot`` is authoritative (its record is the file's row plus
every queued write); a key not held there has no queued writes, so the file is. A record with
``seq`` above the writer's ``committed_seq`` has queued writes, so it is never dropped until
they commit. This keeps reads correct (read-your-writes) with no lock shared with the writer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict

import anyio

from sglang_client.cache.stores._sqlite_schema import GET_ENTRY
from sglang_client.cache.stores._sqlite_writer import SQLiteWriter
from sglang_client.cache.stores.base import StoreError

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


class FileView:
    """Look entries up through the read cache, the queued writes and the file, in that order.

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
        self.hot: OrderedDict[str, Record] = OrderedDict()
        self.seq = 0
        self._clear_seq = 0
        self._ttl = ttl
        self._read_cache_size = read_cache_size
        self._location = location

    @property
    def pending(self) -> int:
        """Queued operations not yet committed (or failed)."""
        return self.seq - self.writer.committed_seq

    def next_seq(self) -> int:
        """Number the next queued operation."""
        self.seq += 1
        return self.seq

    def begin_clear(self) -> int:
        """Forget everything: until the clear commits, rows read from the file are pre-clear."""
        self._clear_seq = self.next_seq()
        self.hot.clear()
        return self._clear_seq

    def lookup(self, key: str) -> Record | None:
        """Return ``key``'s record (possibly a delete marker), or ``None`` if absent/expired."""
        hot, writer = self.hot, self.writer
        invalidated = writer.invalidated
        while invalidated:
            stale_key = invalidated.popleft()
            stale = hot.get(stale_key)
            # Read committed_seq after the key: the writer advances it before publishing keys.
            if stale is not None and stale.seq <= writer.committed_seq:
                del hot[stale_key]
        committed = writer.committed_seq
        rec = hot.get(key)
        ttl = self._ttl
        if rec is not None:
            live = ttl is None or rec.completions is None or time.time() - rec.updated_at <= ttl
            if not live:
                if rec.seq <= committed:
                    del hot[key]
                return None
            hot.move_to_end(key)
            return rec
        if self._clear_seq > committed:
            return None
        try:
            rows = self.reader.execute(GET_ENTRY, (key,)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading {self._location} failed: {exc}") from exc
        if not rows:
            return None
        rec = Record(*rows[0])
        if ttl is not None and time.time() - rec.updated_at > ttl:
            return None
        self.remember(key, rec)
        return rec

    def remember(self, key: str, rec: Record) -> None:
        """Hold ``rec`` as the most recently used, then trim the read cache."""
        hot = self.hot
        hot[key] = rec
        hot.move_to_end(key)
        excess = len(hot) - self._read_cache_size
        if excess > 0:
            committed = self.writer.committed_seq
            for _ in range(excess + 32):
                old_key, old = hot.popitem(last=False)
                if old.seq > committed:
                    hot[old_key] = old  # it has queued writes, so it is newer than the file
                else:
                    excess -= 1
                    if not excess:
                        break

    def raise_failure(self) -> None:
        """Raise ``StoreError`` if the writer died, or (once) if a batch failed."""
        writer = self.writer
        if not writer.is_alive():
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
            if not self.writer.is_alive():
                self.raise_failure()
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.01)
