"""The contract every cache store meets: ``CacheStore``, ``CacheEntry`` and ``StoreError``.

A cache KEY (the 64-hex SHA-256 the cache computes elsewhere) maps to an ENTRY: the canonical
``request`` that produced it (kept for export and inspection) and an ordered list of
``completions``, each one completion as SGLang returned it. The cache reads with ``get`` and
tops an entry up with ``append``; nothing ever rewrites a completion.

Values are JSON: stores keep compact JSON text (never pickle) and hand back fresh dicts on every
read, so a caller may mutate what it got without touching the cache.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from sglang_client.errors import SGLangError

__all__ = [
    "CacheEntry",
    "CacheStore",
    "JSONObject",
    "LockTimeoutError",
    "StoreCounts",
    "StoreDefaults",
    "StoreError",
    "StoreInfo",
    "dump_json",
]

JSONObject = dict[str, Any]
"""A decoded JSON object, as ``json.loads`` returns it."""

# ensure_ascii keeps the text pure ASCII, so len(text) is exactly its size in bytes.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class StoreError(SGLangError):
    """A cache store failed (I/O, database, network, or a value that is not JSON).

    ``CachedClient`` catches it and degrades to a cache miss; the request still succeeds.
    """


class LockTimeoutError(StoreError, TimeoutError):
    """``CacheStore.lock`` could not acquire the key's lock within its timeout."""


@dataclass(slots=True)
class CacheEntry:
    """One cached key: the request that produced it and its completions, oldest first.

    Attributes:
        key: The cache key.
        request: The canonical request (a JSON object), or ``None`` if none was stored.
        completions: The completions (JSON objects) in the order they were appended.
        created_at: When the entry was created (epoch seconds).
        updated_at: When completions were last appended (epoch seconds).
    """

    key: str
    request: JSONObject | None
    completions: list[JSONObject]
    created_at: float
    updated_at: float


class StoreCounts(NamedTuple):
    """What a store holds: ``(num_keys, total_responses)``."""

    num_keys: int
    total_responses: int


@dataclass(frozen=True)
class StoreInfo:
    """What a store is and can do, for the layers above it (locking, ``/cache/info``).

    Attributes:
        kind: ``"memory"``, ``"sqlite"``, ``"redis"``, or a new store's own name.
        location: where it keeps entries, safe to show (no password).
        shared: other processes write to it too, so coalescing needs its cross-process
            ``lock`` (an in-process store is serialised by the cache's own locks).
        path: a file on this machine holding it (its size is reported), if any.
        max_entries: the entry bound it evicts at, if any.
        max_bytes: the byte bound it evicts at, if any.
        ttl: seconds an entry lives after its last write, if bounded.
    """

    kind: str
    location: str
    shared: bool = False
    path: str | None = None
    max_entries: int | None = None
    max_bytes: int | None = None
    ttl: float | None = None


@runtime_checkable
class CacheStore(Protocol):
    """An async key -> entry store with atomic append; see the module docstring.

    Every method raises ``StoreError`` (never a backend exception) when the store fails, and
    ``ValueError`` for arguments that can never work (an empty key, a negative limit).
    TTL counts from an entry's last write; an expired entry reads as absent.
    """

    kind: str
    """``"memory"``, ``"sqlite"`` or ``"redis"``."""
    location: str
    """``":memory:"``, the database path, or the Redis URL with its password masked."""

    @property
    def info(self) -> StoreInfo:
        """What the store is and can do (``StoreDefaults`` gives kind and location only)."""
        ...

    async def created_at(self, key: str) -> float | None:
        """When ``key``'s entry was created (``None``: absent), reading as little as possible.

        Entries only grow, so the same ``created_at`` means the same first completions.
        """
        ...

    async def get(self, key: str, *, limit: int | None = None) -> CacheEntry | None:
        """Return the entry for ``key`` (at most ``limit`` completions), or ``None``."""
        ...

    async def append(
        self,
        key: str,
        completions: Sequence[Mapping[str, Any]],
        *,
        request: Mapping[str, Any] | None = None,
    ) -> int:
        """Append ``completions`` atomically, creating the entry (with ``request``) if absent.

        Returns:
            The entry's new number of completions.
        """
        ...

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        ...

    async def clear(self) -> int:
        """Delete every entry of this store (only its own); return how many there were."""
        ...

    async def count(self) -> StoreCounts:
        """Return ``(num_keys, total_responses)``. May be O(N); for stats, not the hot path."""
        ...

    async def iter_entries(self, *, offset: int = 0, limit: int = 100) -> list[CacheEntry]:
        """Return one page of entries in creation order (oldest first)."""
        ...

    async def flush(self) -> None:
        """Make every acknowledged write durable (a no-op for stores without write-behind)."""
        ...

    @property
    def pending_writes(self) -> int:
        """Writes acknowledged but not yet durable."""
        ...

    @property
    def healthy(self) -> bool:
        """Whether the last write reached the store (``False`` while writes keep failing).

        For a write-behind store, the last commit; for the others, the last write call.
        """
        ...

    def lock(
        self, key: str, *, ttl: float = 30.0, timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold a mutual-exclusion lock on ``key`` for the duration of an ``async with``.

        Args:
            key: The cache key to lock.
            ttl: Seconds after which a lock whose holder vanished frees itself (Redis).
            timeout: Seconds to wait for the lock (default: ``ttl``); then
                ``LockTimeoutError``.
        """
        ...

    async def aclose(self) -> None:
        """Flush and release resources; later calls raise ``StoreError``."""
        ...


class StoreDefaults:
    """What a store may inherit instead of writing: ``info`` from its ``kind`` and
    ``location`` (not shared, no bounds), and ``created_at`` through ``get(limit=0)``."""

    kind: str
    location: str

    @property
    def info(self) -> StoreInfo:
        """Kind and location; not shared, no bounds."""
        return StoreInfo(self.kind, self.location)

    async def created_at(self, key: str) -> float | None:
        """When ``key``'s entry was created, via ``get`` with no completions decoded."""
        entry = await self.get(key, limit=0)  # type: ignore[attr-defined]
        return None if entry is None else float(entry.created_at)


def dump_json(value: object, what: str) -> str:
    """Encode ``value`` as compact ASCII JSON, raising ``StoreError`` if it is not JSON."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store {what}: it is not JSON-serializable ({exc})") from exc
