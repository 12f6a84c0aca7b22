"""The response cache, in process: hit latency, misses/s and writes/s for each store.

Compared in the same run with the simple design users start from: a JSON-lines file that is
rewritten on every write. Also: hit latency with 1k vs 1M entries (it must stay flat) and the time
to open a 1M-entry SQLite store. The upstream is an in-process stub that answers at once, so the
figures are the cache's own cost.

    .venv/bin/python benchmarks/cache.py [--big 1000000] [--redis-big 100000] [--samples 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import StealMeter, percentile, print_table  # noqa: E402

from sglang_client.cache import CachedClient, MemoryStore, RedisStore, SQLiteStore  # noqa: E402
from sglang_client.cache.keys import cache_key  # noqa: E402
from sglang_client.cache.stores.base import CacheStore  # noqa: E402

MODEL = "bench-model"
COMPLETION = {
    "text": " The sea is a quiet mirror for the sky tonight.",
    "output_ids": list(range(100, 116)),
    "meta_info": {
        "id": "0" * 32,
        "finish_reason": {"type": "length", "length": 16},
        "prompt_tokens": 12,
        "completion_tokens": 16,
        "cached_tokens": 0,
        "e2e_latency": 0.2,
    },
}


class StubUpstream:
    """Answers /generate at once; only what CachedClient calls."""

    async def request_json(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        n = (body.get("sampling_params") or {}).get("n", 1)
        return [dict(COMPLETION) for _ in range(n)] if n > 1 else dict(COMPLETION)


def body_for(i: int) -> dict[str, Any]:
    return {
        "text": f"Prompt number {i}: write about the sea.",
        "sampling_params": {"max_new_tokens": 16},
    }


def key_for(i: int) -> str:
    body = body_for(i)
    request = {"text": body["text"], "sampling_params": body["sampling_params"]}
    return cache_key("generate", MODEL, request)


async def fill(store: CacheStore, count: int, start: int = 0) -> float:
    """Insert ``count`` entries straight into the store; return seconds per write."""
    started = time.perf_counter()
    for i in range(start, start + count):
        body = body_for(i)
        request = {"text": body["text"], "sampling_params": body["sampling_params"]}
        await store.append(key_for(i), [COMPLETION], request=request)
        if store.pending_writes > 5000:  # stay inside the store's back-pressure bound
            await store.flush()
    await store.flush()
    return (time.perf_counter() - started) / max(1, count)


async def hit_latencies(cached: CachedClient, population: int, samples: int) -> list[float]:
    """Latencies of ``samples`` random hits over the first ``population`` entries."""
    import random

    rng = random.Random(1)
    # Warm up (code paths, the store's read cache as a real workload would) and start from a
    # clean heap, so the first figure does not pay for the fill's garbage.
    for _ in range(min(samples, 1000)):
        await cached.generate_json(body_for(rng.randrange(population)))
    gc.collect()
    return await _timed_hits(cached, population, samples, rng)


async def _timed_hits(cached: CachedClient, population: int, samples: int, rng: Any) -> list[float]:
    out = []
    for _ in range(samples):
        body = body_for(rng.randrange(population))
        started = time.perf_counter()
        result = await cached.generate_json(body)
        out.append(time.perf_counter() - started)
        assert result.status.value == "HIT", result.status
    return out


async def interleaved_hits(
    small: tuple[CachedClient, int], big: tuple[CachedClient, int], samples: int, block: int = 100
) -> tuple[list[float], list[float]]:
    """Hit latencies of two caches measured in alternating blocks, in the same time window.

    This machine's speed swings several-fold over minutes; measuring the small cache before
    the fill and the big one after it compared two different machines. Alternating short
    blocks gives both sizes the same share of every slow and fast spell.
    """
    import random

    rngs = (random.Random(1), random.Random(2))
    for (cached, population), rng in zip((small, big), rngs, strict=True):
        for _ in range(min(samples, 1000)):
            await cached.generate_json(body_for(rng.randrange(population)))
    gc.collect()
    out: tuple[list[float], list[float]] = ([], [])
    while len(out[1]) < samples:
        for (cached, population), rng, lat in zip((small, big), rngs, out, strict=True):
            lat.extend(await _timed_hits(cached, population, min(block, samples - len(lat)), rng))
    return out


async def misses_per_second(cached: CachedClient, count: int) -> float:
    offset = 10_000_000 + int(time.time() * 1000) % 1_000_000 * 100
    started = time.perf_counter()
    for i in range(offset, offset + count):
        await cached.generate_json(body_for(i))
    await cached.store.flush()
    return count / (time.perf_counter() - started)


class JSONLCache:
    """The baseline: a dict in memory, the whole file rewritten on every write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, list[dict[str, Any]]] = {}

    def get(self, key: str) -> list[dict[str, Any]] | None:
        return self.data.get(key)

    def put(self, key: str, completions: list[dict[str, Any]]) -> None:
        self.data.setdefault(key, []).extend(completions)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for k, v in self.data.items():
                f.write(json.dumps({"key": k, "completions": v}) + "\n")
        os.replace(tmp, self.path)


