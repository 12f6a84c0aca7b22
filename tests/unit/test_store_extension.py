"""A new store is its own file: this tiny one serves CachedClient and the proxy unchanged.

It implements ``CacheStore`` and inherits the rest from ``StoreDefaults`` (``info`` from its
kind and location, ``created_at`` through ``get``); nothing in the cache or the proxy has to
learn its name.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from sglang_client import SGLangClient
from sglang_client.cache import CachedClient
from sglang_client.cache.stores import (
    CacheEntry,
    CacheStore,
    StoreCounts,
    StoreDefaults,
    StoreInfo,
)
from sglang_client.server import ProxyConfig, create_app

from ._upstream import Upstream

pytestmark = pytest.mark.anyio


class DictStore(StoreDefaults):
    """Entries in a dict: the least a store must do."""

    kind = "dict"
    location = "a dict"
    healthy = True
    pending_writes = 0

    def __init__(self) -> None:
        self.entries: dict[str, CacheEntry] = {}

    async def get(self, key: str, *, limit: int | None = None) -> CacheEntry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        kept = entry.completions if limit is None else entry.completions[:limit]
        copy = [dict(c) for c in kept]
        return CacheEntry(key, entry.request, copy, entry.created_at, entry.updated_at)

    async def append(
        self,
        key: str,
        completions: Sequence[Mapping[str, Any]],
        *,
        request: Mapping[str, Any] | None = None,
    ) -> int:
        entry = self.entries.get(key)
        now = time.time()
        if entry is None:
            entry = self.entries[key] = CacheEntry(key, dict(request or {}), [], now, now)
        entry.completions.extend(dict(c) for c in completions)
        entry.updated_at = now
        return len(entry.completions)

    async def delete(self, key: str) -> bool:
        return self.entries.pop(key, None) is not None

    async def clear(self) -> int:
        count = len(self.entries)
        self.entries.clear()
        return count

    async def count(self) -> StoreCounts:
        total = sum(len(e.completions) for e in self.entries.values())
        return StoreCounts(len(self.entries), total)

    async def iter_entries(self, *, offset: int = 0, limit: int = 100) -> list[CacheEntry]:
        return list(self.entries.values())[offset : offset + limit]

    async def flush(self) -> None:
        pass

    @asynccontextmanager
    async def lock(
        self, key: str, *, ttl: float = 30.0, timeout: float | None = None
    ) -> AsyncIterator[None]:
        yield

    async def aclose(self) -> None:
        pass


def upstream_client(upstream: Upstream) -> SGLangClient:
    transport = httpx.MockTransport(upstream.handle)
    return SGLangClient("http://upstream.test", transport=transport, max_retries=0)


async def test_the_new_store_meets_the_protocol_and_serves_n_aware_reuse() -> None:
    store = DictStore()
    assert isinstance(store, CacheStore)
    assert store.info == StoreInfo("dict", "a dict")  # not shared, no bounds: the defaults
    upstream = Upstream()
    async with upstream_client(upstream) as client:
        cached = CachedClient(client, store)
        params = {"n": 3, "temperature": 0.7, "max_new_tokens": 4}
        first = await cached.generate("hi", sampling_params=params)
        more = await cached.generate("hi", sampling_params={**params, "n": 5})
        assert isinstance(first, list) and isinstance(more, list)
        assert [r.text for r in more[:3]] == [r.text for r in first]
        stats = await cached.stats()
    assert (stats.partial_hits, stats.completions_generated, stats.store_kind) == (1, 5, "dict")
    [entry] = store.entries.values()
    assert len(entry.completions) == 5
    assert await store.created_at(entry.key) == entry.created_at
    assert await store.created_at("absent") is None


async def test_the_proxy_serves_and_describes_the_new_store() -> None:
    store = DictStore()
    upstream = Upstream()
    app = create_app(
        CachedClient(upstream_client(upstream), store),
        ProxyConfig(upstream_url="http://127.0.0.1:9", quiet=True),
    )
    body = {"text": "hello", "sampling_params": {"max_new_tokens": 8, "temperature": 0.7}}
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as http:
        labels = [(await http.post("/generate", json=body)).headers["x-cache"] for _ in range(3)]
        info = (await http.get("/cache/info")).json()
    await app.aclose()
    assert labels == ["MISS", "HIT", "HIT"]  # the third from the memo, checked by created_at
    assert len([c for c in upstream.calls if c["path"] == "/generate"]) == 1
    assert (info["store"], info["location"], info["num_keys"]) == ("dict", "a dict", 1)
    assert info["limits"] == {"max_entries": None, "max_bytes": None, "ttl": None}
    assert info["size_bytes"] is None
