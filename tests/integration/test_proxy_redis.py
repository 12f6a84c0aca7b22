"""Two sglang-cached processes sharing one Redis: one cache, one generation per key.

Needs a Redis server at ``REDIS_URL`` (default redis://127.0.0.1:6379/0); skipped when none
answers, unless ``REQUIRE_REDIS=1``. Each test uses its own key prefix and removes only it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from sglang_client.cache import RedisStore

from . import test_proxy
from ._relay import CountingRelay
from .test_proxy import ProxyProcess, fresh

proxies = test_proxy.proxies  # the fixture, shared

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_answers() -> bool:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception:
        return False
    return True


@pytest.fixture
def prefix() -> Iterator[str]:
    if not redis_answers():
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(f"REQUIRE_REDIS=1 but no Redis answers at {REDIS_URL}")
        pytest.skip(f"no Redis server answers at {REDIS_URL} (set REDIS_URL or start one)")
    name = f"sglang-cached-test:{uuid.uuid4().hex}:"
    yield name

    async def cleanup() -> None:
        store = RedisStore(REDIS_URL, prefix=name)
        await store.clear()
        await store.aclose()

    asyncio.run(cleanup())


@pytest.fixture
def paced(paced_url: str) -> Iterator[CountingRelay]:
    """A server that takes its time per token, counted: concurrent requests overlap upstream."""
    with CountingRelay(paced_url) as counted:
        yield counted


def test_two_proxies_share_one_cache_and_one_generation(
    proxies: Callable[..., ProxyProcess], prefix: str, paced: CountingRelay
) -> None:
    relay = paced
    args = ("--store", REDIS_URL, "--redis-prefix", prefix, "--quiet")
    a, b = proxies(relay.url, *args), proxies(relay.url, *args)
    prompt = fresh()
    generated = relay.generated
    miss = a.generate(prompt, max_new_tokens=4)
    assert miss.headers["x-cache"] == "MISS"
    hit = b.generate(prompt, max_new_tokens=4)
    assert (hit.headers["x-cache"], hit.content) == ("HIT", miss.content)
    assert relay.generated == generated + 1

    prompt = fresh()
    barrier = threading.Barrier(2)
    answers: dict[str, httpx.Response] = {}

    def ask(name: str, proxy: ProxyProcess) -> None:
        barrier.wait(timeout=10)
        # 200 tokens (no early end): the two requests overlap upstream, so coalescing is
        # what keeps it to one generation.
        answers[name] = proxy.generate(prompt, max_new_tokens=200, ignore_eos=True)

    threads = [threading.Thread(target=ask, args=item) for item in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert answers["a"].status_code == answers["b"].status_code == 200
    assert answers["a"].json()["text"] == answers["b"].json()["text"]
    # The waiter is served from the cache: a hit.
    labels = sorted(r.headers["x-cache"] for r in answers.values())
    assert labels == ["HIT", "MISS"]
    assert relay.generated == generated + 2
    assert a.stats()["num_keys"] == b.stats()["num_keys"] == 2
