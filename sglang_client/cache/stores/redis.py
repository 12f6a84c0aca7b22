"""``RedisStore``: one cache shared by several processes or machines, on Redis.

The key layout and scripts are in ``_redis_format``: one list per entry, appended by a Lua
script, so concurrent appends from any number of processes never lose a completion.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from sglang_client.cache.stores._common import (
    check_key,
    check_limit,
    check_page,
    dump_completions,
)
from sglang_client.cache.stores._redis_format import (
    APPEND_LUA,
    HEADER,
    RELEASE_LUA,
    decode_entry,
    mask_url,
)
from sglang_client.cache.stores.base import (
    CacheEntry,
    LockTimeoutError,
    StoreCounts,
    StoreError,
    StoreInfo,
    dump_json,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisStore", "mask_url"]

_T = TypeVar("_T")
_LOG = logging.getLogger("sglang_client.cache")


class RedisStore:
    """Share one cache between processes or machines through Redis.

    ``append`` is atomic across all clients; ``lock()`` is a cross-process per-key lock
    (``SET NX PX`` with a random token, compare-and-delete release), so two proxies never
    generate the same completion twice. The TTL restarts on every append, as Redis's
    ``PEXPIRE`` does. ``count``, ``clear`` and ``iter_entries`` SCAN the prefix: O(N), for
    stats and inspection, never the hot path. Every write is durable as far as the server's
    own persistence goes, so ``flush`` has nothing to do. Needs ``redis`` (the ``[redis]``
    extra) and an asyncio event loop.

    Args:
        url: ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: Namespace of every key this store touches; ``clear()`` removes only these.
        ttl: Seconds after its last append at which an entry expires (``None``: never).
        socket_timeout: Seconds before a silent server turns into ``StoreError``.
        client: An existing ``redis.asyncio.Redis`` to use instead of ``url`` (not closed
            by ``aclose``).

    Example:
        ```python
        store = RedisStore("redis://127.0.0.1:6379/0", ttl=86400)
        async with store.lock(key):
            if (entry := await store.get(key)) is None:
                await store.append(key, [completion], request=request)
        ```
    """

    kind = "redis"
    healthy = True  # writes are synchronous: one that returned reached Redis

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "sglang-cache:",
        ttl: float | None = None,
        *,
        socket_timeout: float = 5.0,
        client: Redis | None = None,
    ) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be positive or None, got {ttl}")
        if not prefix:
            raise ValueError("prefix must be non-empty, or clear() would touch foreign keys")
        try:
            import redis.asyncio
            import redis.exceptions
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "RedisStore needs the redis package: pip install 'sglang-client[redis]'"
            ) from exc
        self.location = mask_url(url)
        self.prefix = prefix
        self._ttl_ms = 0 if ttl is None else max(1, round(ttl * 1000))
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._owns_client = client is None
        self._redis: Redis = client or redis.asyncio.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
        self._append_script = self._redis.register_script(APPEND_LUA)
        self._release_script = self._redis.register_script(RELEASE_LUA)
        self._match = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "e:*"
        self._closed = False

    @property
    def info(self) -> StoreInfo:
        """Shared with every process using the same prefix; bounded by ``ttl`` (and the
        server's own ``maxmemory`` policy, which this store cannot see)."""
        ttl = self._ttl_ms / 1000 if self._ttl_ms else None
        return StoreInfo(self.kind, self.location, shared=True, ttl=ttl)

    async def created_at(self, key: str) -> float | None:
        """When ``key``'s entry was created (one ``get`` with no completions decoded)."""
        entry = await self.get(key, limit=0)
        return None if entry is None else entry.created_at

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r}, prefix={self.prefix!r})"

    @property
    def pending_writes(self) -> int:
        """Always 0: an append is on the server when it returns."""
        return 0

    async def get(self, key: str, *, limit: int | None = None) -> CacheEntry | None:
        """Return the entry for ``key`` (at most ``limit`` completions), or ``None``."""
        check_key(key)
        check_limit(limit)
        end = -1 if limit is None else HEADER + limit - 1
        name = self._entry(key)
        items = await self._call("get", lambda: self._redis.lrange(name, 0, end))
        return decode_entry(key, items)

    async def append(
        self,
        key: str,
        completions: Sequence[Mapping[str, Any]],
        *,
        request: Mapping[str, Any] | None = None,
    ) -> int:
        """Append ``completions`` atomically, creating the entry if absent; return the count."""
        check_key(key)
        texts = dump_completions(completions)
        request_text = "null" if request is None else dump_json(request, "the request")
        args: list[str | int] = [repr(time.time()), self._ttl_ms, request_text, *texts]
        keys = [self._entry(key)]
        return int(await self._call("append", lambda: self._append_script(keys=keys, args=args)))

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        check_key(key)
        name = self._entry(key)
        return bool(await self._call("delete", lambda: self._redis.delete(name)))

    async def clear(self) -> int:
        """Delete every entry under this store's prefix (nothing else); return how many."""
        removed = 0
        for batch in await self._scan_batches():
            removed += int(await self._call("clear", partial(self._redis.unlink, *batch)))
        return removed

    async def count(self) -> StoreCounts:
        """Return ``(num_keys, total_responses)`` by scanning the prefix (O(N))."""
        num_keys = total = 0
        for batch in await self._scan_batches():
            pipe = self._redis.pipeline(transaction=False)
            for name in batch:
                pipe.llen(name)
            for length in await self._call("count", pipe.execute):
                if length >= HEADER:
                    num_keys += 1
                    total += length - HEADER
        return StoreCounts(num_keys, total)

    async def iter_entries(self, *, offset: int = 0, limit: int = 100) -> list[CacheEntry]:
        """Return one page of entries in creation order (scans and sorts the prefix: O(N))."""
        check_page(offset, limit)
        created: list[tuple[float, bytes]] = []
        for batch in await self._scan_batches():
            pipe = self._redis.pipeline(transaction=False)
            for name in batch:
                pipe.lindex(name, 0)
            for name, stamp in zip(batch, await self._call("list", pipe.execute), strict=True):
                if stamp is not None:
                    created.append((float(stamp), name))
        created.sort()
        page = created[offset : offset + limit]
        if not page:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for _, name in page:
            pipe.lrange(name, 0, -1)
        cut = len(self.prefix) + 2
        entries = []
        for (_, name), items in zip(page, await self._call("list", pipe.execute), strict=True):
            entry = decode_entry(name[cut:].decode(), items)
            if entry is not None:
                entries.append(entry)
        return entries

    async def flush(self) -> None:
        """Do nothing: Redis has the writes already."""

    def lock(
        self, key: str, *, ttl: float = 30.0, timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold a lock on ``key`` shared by every process using this Redis and prefix.

        The lock frees itself ``ttl`` seconds after it was taken, even if its holder is still
        inside; pick a ``ttl`` above the longest generation you expect. Waiters poll with
        jittered backoff (2 ms doubling to 50 ms).
        """
        check_key(key)
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        return self._hold(self.prefix + "lock:" + key, ttl, ttl if timeout is None else timeout)

    async def aclose(self) -> None:
        """Close the connection pool (unless the client was passed in)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._redis.aclose()

    @asynccontextmanager
    async def _hold(self, name: str, ttl: float, timeout: float) -> AsyncIterator[None]:
        token = secrets.token_hex(16)
        ttl_ms = max(1, round(ttl * 1000))
        deadline = time.monotonic() + timeout
        delay = 0.002
        while not await self._call(
            "lock", lambda: self._redis.set(name, token, nx=True, px=ttl_ms)
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeoutError(f"could not lock {name!r} within {timeout} s")
            await anyio.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
            delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._call(
                        "unlock", lambda: self._release_script(keys=[name], args=[token])
                    )
                except StoreError as exc:
                    # The lock still frees itself after ttl; do not mask the body's outcome.
                    _LOG.warning("releasing %s failed (it expires in %s s): %s", name, ttl, exc)

    async def _scan_batches(self) -> list[list[bytes]]:
        self._check_open()
        names: list[bytes] = []
        try:
            async for name in self._redis.scan_iter(match=self._match, count=1000):
                names.append(name)
        except self._errors as exc:
            raise StoreError(f"redis scan at {self.location} failed: {exc}") from exc
        return [names[i : i + 500] for i in range(0, len(names), 500)]

    async def _call(self, what: str, command: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis command, turning its failures into ``StoreError``."""
        self._check_open()
        try:
            return await command()
        except self._errors as exc:
            raise StoreError(f"redis {what} at {self.location} failed: {exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self!r} is closed")

    def _entry(self, key: str) -> str:
        return self.prefix + "e:" + key
