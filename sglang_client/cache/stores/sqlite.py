"""``SQLiteStore``: the embedded, on-disk default store (WAL mode, write-behind)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from sglang_client.cache.stores._common import (
    LocalKeyLock,
    check_key,
    check_limit,
    check_page,
    dump_completions,
    load_request,
)
from sglang_client.cache.stores._sqlite_schema import (
    database_path,
    is_read_only_failure,
    logger,
    open_database,
    open_read_only,
    read_page,
)
from sglang_client.cache.stores._sqlite_view import FileView, Record
from sglang_client.cache.stores._sqlite_writer import Clear, Delete, Flush, Put, SQLiteWriter
from sglang_client.cache.stores.base import (
    CacheEntry,
    StoreCounts,
    StoreError,
    StoreInfo,
    dump_json,
)

__all__ = ["SQLiteStore"]

_TOUCH_BATCH = 1024


class SQLiteStore:
    """Keep cache entries in a SQLite file: durable, bounded, and fast to open at any size.

    Reads are one primary-key lookup, done synchronously on the event loop: it costs ~10-25 us,
    where a hop to a worker thread costs ~150 us. Recently written, read and missed keys stay
    in a small in-process read cache (``read_cache_size`` entries).

    Writes are write-behind: ``append`` updates memory, queues the write and returns. One
    background thread commits queued writes in batches, one transaction each: a batch is
    taken ``flush_interval`` seconds (default 50 ms) after the first write that woke the
    thread, as soon as ``max_batch`` writes (default 256) are queued, or at once on
    ``flush()``/``clear()``/``count()``/``aclose()`` (and at interpreter exit). Reads see
    queued writes. **Durability window:** a crash (even ``kill -9``) never corrupts the file
    (WAL) and loses only writes not yet committed: at most those acknowledged in the last
    ``flush_interval`` plus the time of a commit or two (milliseconds). ``pending_writes == 0``
    (e.g. after ``flush()``) means everything acknowledged is on disk. An OS crash or power
    loss can also roll back the last commits (``synchronous=NORMAL``).

    Opening reads no entries: counts come from a stats row kept exact by triggers. LRU
    eviction (``max_entries``) uses each row's ``accessed_at``, which reads update lazily in a
    later batch; the ``accessed_at``/``updated_at`` indexes exist only once a store with
    ``max_entries``/``ttl`` opened the file (built then, once). One process should write a
    given file (another process's writes are not seen by this one's read cache, and may be
    overwritten); other processes may read it. ``lock()`` is an in-process lock (use
    ``RedisStore`` to coalesce across processes).

    Files are private: a directory the store creates is 0700 and the database (with its
    ``-wal`` and ``-shm``) 0600, whatever the umask; an existing file readable by others is
    left as it is, with one warning. On read-only media (or a file this process may not write)
    the store opens the database read-only and serves what it holds; ``read_only`` is then
    true and appends are dropped (one warning says so).

    Args:
        path: A database file (a name ending in ``.db``, ``.sqlite`` or ``.sqlite3``, or an
            existing file), or a directory (then ``<dir>/cache.db``: an existing directory, a
            path ending in ``/``, or any other name); ``~`` is expanded and missing
            directories are created on first use.
        ttl: Seconds after its last write at which an entry expires (``None``: never).
        max_entries: Keep at most this many keys, evicting the least recently used.
        flush_interval: Longest time (seconds) a write waits in the queue before its batch
            is committed.
        max_batch: Most writes committed in one transaction.
        read_cache_size: Clean entries kept in memory (0 disables; entries with queued writes
            are always kept until they commit).
        max_pending: Queued writes beyond which ``append`` raises ``StoreError`` rather than
            letting memory grow while the disk cannot keep up.
        busy_timeout: Seconds to wait for another connection's lock.

    Example:
        ```python
        store = SQLiteStore("~/.sglang_cache", ttl=7 * 86400, max_entries=1_000_000)
        await store.append(key, [completion], request=request)
        entry = await store.get(key)
        await store.aclose()  # flushes
        ```
    """

    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        ttl: float | None = None,
        max_entries: int | None = None,
        *,
        flush_interval: float = 0.05,
        max_batch: int = 256,
        read_cache_size: int = 1024,
        max_pending: int = 10_000,
        busy_timeout: float = 5.0,
    ) -> None:
        for name, value in (("ttl", ttl), ("max_entries", max_entries)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        if flush_interval < 0 or max_batch < 1 or read_cache_size < 0 or max_pending < 1:
            raise ValueError("flush_interval, read_cache_size >= 0; max_batch, max_pending >= 1")
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise ValueError(f"SQLiteStore needs a file or directory path, got {str(path)!r}")
        self.path: Path = database_path(path)
        self.location = str(self.path)
        self.read_only = False
        self._ttl = ttl
        self._max_entries = max_entries
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._read_cache_size = read_cache_size
        self._max_pending = max_pending
        self._busy_timeout = busy_timeout
        self._view: FileView | None = None
        self._closed = False
        self._open_lock = anyio.Lock()
        self._locks = LocalKeyLock()

    @property
    def info(self) -> StoreInfo:
        """One file on this machine; bounded by ``max_entries`` and ``ttl``."""
        path = str(self.path)
        return StoreInfo(self.kind, self.location, False, path, self._max_entries, None, self._ttl)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.location!r})"

    @property
    def healthy(self) -> bool:
        """Whether the writer's last commit succeeded (``True`` before any)."""
        return self._view is None or self._view.writer.last_commit_ok

    @property
    def pending_writes(self) -> int:
        """Writes acknowledged by ``append``/``delete``/``clear`` but not yet committed."""
        return 0 if self._view is None else self._view.pending

    async def get(self, key: str, *, limit: int | None = None) -> CacheEntry | None:
        """Return the entry for ``key`` (at most ``limit`` completions), or ``None``."""
        check_limit(limit)
        rec = await self._live(key)
        if rec is None or rec.completions is None:
            return None
        completions = json.loads(rec.completions)
        if limit is not None and limit < rec.n:
            del completions[limit:]
        return CacheEntry(
            key, load_request(rec.request), completions, rec.created_at, rec.updated_at
        )

    async def created_at(self, key: str) -> float | None:
        """When ``key``'s live entry was created, or ``None``; a use for LRU, nothing decoded."""
        rec = await self._live(key)
        return None if rec is None else rec.created_at

    async def _live(self, key: str) -> Record | None:
        """The live record of ``key`` (``None`` if absent or expired), counted as a use."""
        check_key(key)
        view = self._view or await self._open()
        rec = view.lookup(key)
        if rec is None or rec.completions is None:
            return None
        if self._max_entries is not None and not self.read_only:
            # LRU needs reads to count; they reach the file lazily, with the next batch.
            touched = view.writer.touched
            touched[key] = time.time()
            if len(touched) == _TOUCH_BATCH:
                view.writer.queue.put(Flush())
        return rec

    async def append(
        self,
        key: str,
        completions: Sequence[Mapping[str, Any]],
        *,
        request: Mapping[str, Any] | None = None,
    ) -> int:
        """Append ``completions`` to ``key``'s entry, creating it if absent; return the count.

        Raises:
            StoreError: A value is not JSON, the queue is full, or an earlier batch failed
                (reported once, by the next ``append`` or ``flush``).
        """
        check_key(key)
        texts = dump_completions(completions)
        request_text = None if request is None else dump_json(request, "the request")
        view = self._view or await self._open()
        if self.read_only:
            rec = view.lookup(key)  # nothing can be stored: said once, when it opened
            return 0 if rec is None or rec.completions is None else rec.n
        view.check_writable(self._max_pending)
        rec = view.lookup(key)
        now = time.time()
        if rec is None or rec.completions is None:
            array = "[" + ",".join(texts) + "]"
            rec = Record(request_text, array, len(texts), now, now)
            is_new = True
        else:
            array = rec.completions
            if texts:
                array = (array[:-1] + "," if rec.n else "[") + ",".join(texts) + "]"
                rec.completions = array
            rec.n += len(texts)
            rec.updated_at = now
            if rec.request is None:
                rec.request = request_text
            is_new = False
        seq = view.mark_dirty(key, rec)
        writer = view.writer
        writer.queue.put(Put(seq, key, rec.request, array, rec.n, rec.created_at, now, is_new))
        if view.pending >= self._max_batch:
            writer.wake.set()
        return rec.n

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        check_key(key)
        view = self._view or await self._open()
        self._refuse_if_read_only("delete an entry")
        view.check_writable(self._max_pending)
        rec = view.lookup(key)
        if rec is None or rec.completions is None:
            return False
        seq = view.mark_dirty(key, Record(None, None, 0, 0.0, 0.0))
        view.writer.queue.put(Delete(seq, key))
        return True

    async def clear(self) -> int:
        """Delete every entry in the file; return how many live ones there were."""
        view = self._view or await self._open()
        self._refuse_if_read_only("clear it")
        op = Clear(view.begin_clear())
        view.writer.urgent(op)
        await view.wait(op.done)
        if op.error is not None:
            view.writer.error = None
            raise StoreError(f"clearing {self.location} failed: {op.error}") from op.error
        return op.result

    async def count(self) -> StoreCounts:
        """Commit queued writes, drop expired rows, and return ``(num_keys, total_responses)``."""
        return (await self._flushed(sweep=True)).counts()

    async def iter_entries(self, *, offset: int = 0, limit: int = 100) -> list[CacheEntry]:
        """Return one page of live entries in creation order (O(offset); for inspection)."""
        check_page(offset, limit)
        await self._flushed(sweep=False)
        cutoff = -1.0 if self._ttl is None else time.time() - self._ttl
        try:
            rows = await anyio.to_thread.run_sync(
                read_page, self.path, self._busy_timeout, cutoff, limit, offset, self.read_only
            )
        except sqlite3.Error as exc:
            raise StoreError(f"listing {self.location} failed: {exc}") from exc
        return [
            CacheEntry(key, load_request(request), json.loads(completions), created, updated)
            for key, request, completions, created, updated in rows
        ]

    async def flush(self) -> None:
        """Commit every queued write; raise ``StoreError`` if a batch since the last call failed."""
        await self._flushed(sweep=False)

    def lock(
        self, key: str, *, ttl: float = 30.0, timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold an in-process lock on ``key`` (``ttl`` only sets the default ``timeout``)."""
        check_key(key)
        return self._locks.hold(key, ttl if timeout is None else timeout)

    async def aclose(self) -> None:
        """Commit queued writes, stop the writer thread and close the database.

        Raises:
            StoreError: The final commit failed (the store is closed all the same).
        """
        if self._closed:
            return
        self._closed = True
        view, self._view = self._view, None
        if view is None:
            return
        writer = view.writer
        writer.stop()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.join)
        view.reader.close()
        error = writer.error or writer.crash
        if error is not None:
            raise StoreError(f"final write to {self.location} failed: {error}") from error

    async def _open(self) -> FileView:
        async with self._open_lock:
            if self._closed:
                raise StoreError(f"SQLiteStore({self.location!r}) is closed")
            if self._view is None:
                conn, reader = await self._connect()
                # Read-only: no eviction or expiry sweeps, which would write.
                writable = not self.read_only
                writer = SQLiteWriter(
                    conn,
                    flush_interval=self._flush_interval,
                    max_batch=self._max_batch,
                    max_entries=self._max_entries if writable else None,
                    ttl=self._ttl if writable else None,
                )
                writer.start()
                self._view = FileView(
                    reader, writer, self._ttl, self._read_cache_size, self.location
                )
            return self._view

    async def _connect(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """(writer, reader) connections; read-only ones if the file cannot be written."""
        lru, ttl = self._max_entries is not None, self._ttl is not None
        try:
            return await anyio.to_thread.run_sync(
                open_database, self.path, self._busy_timeout, lru, ttl
            )
        except (sqlite3.Error, OSError) as exc:
            failure = exc
        if self.path.is_file() and is_read_only_failure(failure):
            try:
                # Two connections, as when writable: one for the writer thread, one for reads.
                conn = await anyio.to_thread.run_sync(open_read_only, self.path, self._busy_timeout)
                reader = await anyio.to_thread.run_sync(
                    open_read_only, self.path, self._busy_timeout
                )
            except (sqlite3.Error, OSError):
                pass
            else:
                self.read_only = True
                logger.warning(
                    "cache database %s is read-only (%s): serving what it holds, storing nothing"
                    " new",
                    self.location,
                    failure,
                )
                return conn, reader
        raise StoreError(f"cannot open cache database {self.location}: {failure}") from failure

    def _refuse_if_read_only(self, action: str) -> None:
        if self.read_only:
            raise StoreError(f"cannot {action}: {self.location} is read-only")

    async def _flushed(self, *, sweep: bool) -> FileView:
        view = self._view or await self._open()
        op = Flush(sweep)
        view.writer.urgent(op)
        await view.wait(op.done)
        view.raise_failure()
        return view
