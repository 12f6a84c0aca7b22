"""The plumbing under the cache engine: store access that degrades, locks, counters, stats."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeVar

from sglang_client.cache._singleflight import KeyedLocks
from sglang_client.cache.keys import tenant_of
from sglang_client.cache.plan import RequestPlan, plan
from sglang_client.cache.stats import CacheStats, CacheStatus, Counters
from sglang_client.cache.stores.base import CacheEntry, CacheStore, StoreError

if TYPE_CHECKING:
    from sglang_client.client import SGLangClient

__all__ = ["DEFAULT_CACHE_PATH", "EngineCore"]

logger = logging.getLogger("sglang_client.cache")
_E = TypeVar("_E", bound="EngineCore")

JSON = dict[str, Any]
# The trailing slash makes SQLiteStore treat it as a directory: ~/.sglang_cache/cache.db.
DEFAULT_CACHE_PATH = "~/.sglang_cache/"


class EngineCore:
    """What every cached route shares: the client, the store and the bookkeeping."""

    def __init__(
        self,
        client: SGLangClient,
        store: CacheStore | None = None,
        *,
        namespace: str | None = None,
        isolate_by_key: bool = False,
    ) -> None:
        if store is None:
            from sglang_client.cache.stores.sqlite import SQLiteStore

            store = SQLiteStore(DEFAULT_CACHE_PATH)
        self.client = client
        self.store = store
        self._model = namespace
        # The namespace of this client's own calls: its API key's, or the shared one.
        self.tenant = tenant_of(client.api_key) if isolate_by_key else None
        self._locks = KeyedLocks()
        self._counters = Counters()
        self._store_failing = False
        # Only a store other processes write to needs its own (cross-process) lock.
        self._shared_store = store.info.shared

    # ------------------------------------------------------------------ plumbing

    async def _model_identity(self) -> str:
        if self._model is None:
            info = await self.client.get_model_info()
            self._model = info.served_model_name or info.model_path
        return self._model

    def _store_failed(self, exc: StoreError, action: str) -> None:
        self._counters.store_errors += 1
        if not self._store_failing:  # one warning per incident, not per request
            self._store_failing = True
            logger.warning("cache store %s failed, serving without it: %s", action, exc)

    def _store_wrote(self) -> None:
        """An append returned: the incident is over once the store's writes really succeed.

        A write-behind store (SQLite) acknowledges before it commits, so its ``healthy`` says
        whether the last commit worked; a read that succeeds proves nothing about writes.
        """
        if self._store_failing and self.store.healthy:
            self._store_failing = False
            logger.info("cache store recovered: writes succeed again")

    @property
    def store_failing(self) -> bool:
        """Whether the store is failing now (from its first error to a write that worked)."""
        return self._store_failing

    async def _get(self, key: str, limit: int) -> CacheEntry | None:
        try:
            return await self.store.get(key, limit=limit)
        except StoreError as exc:
            self._store_failed(exc, "read")
            return None

    async def _append(self, key: str, completions: list[JSON], request: JSON) -> None:
        if not completions:
            return
        try:
            await self.store.append(key, completions, request=request)
        except StoreError as exc:
            self._store_failed(exc, "write")
        else:
            self._store_wrote()

    async def _lock(self, stack: AsyncExitStack, keys: Sequence[str]) -> None:
        """Coalesce: this process's per-key locks, then the store's (cross-process for Redis)."""
        await stack.enter_async_context(self._locks.hold(keys))
        if not self._shared_store:
            return  # this process's locks already serialise an in-process store
        for key in sorted(set(keys)):
            try:
                await stack.enter_async_context(self.store.lock(key))
            except StoreError as exc:
                self._store_failed(exc, "lock")

    def _record(self, status: CacheStatus, started: float, cached: int, generated: int) -> None:
        self._counters.record(status, time.perf_counter() - started, cached, generated)

    async def model_identity(self) -> str:
        """The model identity in keys; fetches the upstream's ``/model_info`` the first time."""
        return await self._model_identity()

    @property
    def counters(self) -> Counters:
        """The live request counters (``stats()`` adds the store's size, which may be slow)."""
        return self._counters

    @property
    def model(self) -> str | None:
        """The model identity in keys, once known (``namespace``, or fetched on first use)."""
        return self._model

    def keyed_plan(
        self, path: str, body: Mapping[str, Any], tenant: str | None = None
    ) -> tuple[RequestPlan, str] | None:
        """The plan of a single-prompt request and its key, or ``None``.

        ``None`` too while the model identity is unknown. For layers (the proxy's memo of
        encoded hits) that must find the same entry the engine would use.
        """
        planned = plan(path, body, tenant)
        if self._model is None or planned is None or not planned.single:
            return None
        return planned, planned.keys(self._model)[0]

    def record_hit(self, seconds: float, served: int) -> None:
        """Count a hit served by a layer above the engine (it reads the same entries)."""
        self._counters.record(CacheStatus.HIT, seconds, served, 0)

    async def _read_all(self, keys: Sequence[str], need: Sequence[int]) -> list[list[JSON]]:
        out = []
        for key, k in zip(keys, need, strict=True):
            entry = await self._get(key, k)
            out.append(entry.completions[:k] if entry is not None else [])
        return out

    # ------------------------------------------------------------------ cache management

    async def stats(self) -> CacheStats:
        """A snapshot of the store's size and this client's counters."""
        c = self._counters
        try:
            counts: tuple[int | None, int | None] = tuple(await self.store.count())  # type: ignore[assignment]
        except StoreError as exc:
            self._store_failed(exc, "count")
            counts = (None, None)
        looked_up = c.hits + c.misses + c.partial_hits
        return CacheStats(
            num_keys=counts[0],
            total_responses=counts[1],
            hits=c.hits,
            misses=c.misses,
            partial_hits=c.partial_hits,
            bypassed=c.bypassed,
            hit_rate=c.hits / looked_up if looked_up else 0.0,
            completions_saved=c.completions_from_cache,
            completions_generated=c.completions_generated,
            pending_writes=self.store.pending_writes,
            store_errors=c.store_errors,
            store_kind=self.store.kind,
            store_location=self.store.location,
            hit_latency=c.percentiles(CacheStatus.HIT),
            miss_latency=c.percentiles(CacheStatus.MISS),
            partial_latency=c.percentiles(CacheStatus.PARTIAL),
        )

    async def clear(self) -> int:
        """Delete every cached entry; returns how many there were."""
        return await self.store.clear()

    async def aclose(self) -> None:
        """Flush and close the store (the upstream client is the caller's to close)."""
        await self.store.aclose()

    async def __aenter__(self: _E) -> _E:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
