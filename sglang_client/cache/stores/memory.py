"""``MemoryStore``: an in-process LRU store, bounded by entries, bytes and age."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

from sglang_client.cache.stores._common import (
    LocalKeyLock,
    check_key,
    check_limit,
    check_page,
    dump_completions,
    load_completions,
    load_request,
)
from sglang_client.cache.stores.base import (
    CacheEntry,
    StoreCounts,
    StoreError,
    StoreInfo,
    dump_json,
)

__all__ = ["MemoryStore"]


# An entry is a plain tuple (request, completions, created_at, updated_at, written, order,
# size), replaced on every write: the garbage collector stops tracking a tuple of strings and
# numbers (not a tuple subclass, nor an object), so a million entries add nothing to its full
# scans. As objects they made each full scan take ~0.3 s.
_Entry = tuple[str | None, tuple[str, ...], float, float, float, int, int]
_REQUEST: Final = 0
_COMPLETIONS: Final = 1
_CREATED: Final = 2
_UPDATED: Final = 3
_WRITTEN: Final = 4  # monotonic time of the last write, for the TTL
_ORDER: Final = 5  # creation order
_SIZE: Final = 6  # bytes of JSON text


class MemoryStore:
    """Keep cache entries in this process's memory, evicting the least recently used.

    ``get`` and ``append`` are O(1) (plus the JSON work on the values themselves). Entries are
    kept as JSON text, so ``max_bytes`` bounds the size of that text exactly, and every read
    returns fresh objects. Nothing survives the process. ``lock()`` is an in-process lock.

    Args:
        max_entries: Keep at most this many keys (``None``: unbounded).
        max_bytes: Keep at most this many bytes of JSON text (requests plus completions). An
            entry bigger than the whole budget is evicted right after it is written.
        ttl: Seconds after its last write at which an entry expires (``None``: never).

    Example:
        ```python
        store = MemoryStore(max_entries=10_000, ttl=3600)
        await store.append(key, [completion], request=request)
        entry = await store.get(key)
        ```
    """

    kind = "memory"
    healthy = True  # nothing to fail: a write that returns is in memory
    location = ":memory:"

    def __init__(
        self,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        ttl: float | None = None,
    ) -> None:
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes), ("ttl", ttl)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # Keys by last write, oldest first: expired entries are always at the front.
        self._by_write: OrderedDict[str, None] = OrderedDict()
        self._bytes = 0
        self._total = 0
        self._order = 0
        self._closed = False
        self._locks = LocalKeyLock()

    @property
    def info(self) -> StoreInfo:
        """In this process only; bounded by ``max_entries``, ``max_bytes`` and ``ttl``."""
        return StoreInfo(
            self.kind, self.location, False, None, self._max_entries, self._max_bytes, self._ttl
        )

    def __repr__(self) -> str:
        return f"MemoryStore(entries={len(self._entries)}, bytes={self._bytes})"

    @property
    def pending_writes(self) -> int:
        """Always 0: every write is complete when ``append`` returns."""
        return 0

    async def get(self, key: str, *, limit: int | None = None) -> CacheEntry | None:
        """Return the entry for ``key`` (at most ``limit`` completions), or ``None``."""
        self._check_open()
        check_key(key)
        check_limit(limit)
        entry = self._live(key)
        if entry is None:
            return None
        return CacheEntry(
            key,
            load_request(entry[_REQUEST]),
            load_completions(entry[_COMPLETIONS], limit),
            entry[_CREATED],
            entry[_UPDATED],
        )

    async def created_at(self, key: str) -> float | None:
        """When ``key``'s live entry was created, or ``None``; a use for LRU, nothing decoded.

        Entries only grow, so an unchanged ``created_at`` means the first completions are the
        same ones: the proxy's memo of encoded hits checks this on every use.
        """
        self._check_open()
        entry = self._live(key)
        return None if entry is None else entry[_CREATED]

    def _live(self, key: str) -> _Entry | None:
        """The unexpired entry of ``key``, marked as just used; an expired one is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._ttl is not None and time.monotonic() - entry[_WRITTEN] > self._ttl:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    async def append(
        self,
        key: str,
        completions: Sequence[Mapping[str, Any]],
        *,
        request: Mapping[str, Any] | None = None,
    ) -> int:
        """Append ``completions`` to ``key``'s entry, creating it if absent; return the count."""
        self._check_open()
        check_key(key)
        texts = dump_completions(completions)
        request_text = None if request is None else dump_json(request, "the request")
        now, mono = time.time(), time.monotonic()
        if self._ttl is not None:
            self._purge_expired(mono)
        added = sum(map(len, texts))
        old = self._entries.get(key)
        entry: _Entry
        if old is None:
            self._order += 1
            size = added + (0 if request_text is None else len(request_text))
            entry = (request_text, tuple(texts), now, now, mono, self._order, size)
        else:
            self._entries.move_to_end(key)
            size = old[_SIZE] + added
            if old[_REQUEST] is None and request_text is not None:
                size += len(request_text)
            else:
                request_text = old[_REQUEST]
            stored = old[_COMPLETIONS] + tuple(texts)
            entry = (request_text, stored, old[_CREATED], now, mono, old[_ORDER], size)
        self._entries[key] = entry
        self._bytes += size - (0 if old is None else old[_SIZE])
        self._total += len(texts)
        if self._ttl is not None:
            self._by_write[key] = None
            self._by_write.move_to_end(key)
        count = len(entry[_COMPLETIONS])
        self._evict()
        return count

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed (an expired entry did not)."""
        self._check_open()
        check_key(key)
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._remove(key)
        return self._ttl is None or time.monotonic() - entry[_WRITTEN] <= self._ttl

    async def clear(self) -> int:
        """Delete every entry; return how many live ones there were."""
        self._check_open()
        if self._ttl is not None:
            self._purge_expired(time.monotonic())
        removed = len(self._entries)
        self._entries.clear()
        self._by_write.clear()
        self._bytes = self._total = 0
        return removed

    async def count(self) -> StoreCounts:
        """Return ``(num_keys, total_responses)`` of the live entries, in O(expired)."""
        self._check_open()
        if self._ttl is not None:
            self._purge_expired(time.monotonic())
        return StoreCounts(len(self._entries), self._total)

    async def iter_entries(self, *, offset: int = 0, limit: int = 100) -> list[CacheEntry]:
        """Return one page of live entries, oldest first; does not count as use for LRU."""
        self._check_open()
        check_page(offset, limit)
        if self._ttl is not None:
            self._purge_expired(time.monotonic())
        ordered = sorted(self._entries.items(), key=lambda item: item[1][_ORDER])
        return [
            CacheEntry(
                key,
                load_request(entry[_REQUEST]),
                load_completions(entry[_COMPLETIONS], None),
                entry[_CREATED],
                entry[_UPDATED],
            )
            for key, entry in ordered[offset : offset + limit]
        ]

    async def flush(self) -> None:
        """Do nothing: memory has no write-behind queue."""
        self._check_open()

    def lock(
        self, key: str, *, ttl: float = 30.0, timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold an in-process lock on ``key`` (``ttl`` only sets the default ``timeout``)."""
        check_key(key)
        return self._locks.hold(key, ttl if timeout is None else timeout)

    async def aclose(self) -> None:
        """Drop every entry; later calls raise ``StoreError``."""
        self._closed = True
        self._entries.clear()
        self._by_write.clear()
        self._bytes = self._total = 0

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("MemoryStore is closed")

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._by_write.pop(key, None)
        self._bytes -= entry[_SIZE]
        self._total -= len(entry[_COMPLETIONS])

    def _purge_expired(self, now: float) -> None:
        assert self._ttl is not None
        by_write, entries, cutoff = self._by_write, self._entries, now - self._ttl
        while by_write:
            key = next(iter(by_write))
            if entries[key][_WRITTEN] > cutoff:
                break
            self._remove(key)

    def _evict(self) -> None:
        max_entries, max_bytes = self._max_entries, self._max_bytes
        while self._entries and (
            (max_entries is not None and len(self._entries) > max_entries)
            or (max_bytes is not None and self._bytes > max_bytes)
        ):
            self._remove(next(iter(self._entries)))
