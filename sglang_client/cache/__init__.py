"""The response cache: ``CachedClient``, the engine behind it and its stores.

docs/architecture.md lays out the modules by idea and one request's flow (the plan).

Example:
    ```python
    from sglang_client import CachedClient, SGLangClient
    from sglang_client.cache import SQLiteStore

    cached = CachedClient(SGLangClient(url), store=SQLiteStore("~/.sglang_cache"))
    ```
"""

from __future__ import annotations

from sglang_client.cache.middleware import CachedClient, CachedResult, CachedStream
from sglang_client.cache.stats import CacheStats, CacheStatus
from sglang_client.cache.stores import (
    CacheEntry,
    CacheStore,
    LockTimeoutError,
    MemoryStore,
    RedisStore,
    SQLiteStore,
    StoreError,
)

__all__ = [
    "CacheEntry",
    "CacheStats",
    "CacheStatus",
    "CacheStore",
    "CachedClient",
    "CachedResult",
    "CachedStream",
    "LockTimeoutError",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "StoreError",
]
