"""``SGLangClient.load()`` on the server under test: the figures move with the load."""

from __future__ import annotations

import time

import anyio
import pytest

from sglang_client import ServerLoad, SGLangClient

pytestmark = pytest.mark.anyio


@pytest.mark.gateway_differs("routes no worker's /metrics, /get_load or /server_info")
async def test_load_rises_under_load_and_falls_back(paced_url: str) -> None:
    # paced_url runs at most 4 requests at once (both the fake and make test-real's SGLang):
    # 6 at once must queue.
    long_prompt = "word " * 500  # a long prompt: its tokens sit in the KV cache while it runs
    params = {"max_new_tokens": 300, "ignore_eos": True, "temperature": 0.8}
    seen: list[ServerLoad] = []
    async with SGLangClient(paced_url, timeout=120) as client:
        idle = await client.load()
        assert idle.source == "metrics"  # paced servers run with --enable-metrics
        assert idle.kv_token_capacity and idle.kv_token_capacity > 0
        assert 0 <= (idle.cache_hit_rate or 0) <= 1
        done = anyio.Event()

        async def busy() -> None:
            async with anyio.create_task_group() as group:
                for i in range(6):
                    text = long_prompt if i == 0 else f"short {i}"
                    group.start_soon(lambda t=text: client.generate(t, sampling_params=params))
            done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(busy)
            for _ in range(400):
                load = await client.load()
                seen.append(load)
                queued = max(s.queue_length or 0 for s in seen)
                running = max(s.running_requests or 0 for s in seen)
                if done.is_set() or (queued >= 1 and running >= 2):
                    break
                await anyio.sleep(0.02)
        for _ in range(200):  # the gauges settle once the requests are done
            after = await client.load()
            if after.running_requests == 0 and after.queue_length == 0:
                break
            await anyio.sleep(0.05)
    assert max(s.running_requests or 0 for s in seen) >= 2
    assert max(s.queue_length or 0 for s in seen) >= 1
    assert max(s.kv_tokens_used or 0 for s in seen) >= 300  # the long prompt, at least
    assert max(s.token_usage or 0 for s in seen) > 0
    assert (after.running_requests, after.queue_length) == (0, 0)
    assert after.read_at <= time.time()


@pytest.mark.gateway_differs("routes no worker's /metrics, /get_load or /server_info")
async def test_health_detailed_carries_the_load(sglang_url: str) -> None:
    async with SGLangClient(sglang_url) as client:
        plain = await client.health()
        detailed = await client.health(detailed=True)
    assert plain.load is None
    assert detailed.available and detailed.load is not None
    assert detailed.load.kv_token_capacity  # both sources report the capacity
