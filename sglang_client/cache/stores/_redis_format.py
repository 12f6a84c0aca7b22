"""The RedisStore's key layout, Lua scripts and decoding.

Each entry is ONE Redis list, ``<prefix>e:<key>``: ``[created_at, updated_at, request JSON,
completion JSON, ...]``, so a read is one ``LRANGE`` and an append is one script that RPUSHes
and refreshes the TTL atomically. Locks are ``<prefix>lock:<key>`` strings.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sglang_client.cache.stores._common import load_request
from sglang_client.cache.stores.base import CacheEntry

__all__ = ["APPEND_LUA", "HEADER", "RELEASE_LUA", "decode_entry", "mask_url"]

HEADER = 3  # created_at, updated_at, request

# KEYS[1] entry; ARGV: now, ttl ms (0: none), request JSON ("null": none), completions...
APPEND_LUA = """
local key = KEYS[1]
local len = redis.call('LLEN', key)
if len < 3 then
  if len > 0 then redis.call('DEL', key) end
  redis.call('RPUSH', key, ARGV[1], ARGV[1], ARGV[3])
  len = 3
else
  redis.call('LSET', key, 1, ARGV[1])
  if ARGV[3] ~= 'null' and redis.call('LINDEX', key, 2) == 'null' then
    redis.call('LSET', key, 2, ARGV[3])
  end
end
for i = 4, #ARGV, 1000 do
  len = redis.call('RPUSH', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
return len - 3
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def decode_entry(key: str, items: list[Any]) -> CacheEntry | None:
    if len(items) < HEADER:
        return None
    body = items[HEADER:]
    completions = json.loads(b"[" + b",".join(body) + b"]") if body else []
    return CacheEntry(key, load_request(items[2]), completions, float(items[0]), float(items[1]))
