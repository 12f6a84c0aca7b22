"""The proxy's own routes: ``/cache/stats``, ``/cache/info``, ``/cache/clear``, ``/health``,
``/metrics``."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from sglang_client.cache.keys import TENANT_FIELD
from sglang_client.cache.stores.base import CacheEntry, CacheStore, StoreError, StoreInfo
from sglang_client.errors import SGLangError
from sglang_client.server._asgi import Scope, Send, error_body, send_bytes, send_json

if TYPE_CHECKING:
    from sglang_client.cache import CachedClient
    from sglang_client.server._hits import HitMemo
    from sglang_client.server._metrics import Metrics

__all__ = ["AdminRoutes"]

_PROMETHEUS_TYPE = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
_MAX_PAGE = 1000
_MAX_OFFSET = 1 << 62  # SQLite takes 64-bit offsets; larger ones are a client's mistake
_MAX_SCAN = 20 * _MAX_PAGE  # entries one filtered /cache/info call may read


def _store_limits(info: StoreInfo) -> dict[str, Any]:
    return {"max_entries": info.max_entries, "max_bytes": info.max_bytes, "ttl": info.ttl}


def _file_size(path: object) -> int | None:
    try:
        return os.path.getsize(path) if isinstance(path, (str, os.PathLike)) else None
    except OSError:
        return None


class AdminRoutes:
    """Handlers of the proxy's own routes; each returns the status it sent."""

    def __init__(
        self, cached: CachedClient, metrics: Metrics, memo: HitMemo, upstream_url: str
    ) -> None:
        self.cached = cached
        self.metrics = metrics
        self.memo = memo
        self.upstream_url = upstream_url
        self.started = time.time()

    async def stats(self, send: Send) -> int:
        """``GET /cache/stats``: what the store holds and how requests were served."""
        stats = (await self.cached.stats()).as_dict()
        stats["cache_file"] = stats["store_location"]
        stats["store_failing"] = self.cached.store_failing
        await send_json(send, 200, stats)
        return 200

    async def info(self, scope: Scope, send: Send, tenant: str | None = None) -> int:
        """``GET /cache/info?offset=&limit=``: store, limits, size, age range, a page of keys.

        With ``tenant``, only that namespace's entries are listed: ``offset`` and
        ``next_offset`` are then positions in the whole store (a cursor), and one call reads at
        most a bounded number of entries.
        """
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            offset = int(query.get("offset", ["0"])[0])
            limit = int(query.get("limit", ["50"])[0])
            if not 0 <= offset <= _MAX_OFFSET or not 1 <= limit <= _MAX_PAGE:
                raise ValueError
        except ValueError:
            message = (
                f"offset must be an integer in 0..{_MAX_OFFSET}"
                f" and limit an integer in 1..{_MAX_PAGE}."
            )
            await send_json(send, 400, error_body(400, message, "Bad Request"))
            return 400
        store = self.cached.store
        try:
            counts = await store.count()
            if tenant is None:
                entries = await store.iter_entries(offset=offset, limit=limit)
                end = offset + len(entries)
            else:
                entries, end = await _tenant_page(store, tenant, offset, limit)
            first = await store.iter_entries(offset=0, limit=1)
            last = await store.iter_entries(offset=max(0, counts.num_keys - 1), limit=1)
        except StoreError as exc:
            message = f"The cache store failed: {exc}"
            await send_json(send, 503, error_body(503, message, "Service Unavailable"))
            return 503
        described = store.info
        info = {
            "store": described.kind,
            "location": described.location,
            "limits": _store_limits(described),
            "num_keys": counts.num_keys,
            "total_responses": counts.total_responses,
            "size_bytes": _file_size(described.path),
            "oldest_entry": first[0].created_at if first else None,
            "newest_entry": last[0].created_at if last else None,
            "pending_writes": store.pending_writes,
            "offset": offset,
            "limit": limit,
            "next_offset": end if end < counts.num_keys else None,
            "keys": [
                {
                    "key": e.key,
                    "completions": len(e.completions),
                    "created_at": e.created_at,
                    "updated_at": e.updated_at,
                    "request": e.request,
                }
                for e in entries
            ],
        }
        await send_json(send, 200, info)
        return 200

    async def clear(self, send: Send) -> int:
        """``POST /cache/clear`` (the caller checked the admin key)."""
        try:
            removed = await self.cached.clear()
        except StoreError as exc:
            message = f"Clearing the cache failed: {exc}"
            await send_json(send, 503, error_body(503, message, "Service Unavailable"))
            return 503
        self.memo.clear()
        await send_json(send, 200, {"cleared": removed})
        return 200

    async def health(self, send: Send) -> int:
        """``GET /health``: 200 while the proxy serves, with its store's and upstream's state."""
        upstream = await self.cached.client.health(timeout=2.0, detailed=True)
        load = upstream.load.model_dump() if upstream.load is not None else None
        body = {
            "status": "ok" if upstream.available else "degraded",
            "uptime": round(time.time() - self.started, 3),
            "store": self.cached.store.kind,
            "pending_writes": self.cached.store.pending_writes,
            "upstream": {
                "url": self.upstream_url,
                "available": upstream.available,
                "latency": upstream.latency,
                "status_code": upstream.status_code,
                "error": upstream.error,
                "load": load,
            },
        }
        await send_json(send, 200, body)
        return 200

    async def prometheus(self, send: Send) -> int:
        """``GET /metrics``: Prometheus text."""
        counters = self.cached.counters
        try:
            load = await self.cached.client.load(timeout=2.0)
        except SGLangError:
            load = None  # the upstream's figures are an extra: the proxy's own still count
        text = self.metrics.render(
            counters.hits,
            counters.misses,
            counters.partial_hits,
            self.cached.store.pending_writes,
            counters.store_errors,
            self.cached.store_failing,
            load,
        )
        await send_bytes(send, 200, text.encode(), [_PROMETHEUS_TYPE])
        return 200


async def _tenant_page(
    store: CacheStore, tenant: str, offset: int, limit: int
) -> tuple[list[CacheEntry], int]:
    """Up to ``limit`` of ``tenant``'s entries from store position ``offset`` on, and the
    position after the last one read."""
    found: list[CacheEntry] = []
    position = offset
    while len(found) < limit and position - offset < _MAX_SCAN:
        page = await store.iter_entries(offset=position, limit=_MAX_PAGE)
        if not page:
            break
        for entry in page:
            position += 1
            if (entry.request or {}).get(TENANT_FIELD) == tenant:
                found.append(entry)
                if len(found) == limit:
                    break
    return found, position
