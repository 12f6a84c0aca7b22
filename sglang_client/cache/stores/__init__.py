"""Cache stores: one small protocol (``CacheStore``) and three implementations.

``MemoryStore`` (in-process LRU), ``SQLiteStore`` (the embedded on-disk default) and
``RedisStore`` (shared by several processes or machines; needs the ``[redis]`` extra, imported
only when a ``RedisStore`` is created).
"""

from __future__ import annotations

from sglang_client.cache.stores.base import (
    CacheEntry,
    CacheStore,
    JSONObject,
    LockTimeoutError,
    StoreCounts,
    StoreDefaults,
    StoreError,
    StoreInfo,
)
from sglang_client.cache.stores.memory import MemoryStore
from sglang_client.cache.stores.redis import RedisStore
from sglang_client.cache.stores.sqlite import SQLiteStore

__all__ = [
    "CacheEntry",
    "CacheStore",
    "JSONObject",
    "LockTimeoutError",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "StoreCounts",
    "StoreDefaults",
    "StoreError",
    "StoreInfo",
]