def jsonl_figures(tmp: Path, population: int, samples: int) -> tuple[list[float], float]:
    cache = JSONLCache(tmp / "cache.jsonl")
    for i in range(population):
        cache.data[key_for(i)] = [COMPLETION]
    cache.put(key_for(0), [])
    import random

    rng = random.Random(1)
    lat = []
    for _ in range(samples):
        started = time.perf_counter()
        i = rng.randrange(population)
        assert cache.get(key_for(i)) is not None
        lat.append(time.perf_counter() - started)
    writes = 200
    started = time.perf_counter()
    for i in range(population, population + writes):
        if cache.get(key_for(i)) is None:
            cache.put(key_for(i), [COMPLETION])
    return lat, writes / (time.perf_counter() - started)


def redis_url() -> str | None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        return None
    return url


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--redis-big", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=3_000)
    parser.add_argument("--misses", type=int, default=2_000)
    parser.add_argument(
        "--stores", default="memory,sqlite,sqlite-direct,redis", help="comma-separated subset"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sglang-cache-bench-"))
    rows: list[list[object]] = []
    flat_rows: list[list[object]] = []
    meter = StealMeter()
    try:
        redis = redis_url()
        prefix = f"sglang-cache-bench:{uuid.uuid4().hex}:"
        # "sqlite-direct" turns the store's small in-process read cache off, so every hit is a
        # primary-key lookup in the file: the fair way to see how lookups scale with size.
        wanted = args.stores.split(",")
        kinds = [k for k in ("memory", "sqlite", "sqlite-direct", "redis") if k in wanted]
        if not redis and "redis" in kinds:
            print("no Redis server answers: skipping the redis store")
            kinds.remove("redis")
        for kind in kinds:

            def make(name: str, kind: str = kind) -> CacheStore:
                if kind == "memory":
                    return MemoryStore()
                if kind == "sqlite":
                    return SQLiteStore(tmp / f"{kind}-{name}.db")
                if kind == "sqlite-direct":
                    return SQLiteStore(tmp / f"{kind}-{name}.db", read_cache_size=0)
                assert redis is not None
                return RedisStore(redis, prefix=f"{prefix}{name}:")

            meter.start()
            store = make("small")
            cached = CachedClient(StubUpstream(), store, namespace=MODEL)  # type: ignore[arg-type]
            write_cost = await fill(store, args.small)
            small = await hit_latencies(cached, args.small, args.samples)
            misses = await misses_per_second(cached, args.misses)
            # The big cache is a second store, filled while the small one stays open; then both
            # are measured side by side (see interleaved_hits).
            big_n = args.redis_big if kind == "redis" else args.big
            big_store = make("big")
            big_cached = CachedClient(StubUpstream(), big_store, namespace=MODEL)  # type: ignore[arg-type]
            big_write_cost = await fill(big_store, big_n)
            small_side, big = await interleaved_hits(
                (cached, args.small), (big_cached, big_n), args.samples
            )
            steal = meter.stop()
            open_time = None
            for each in (store, big_store):
                if kind == "redis":
                    await each.clear()
                await each.aclose()
            del big_store, big_cached
            gc.collect()
            if kind.startswith("sqlite"):
                started = time.perf_counter()
                reopened = SQLiteStore(tmp / f"{kind}-big.db")
                entry = await reopened.get(key_for(big_n - 1))
                open_time = time.perf_counter() - started
                assert entry is not None
                await reopened.aclose()
            rows.append(
                [
                    kind,
                    us(percentile(small, 50)),
                    us(percentile(small, 99)),
                    f"{misses:,.0f}",
                    f"{1 / write_cost:,.0f}",
                    f"{steal:.1f}",
                ]
            )
            flat_rows.append(
                [
                    kind,
                    f"{args.small:,}",
                    us(percentile(small_side, 50)),
                    f"{big_n:,}",
                    us(percentile(big, 50)),
                    f"{percentile(big, 50) / percentile(small_side, 50):.2f}x",
                    "-" if open_time is None else f"{open_time * 1e3:,.0f} ms",
                    f"{1 / big_write_cost:,.0f}",
                ]
            )
        base_lat, base_writes = jsonl_figures(tmp, args.small, args.samples)
        rows.append(
            [
                "JSONL rewrite (baseline)",
                us(percentile(base_lat, 50)),
                us(percentile(base_lat, 99)),
                "-",
                f"{base_writes:,.0f}",
                "-",
            ]
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nIn-process, {args.small:,} entries; hits through CachedClient.generate_json")
    print_table(["store", "hit p50 us", "hit p99 us", "misses/s", "writes/s", "steal%"], rows)
    base_writes_per_s = float(rows[-1][4].replace(",", ""))
    print(
        "\nwrites/s vs the JSONL baseline: "
        + ", ".join(
            f"{r[0]} {float(str(r[4]).replace(',', '')) / base_writes_per_s:,.0f}x"
            for r in rows[:-1]
        )
    )
    print(
        "\nHit latency as the store grows (must stay flat), the two sizes measured in"
        " alternating blocks; SQLite open time at the big size; write rate over the big fill"
    )
    headers = ["store", "small", "p50 us", "big", "p50 us", "big/small", "open", "fill writes/s"]
    print_table(headers, flat_rows)


if __name__ == "__main__":
    asyncio.run(main())
