"""``CacheEngine``: the cache behind ``CachedClient`` and the proxy, on SGLang's raw JSON bodies.

It owns the store and the bookkeeping (store access that degrades to a miss, per-key locks that
coalesce identical requests, counters, stats); what each route does is in ``native.py``
(``/generate``) and ``openai_routes.py`` (chat, completions), and what a request keys and needs
in ``plan.py``. See docs/architecture.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeVar

from sglang_client._defaults import NOT_GIVEN, NotGiven
from sglang_client.cache import native, openai_routes
from sglang_client.cache._singleflight import KeyedLocks
from sglang_client.cache.keys import tenant_of
from sglang_client.cache.plan import RequestPlan, plan
from sglang_client.cache.stats import CacheStats, CacheStatus, Counters
from sglang_client.cache.stores.base import CacheEntry, CacheStore, StoreError

if TYPE_CHECKING:
    from sglang_client._http import TimeoutTypes
    from sglang_client.client import SGLangClient

__all__ = ["DEFAULT_CACHE_PATH", "CacheEngine", "Upstream"]

logger = logging.getLogger("sglang_client.cache")
_E = TypeVar("_E", bound="CacheEngine")

JSON = dict[str, Any]
# A directory holding cache.db (see database_path); sglang-cached's --cache-path default too.
DEFAULT_CACHE_PATH = "~/.sglang_cache"


class Upstream:
    """The upstream client, with one call's timeout on every request it sends for that call."""

    __slots__ = ("client", "timeout")

    def __init__(self, client: SGLangClient, timeout: TimeoutTypes | NotGiven) -> None:
        self.client = client
        self.timeout = timeout

    async def request_json(self, method: str, path: str, body: object) -> Any:
        """``client.request_json`` with this call's timeout."""
        return await self.client.request_json(method, path, body, timeout=self.timeout)

    def stream_json(self, path: str, body: Mapping[str, Any]) -> Any:
        """``client.stream_json`` with this call's timeout."""
        return self.client.stream_json(path, body, timeout=self.timeout)


class CacheEngine:
    """Serve raw SGLang request bodies through the cache.

    Args:
        client: the upstream client.
        store: where completions live; default ``SQLiteStore("~/.sglang_cache")``.
        namespace: the model identity in keys; default: the upstream's served model name
            (``/model_info``, fetched once).
        isolate_by_key: keep this client's own calls apart from other API keys' (``tenant``).
    """

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

    async def model_identity(self) -> str:
        """The model identity in keys; fetches the upstream's ``/model_info`` the first time."""
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

    async def append(self, key: str, completions: list[JSON], request: JSON) -> None:
        """Store new completions under ``key`` (a failing store is counted, not raised)."""
        if not completions:
            return
        try:
            await self.store.append(key, completions, request=request)
        except StoreError as exc:
            self._store_failed(exc, "write")
        else:
            self._store_wrote()

    async def lock(self, stack: AsyncExitStack, keys: Sequence[str]) -> None:
        """Coalesce: this process's per-key locks, then the store's (cross-process for Redis)."""
        await stack.enter_async_context(self._locks.hold(keys))
        if not self._shared_store:
            return  # this process's locks already serialise an in-process store
        for key in sorted(set(keys)):
            try:
                await stack.enter_async_context(self.store.lock(key))
            except StoreError as exc:
                self._store_failed(exc, "lock")

    def record(self, status: CacheStatus, started: float, cached: int, generated: int) -> None:
        """Count one served request."""
        self._counters.record(status, time.perf_counter() - started, cached, generated)

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

    async def read_all(self, keys: Sequence[str], need: Sequence[int]) -> list[list[JSON]]:
        """Up to ``need[i]`` stored completions of each key (none where the store fails)."""
        out = []
        for key, k in zip(keys, need, strict=True):
            entry = await self._get(key, k)
            out.append(entry.completions[:k] if entry is not None else [])
        return out

    def upstream(self, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> Upstream:
        """The upstream client for one call (``timeout``: that call's)."""
        return Upstream(self.client, timeout)

    # ------------------------------------------------------------------ the cached routes
    # Each is its route module's function, bound here as a method (the engine is its first
    # argument): one definition, in the module its name suggests.

    generate_json = native.generate_json
    generate_stream_json = native.generate_stream_json
    openai_json = openai_routes.openai_json
    openai_stream_json = openai_routes.openai_stream_json

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
