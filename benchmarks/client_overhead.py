"""Client overhead: SGLangClient vs raw httpx, raw aiohttp and the openai SDK, in one run.

The fake SGLang server runs in its own process with zero latency, so what is measured is the
client side (plus a constant server cost shared by every row). Each client is measured in
several interleaved rounds; the table shows medians and ratios. CPU steal is recorded per figure
because this machine's speed swings between runs.

    .venv/bin/python benchmarks/client_overhead.py [--requests 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import openai  # noqa: E402
from _common import (  # noqa: E402
    StealMeter,
    free_port,
    median,
    percentile,
    print_table,
    serve_process,
)

from sglang_client import SGLangClient  # noqa: E402

PROMPT = "The capital of France is"
BODY = {"text": PROMPT, "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
STREAM_TOKENS = 256

Call = Callable[[], Awaitable[object]]


async def drive(call: Call, concurrency: int, total: int) -> tuple[float, list[float], float]:
    """Run ``total`` calls with ``concurrency`` workers; return (req/s, latencies, steal%)."""
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    meter = StealMeter()
    meter.start()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return total / elapsed, latencies, meter.stop()


Close = Callable[[], Awaitable[None]]


async def make_clients(url: str, concurrency: int) -> dict[str, tuple[Call, Close]]:
    sgl = SGLangClient(url, max_connections=max(concurrency, 1))
    raw_httpx = httpx.AsyncClient(
        base_url=url, limits=httpx.Limits(max_connections=max(concurrency, 1)), timeout=60
    )
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(concurrency, 1)),
        timeout=aiohttp.ClientTimeout(total=60),
    )
    oai = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)

    async def sgl_generate() -> object:
        return await sgl.generate(PROMPT, sampling_params=BODY["sampling_params"])

    async def sgl_completion() -> object:
        return await sgl.completion(PROMPT, max_tokens=8, temperature=0)

    async def httpx_generate() -> object:
        response = await raw_httpx.post("/generate", json=BODY)
        response.raise_for_status()
        return response.json()

    async def aiohttp_generate() -> object:
        async with session.post(f"{url}/generate", json=BODY) as response:
            response.raise_for_status()
            return json.loads(await response.read())

    async def openai_completion() -> object:
        return await oai.completions.create(
            model="default", prompt=PROMPT, max_tokens=8, temperature=0
        )

    return {
        "SGLangClient.generate": (sgl_generate, sgl.aclose),
        "SGLangClient.completion (/v1)": (sgl_completion, sgl.aclose),
        "httpx default transport": (httpx_generate, raw_httpx.aclose),
        "aiohttp": (aiohttp_generate, session.close),
        "openai.AsyncOpenAI (/v1)": (openai_completion, oai.close),
    }


async def stream_rate(url: str, rounds: int) -> list[list[object]]:
    """Streamed chunks/s decoded by SGLangClient vs a minimal aiohttp line reader."""
    params = {"max_new_tokens": STREAM_TOKENS, "ignore_eos": True, "temperature": 0}
    body = {"text": PROMPT, "stream": True, "sampling_params": params}
    results: dict[str, list[float]] = {"SGLangClient.generate_stream": [], "aiohttp lines": []}
    async with SGLangClient(url) as client, aiohttp.ClientSession() as session:
        for _ in range(rounds):
            started = time.perf_counter()
            chunks = 0
            for _ in range(10):
                async for _chunk in client.generate_stream(PROMPT, sampling_params=params):
                    chunks += 1
            results["SGLangClient.generate_stream"].append(chunks / (time.perf_counter() - started))
            started = time.perf_counter()
            chunks = 0
            for _ in range(10):
                async with session.post(f"{url}/generate", json=body) as response:
                    async for line in response.content:
                        if line.startswith(b"data: {"):
                            json.loads(line[6:])
                            chunks += 1
            results["aiohttp lines"].append(chunks / (time.perf_counter() - started))
    base = median(results["aiohttp lines"])
    return [[name, f"{median(v):,.0f}", f"{median(v) / base:.2f}x"] for name, v in results.items()]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per figure at c=64")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ["-m", "sglang_client.testing", "--host", "127.0.0.1", "--port", str(port)]
    with serve_process(server, f"{url}/health"):
        rows = []
        for concurrency in (1, 64):
            total = args.requests if concurrency > 1 else max(200, args.requests // 10)
            clients = await make_clients(url, concurrency)
            for call, _ in clients.values():  # warm up connections and code paths
                await asyncio.gather(*(call() for _ in range(min(concurrency, 32))))
            rates: dict[str, list[float]] = {name: [] for name in clients}
            lats: dict[str, list[float]] = {name: [] for name in clients}
            steals: dict[str, list[float]] = {name: [] for name in clients}
            for _ in range(args.rounds):
                for name, (call, _) in clients.items():
                    rate, latencies, steal = await drive(call, concurrency, total)
                    rates[name].append(rate)
                    lats[name].extend(latencies)
                    steals[name].append(steal)
            for _, close in clients.values():
                await close()
            base_httpx = median(rates["httpx default transport"])
            base_aiohttp = median(rates["aiohttp"])
            for name in clients:
                rate = median(rates[name])
                rows.append(
                    [
                        name,
                        concurrency,
                        f"{rate:,.0f}",
                        f"{percentile(lats[name], 50) * 1e3:.2f}",
                        f"{percentile(lats[name], 99) * 1e3:.2f}",
                        f"{rate / base_httpx:.2f}x",
                        f"{rate / base_aiohttp:.2f}x",
                        f"{max(steals[name]):.1f}",
                    ]
                )
        print(f"\nRequests against the fake server (zero latency), median of {args.rounds} rounds")
        print_table(
            ["client", "conc", "req/s", "p50 ms", "p99 ms", "vs httpx", "vs aiohttp", "steal%"],
            rows,
        )
        print(f"\nStreaming: {STREAM_TOKENS} tokens per request, 10 requests per round")
        print_table(["decoder", "chunks/s", "vs aiohttp"], await stream_rate(url, args.rounds))


if __name__ == "__main__":
    asyncio.run(main())
