"""The SQLite store's single writer thread (the write-behind queue).

The event loop never writes: it puts operations on ``SQLiteWriter.queue`` and goes on. The
first operation after a quiet spell wakes the thread, which then sleeps ``flush_interval``
(unless ``wake`` is set: by a flush, a clear, stop, or a full batch), takes up to
``max_batch`` queued operations, applies them in ONE transaction and advances
``committed_seq``. While it sleeps, queueing costs the loop no thread switch. Each put
carries an entry's full state, so the last put of a key in a batch is the only one written.
"""

from __future__ import annotations

import atexit
import queue
import sqlite3
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Clear", "Delete", "Flush", "Put", "SQLiteWriter"]

_INSERT = (
    "INSERT OR REPLACE INTO entries"
    " (key, request, completions, n, created_at, updated_at, accessed_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# New rows go in with one multi-row INSERT per chunk: the sqlite3 module releases the GIL on
# every statement step, and a step per row made the writer and the event loop trade the GIL
# ~3 times per cached response (thread switches cost more than the rows' own SQLite work).
# 128 rows x 7 values stays under SQLite's oldest limit of 999 bound variables.
_INSERT_CHUNK = 128
_INSERT_MANY = {
    rows: _INSERT + ", (?, ?, ?, ?, ?, ?, ?)" * (rows - 1) for rows in range(1, _INSERT_CHUNK + 1)
}
_UPDATE = (
    "UPDATE entries SET request = ?, completions = ?, n = ?, created_at = ?, updated_at = ?,"
    " accessed_at = ? WHERE key = ?"
)
_TOUCH = "UPDATE entries SET accessed_at = ? WHERE key = ? AND accessed_at < ?"


@dataclass(slots=True)
class Put:
    """Write an entry's full state (``is_new``: replace any older row with a fresh one)."""

    seq: int
    key: str
    request: str | None
    completions: str
    n: int
    created_at: float
    updated_at: float
    is_new: bool


@dataclass(slots=True)
class Delete:
    """Delete one entry."""

    seq: int
    key: str


@dataclass(slots=True)
class Flush:
    """Commit now (optionally dropping expired rows first) and set ``done``."""

    sweep: bool = False
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class Clear:
    """Delete every entry; ``result`` is how many live ones there were."""

    seq: int
    done: threading.Event = field(default_factory=threading.Event)
    result: int = 0
    error: BaseException | None = None


_STOP = object()
_Op = Put | Delete | Flush | Clear | object


class SQLiteWriter(threading.Thread):
    """The only thread that writes the database; see the module docstring.

    The event loop reads ``committed_seq`` (every op with a seq at or below it is done, written
    or failed), drains ``invalidated`` (keys whose rows were evicted or whose writes failed),
    consumes ``error`` and records reads in ``touched`` (key -> time, written lazily as LRU
    ``accessed_at``).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        flush_interval: float,
        max_batch: int,
        max_entries: int | None,
        ttl: float | None,
    ) -> None:
        super().__init__(name="sglang-cache-sqlite-writer", daemon=True)
        self.queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.running = True
        self.committed_seq = 0
        self.invalidated: deque[str] = deque()
        self.touched: dict[str, float] = {}
        self.error: BaseException | None = None
        self.crash: BaseException | None = None
        self.last_commit_ok = True
        self._conn = conn
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._max_entries = max_entries
        self._ttl = ttl
        self._next_sweep = 0.0
        _LIVE_WRITERS.add(self)

    def urgent(self, op: _Op) -> None:
        """Queue ``op`` and commit without waiting out the interval."""
        self.queue.put(op)
        self.wake.set()

    def stop(self) -> None:
        """Ask the thread to write what is queued, close its connection and exit."""
        self.urgent(_STOP)

    def run(self) -> None:
        try:
            stopping = False
            while not stopping:
                batch = [self.queue.get()]
                if batch[0] is _STOP or isinstance(batch[0], (Flush, Clear)):
                    self.wake.set()
                self.wake.wait(self._flush_interval)
                self.wake.clear()
                stopping = self._collect(batch)
                self._apply(batch)
        except BaseException as exc:  # recorded so the event loop can report why writes stop
            self.crash = exc
        finally:
            self.running = False
            self._conn.close()

    def _collect(self, batch: list[_Op]) -> bool:
        """Take what is queued (up to a batch); return whether a stop request came."""
        take = self.queue.get_nowait
        try:
            # A clear ends its batch: what was queued after it must be written after it.
            while len(batch) < self._max_batch and not isinstance(batch[-1], Clear):
                if batch[-1] is _STOP:
                    break
                batch.append(take())
        except queue.Empty:
            pass
        if batch[-1] is _STOP:
            batch.pop()
            return True
        if len(batch) >= self._max_batch:
            self.wake.set()  # more may be waiting: do not sleep before the next batch
        return False

    def _apply(self, batch: list[_Op]) -> None:
        final: dict[str, Put | Delete] = {}
        flushes: list[Flush] = []
        clear: Clear | None = None
        max_seq = 0
        for op in batch:
            if isinstance(op, Put):
                # Keep rowid order = creation order: a row is inserted where it was created.
                prev = final.get(op.key)
                if isinstance(prev, Put) and prev.is_new:
                    op.is_new = True
                elif op.is_new:
                    final.pop(op.key, None)
                final[op.key] = op
                max_seq = op.seq
            elif isinstance(op, Delete):
                final[op.key] = op
                max_seq = op.seq
            elif isinstance(op, Flush):
                flushes.append(op)
            elif isinstance(op, Clear):
                clear, max_seq = op, op.seq
        touched, self.touched = self.touched, {}
        touches = [(at, key, at) for key, at in list(touched.items())]
        sweep = self._ttl is not None and (
            any(f.sweep for f in flushes)
            or clear is not None
            or time.monotonic() >= self._next_sweep
        )
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                stale = self._write(final, touches, clear, sweep)
                conn.execute("COMMIT")
                self.last_commit_ok = True
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            self.error = exc
            self.last_commit_ok = False
            if clear is not None:
                clear.error = exc
            stale = list(final)
        # committed_seq first: the loop reads it after taking a key from invalidated.
        if max_seq:
            self.committed_seq = max_seq
        self.invalidated.extend(stale)
        for flush in flushes:
            flush.done.set()
        if clear is not None:
            clear.done.set()

    def _write(
        self,
        final: dict[str, Put | Delete],
        touches: list[tuple[float, str, float]],
        clear: Clear | None,
        sweep: bool,
    ) -> list[str]:
        conn = self._conn
        fresh: list[Any] = []  # values of new rows not yet inserted, in creation order

        def insert_fresh() -> None:
            for start in range(0, len(fresh), 7 * _INSERT_CHUNK):
                values = fresh[start : start + 7 * _INSERT_CHUNK]
                conn.execute(_INSERT_MANY[len(values) // 7], values)
            fresh.clear()

        for key, op in final.items():
            if isinstance(op, Put) and op.is_new:
                # A new entry replaces any old row (a fresh rowid keeps rowid order = creation
                # order, so rows queued before any other kind of write go in first).
                fresh += (key, op.request, op.completions, op.n)
                fresh += (op.created_at, op.updated_at, op.updated_at)
                continue
            insert_fresh()
            if isinstance(op, Delete):
                conn.execute("DELETE FROM entries WHERE key = ?", (key,))
                continue
            row = (op.request, op.completions, op.n, op.created_at, op.updated_at, op.updated_at)
            if not conn.execute(_UPDATE, (*row, key)).rowcount:
                conn.execute(_INSERT, (key, *row))
        insert_fresh()
        if touches:
            conn.executemany(_TOUCH, touches)
        if sweep and self._ttl is not None:
            conn.execute("DELETE FROM entries WHERE updated_at < ?", (time.time() - self._ttl,))
            self._next_sweep = time.monotonic() + min(max(self._ttl / 2, 1.0), 60.0)
        if clear is not None:
            clear.result = conn.execute("SELECT num_keys FROM stats").fetchall()[0][0]
            conn.execute("DELETE FROM entries")
        if self._max_entries is None:
            return []
        num_keys = conn.execute("SELECT num_keys FROM stats").fetchall()[0][0]
        excess = num_keys - self._max_entries
        if excess <= 0:
            return []
        victims = [
            row[0]
            for row in conn.execute(
                "SELECT key FROM entries ORDER BY accessed_at LIMIT ?", (excess,)
            ).fetchall()
        ]
        conn.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in victims])
        return victims


_LIVE_WRITERS: weakref.WeakSet[SQLiteWriter] = weakref.WeakSet()


@atexit.register
def _drain_writers_at_exit() -> None:
    # A store the program forgot to aclose() still gets its acknowledged writes committed.
    for writer in list(_LIVE_WRITERS):
        if writer.is_alive():
            writer.stop()
            writer.join(timeout=5.0)
