"""CachedClient: n-aware reuse of completions, in-process, with an on-disk SQLite cache.

Walks the cache semantics step by step and checks each one: a miss, a hit, n=3 reusing the one
cached completion, n=5 reusing three, greedy requests reusing one completion for any n,
``cache=False``, a stream replayed from the cache, a chat call, and a "restart" (a second
CachedClient over the same file) that is served entirely from disk. Every line says how many
completions came from the cache and how many the server generated.

The SGLang server is ``SGLANG_URL`` (default http://127.0.0.1:30000). When nothing answers
there, a fake SGLang server is started in-process on a free port. The cache lives in a
temporary directory (without a ``store``, CachedClient uses ``SQLiteStore("~/.sglang_cache")``).

    .venv/bin/python examples/cached_client.py
    SGLANG_URL=http://gpu-host:30000 .venv/bin/python examples/cached_client.py

Exits non-zero if a cache guarantee did not hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sglang_client import CachedClient, GenerateResponse, SGLangClient
from sglang_client.cache import SQLiteStore

DEFAULT_URL = "http://127.0.0.1:30000"


class Failed(Exception):
    """A cache guarantee did not hold."""


@contextlib.asynccontextmanager
async def sglang_server() -> AsyncIterator[str]:
    """``SGLANG_URL`` if something answers there, else a fake server started here."""
    url = os.environ.get("SGLANG_URL", DEFAULT_URL).rstrip("/")
    async with SGLangClient(url, max_retries=0) as probe:
        status = await probe.health(timeout=2.0)
    if status.status_code is not None:  # a server answered (maybe 503 while it loads)
        print(f"SGLang server: {url}")
        yield url
        return
    from sglang_client.testing import FakeSGLangServer

    async with FakeSGLangServer(latency_per_token=0.002) as fake:
        print(f"Nothing answers at {url}; started a fake SGLang server at {fake.url}")
        yield fake.url


class Walk:
    """Runs steps and reports, from the cache's own counters, where completions came from."""

    def __init__(self, cached: CachedClient) -> None:
        self.cached = cached

    async def counters(self) -> tuple[int, int]:
        stats = await self.cached.stats()
        return stats.completions_saved, stats.completions_generated

    async def step(self, name: str, cached: int | None, generated: int, call: Any) -> Any:
        """Await ``call``; fail unless the server generated ``generated`` completions (and the
        cache served ``cached``, when given)."""
        before = await self.counters()
        result = await call
        after = await self.counters()
        got = (after[0] - before[0], after[1] - before[1])
        items = result if isinstance(result, list) else [result]
        if isinstance(items[0], GenerateResponse):
            text = items[0].text
        else:  # a ChatCompletion
            text = items[0].choices[0].message.content or ""
        print(f"  {name:<36} {got[0]} from cache, {got[1]} generated   {text[:30]!r}")
        if got[1] != generated or (cached is not None and got[0] != cached):
            raise Failed(f"{name}: expected {cached} cached + {generated} new, got {got}")
        return result


async def walk(client: SGLangClient, cache_dir: str) -> None:
    prompt = f"Write one line about the sea (run {uuid.uuid4().hex[:8]})."
    store_path = os.path.join(cache_dir, "cache.db")

    def sampled(**params: Any) -> dict[str, Any]:
        return {"max_new_tokens": 16, "temperature": 0.8, **params}

    def greedy(**params: Any) -> dict[str, Any]:
        return {"max_new_tokens": 16, "temperature": 0, **params}

    print(f"\n1. CachedClient over SQLiteStore({store_path!r})\n")
    cached = CachedClient(client, store=SQLiteStore(store_path))
    w = Walk(cached)
    generate = cached.generate
    first = await w.step("new prompt", 0, 1, generate(prompt, sampling_params=sampled()))
    again = await w.step("same request", 1, 0, generate(prompt, sampling_params=sampled()))
    if again.text != first.text:
        raise Failed("a hit returns the cached completion")
    three = await w.step(
        "n=3: 1 cached + 2 new", 1, 2, generate(prompt, sampling_params=sampled(n=3))
    )
    if three[0].text != first.text:
        raise Failed("the cached completion comes first")
    five = await w.step(
        "n=5: 3 cached + 2 new", 3, 2, generate(prompt, sampling_params=sampled(n=5))
    )
    if [r.text for r in five[:3]] != [r.text for r in three]:
        raise Failed("n=5 starts with the three completions n=3 returned")
    await w.step("n=2: a full hit", 2, 0, generate(prompt, sampling_params=sampled(n=2)))
    await w.step("greedy (temperature 0)", 0, 1, generate(prompt, sampling_params=greedy()))
    # The hit counter counts the one stored completion, not the four copies returned.
    many = await w.step(
        "greedy n=4: the one completion", None, 0, generate(prompt, sampling_params=greedy(n=4))
    )
    if len(many) != 4 or len({r.text for r in many}) != 1:
        raise Failed("greedy n=4 returns the one greedy completion four times")
    await w.step(
        "cache=False: bypass, uncounted",
        0,
        0,
        generate(prompt, sampling_params=sampled(), cache=False),
    )

    before = await w.counters()
    chunks = [c async for c in cached.generate_stream(prompt, sampling_params=sampled())]
    after = await w.counters()
    name = "stream: replayed from the cache"
    print(f"  {name:<36} {len(chunks)} chunk(s), {after[0] - before[0]} from cache")
    if chunks[-1].text != first.text or after != (before[0] + 1, before[1]):
        raise Failed("a cached stream replays the cached completion")

    messages = [{"role": "user", "content": prompt}]
    chat = cached.chat_completion
    chat1 = await w.step("chat: new", 0, 1, chat(messages, max_tokens=12, temperature=0))
    chat2 = await w.step("chat: same request", 1, 0, chat(messages, max_tokens=12, temperature=0))
    if chat1.choices[0].message.content != chat2.choices[0].message.content:
        raise Failed("a chat hit returns the cached answer")

    stats = await cached.stats()
    print(
        f"\n  stats: {stats.num_keys} keys, {stats.total_responses} completions stored;"
        f" hits={stats.hits} misses={stats.misses} partial={stats.partial_hits}"
        f" bypassed={stats.bypassed} hit_rate={stats.hit_rate:.2f}"
    )
    await cached.aclose()  # commits the write-behind queue to disk

    print("\n2. A new CachedClient over the same file (as after a restart)\n")
    reopened = CachedClient(client, store=SQLiteStore(store_path))
    w = Walk(reopened)
    back = await w.step(
        "n=5 from disk", 5, 0, reopened.generate(prompt, sampling_params=sampled(n=5))
    )
    if [r.text for r in back] != [r.text for r in five]:
        raise Failed("the reopened cache returns the same five completions")
    await reopened.aclose()


async def main() -> int:
    async with sglang_server() as url, SGLangClient(url) as client:
        await client.wait_for_ready(timeout=120)
        with tempfile.TemporaryDirectory(prefix="cached-client-example-") as cache_dir:
            try:
                await walk(client, cache_dir)
            except Failed as exc:
                print(f"\nFAILED: {exc}", file=sys.stderr)
                return 1
    print("\nDone.")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
