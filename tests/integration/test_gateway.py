"""Behind SGLang's real Model Gateway (``smg`` from sglang-router 0.3.2) with fake workers.

Sessions stick to a worker by their routing key (``--policy manual``), forks follow their
parent, a worker stopped mid-run costs its sessions their cached prefix but no failed turn,
and two proxies sharing one Redis in front of the gateway generate each answer once.

Skipped when ``smg`` is not installed (``pip install 'sglang-client[gateway]'``), unless
``REQUIRE_GATEWAY=1`` (CI), which makes that a failure.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from sglang_client import NotFoundError, SGLangClient, routing_key
from sglang_client.errors import ServerSessionsUnavailable
from sglang_client.routing import ROUTING_KEY_HEADER
from sglang_client.sessions import SessionManager
from sglang_client.testing import FakeSGLangServer, GatewayCluster, find_smg

from .test_proxy import ProxyProcess, fresh, proxies  # noqa: F401 (the fixture)
from .test_proxy_redis import REDIS_URL, prefix  # noqa: F401 (the fixture)

pytestmark = pytest.mark.anyio

GREEDY = {"temperature": 0, "max_new_tokens": 8}


def require_smg() -> None:
    if find_smg() is None:
        if os.environ.get("REQUIRE_GATEWAY") == "1":
            pytest.fail("REQUIRE_GATEWAY=1 but smg is not installed (sglang-client[gateway])")
        pytest.skip("SGLang's Model Gateway is not installed: pip install 'sglang-client[gateway]'")


@pytest.fixture(scope="module")
def sticky() -> Iterator[GatewayCluster]:
    """Three fake workers behind ``smg --policy manual``."""
    require_smg()
    with GatewayCluster(3, policy="manual", enable_cache_report=True) as c:
        yield c


def served(cluster: GatewayCluster, native_only: bool = False) -> list[int]:
    """Generation requests each worker has answered so far (only ``/generate`` ones)."""
    out = []
    for worker in cluster.workers:
        stats = worker.app.stats
        count = stats.generate_requests
        if not native_only:
            count += stats.completion_requests + stats.chat_completion_requests
        out.append(count)
    return out


def moved(before: list[int], after: list[int]) -> list[int]:
    return [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if a != b]


def local_tokenizer(cluster: GatewayCluster) -> Any:
    """The workers' tokenizer in this process: smg 0.3 routes no /tokenize, so token-exact
    sessions behind it tokenize locally (a real deployment passes the model's HF tokenizer)."""
    return cluster.workers[0].app.tokenizer


async def test_sessions_and_their_forks_stay_on_one_worker(sticky: GatewayCluster) -> None:
    tokenizer = local_tokenizer(sticky)
    async with (
        SGLangClient(sticky.url) as client,
        SessionManager(client, tokenizer=tokenizer) as manager,
    ):
        sessions = [
            await manager.create_session(f"Session {i} of a long shared preamble. " * 8)
            for i in range(6)
        ]
        home: dict[str, int] = {}
        sent: dict[str, int] = {}  # each session's last prompt length: all of it is cached
        for turn in range(3):
            for s in sessions:
                before = served(sticky)
                r = await manager.generate(s.id, f" Question {turn}?", **GREEDY)
                [worker] = moved(before, served(sticky))
                assert home.setdefault(s.id, worker) == worker, f"turn {turn} of {s.id} moved"
                assert r.meta_info.cached_tokens >= sent.get(s.id, 0)
                sent[s.id] = r.meta_info.prompt_tokens
        parent = sessions[0]
        kids = await manager.fork_session(parent.id, 3)
        for kid in kids:
            before = served(sticky)
            r = await manager.generate(kid.id, " A branch?", **GREEDY)
            assert moved(before, served(sticky)) == [home[parent.id]]
            assert r.meta_info.cached_tokens >= sent[parent.id]  # the parent's whole prompt
        # Streams carry the key too: the request is sent inside the routed first step.
        before = served(sticky)
        async with manager.generate_stream(kids[0].id, " Streamed?", **GREEDY) as stream:
            chunks = [chunk async for chunk in stream]
        assert chunks[-1].finish_reason is not None
        assert moved(before, served(sticky)) == [home[parent.id]]
        # Forks that ask for their own key are placed like new sessions, then stick too.
        spread = await manager.fork_session(parent.id, 3, same_worker=False)
        keys = {k.routing_key for k in spread}
        assert len(keys) == 3 and parent.routing_key not in keys
        for kid in spread:
            places = set()
            for turn in range(2):
                before = served(sticky)
                await manager.generate(kid.id, f" Elsewhere {turn}?", **GREEDY)
                places.update(moved(before, served(sticky)))
            assert len(places) == 1


async def test_chat_sessions_and_plain_calls_stick_by_key(sticky: GatewayCluster) -> None:
    async with SGLangClient(sticky.url) as client, SessionManager(client) as manager:
        chat = await manager.create_session("Be brief.", chat=True, routing_key="tenant-7/user-1")
        places = set()
        for turn in range(3):
            before = served(sticky)
            await manager.generate(chat.id, f"Hello {turn}", max_tokens=4, temperature=0)
            places.update(moved(before, served(sticky)))
        with routing_key("tenant-7/user-1"):  # the same key from a plain call: same worker
            before = served(sticky)
            await client.completion("Plain call", max_tokens=2)
            places.update(moved(before, served(sticky)))
        assert len(places) == 1


async def test_server_sessions_fail_clearly_and_workers_are_listed(
    sticky: GatewayCluster,
) -> None:
    async with SGLangClient(sticky.url) as client:
        manager = SessionManager(client, server_sessions=True)
        with pytest.raises(ServerSessionsUnavailable, match="server_sessions=False"):
            await manager.create_session("x")
        assert len(manager) == 0
        workers = await client.workers()
    assert sorted(w.url for w in workers) == sorted(sticky.worker_urls)
    assert all(w.is_healthy for w in workers)
    with FakeSGLangServer() as plain:
        async with SGLangClient(plain.url) as client:
            with pytest.raises(NotFoundError):
                await client.workers()


async def test_a_stopped_worker_costs_its_sessions_the_prefix_not_a_turn() -> None:
    require_smg()
    with GatewayCluster(3, policy="manual", enable_cache_report=True) as c:
        # Until a health check (every second here) takes the stopped worker out, the gateway
        # still sends it the requests it pins there and answers 500 "error sending request";
        # the client retries those, and enough retries outlast one check interval.
        client = SGLangClient(c.url, max_retries=5)
        async with client, SessionManager(client, tokenizer=local_tokenizer(c)) as manager:
            # Each session its own long preamble: on another worker nothing of it is cached.
            sessions = [
                await manager.create_session(f"Preamble {i}: " + f"fact {i} " * 60)
                for i in range(6)
            ]
            home, sent = {}, {}
            for s in sessions:
                before = served(c)
                r = await manager.generate(s.id, " First?", **GREEDY)
                [home[s.id]] = moved(before, served(c))
                sent[s.id] = r.meta_info.prompt_tokens
            victim = home[sessions[0].id]
            stop = threading.Event()
            background: list[int] = []

            async def plain_load() -> None:
                # Keyless requests keep flowing through the gateway while the worker goes
                # (on /v1/completions, so that the session turns' /generate counts stay theirs).
                while not stop.is_set():
                    r = await client.completion("Background", max_tokens=2)
                    background.append(len(r.choices))
                    await asyncio.sleep(0.01)

            load = asyncio.create_task(plain_load())
            await asyncio.sleep(0.1)
            c.stop_worker(victim)
            at_stop = len(background)
            rehomed = {}
            for turn in range(2):
                for s in sessions:
                    before = served(c, native_only=True)
                    r = await manager.generate(s.id, f" Again {turn}?", **GREEDY)
                    [now] = moved(before, served(c, native_only=True))
                    meta = r.meta_info
                    if home[s.id] != victim:
                        assert now == home[s.id]
                        assert meta.cached_tokens >= sent[s.id]
                    elif turn == 0:  # re-homed: the whole prefix is computed again
                        assert now != victim
                        rehomed[s.id] = now
                        assert meta.cached_tokens < meta.prompt_tokens // 10
                    else:  # and stays on its new worker, cached again
                        assert now == rehomed[s.id]
                        assert meta.cached_tokens >= sent[s.id]
                    sent[s.id] = meta.prompt_tokens
            stop.set()
            await asyncio.wait_for(load, 30)
    assert rehomed, "no session lived on the stopped worker"
    assert len(background) > at_stop  # keyless requests kept succeeding through the others


def test_two_proxies_share_redis_behind_the_gateway(
    proxies: Callable[..., ProxyProcess],  # noqa: F811 (the fixture)
    prefix: str,  # noqa: F811 (the fixture)
) -> None:
    require_smg()
    config = {"latency_per_token": 0.002, "enable_cache_report": True}
    with GatewayCluster(2, policy="manual", **config) as cluster:
        args = ("--store", REDIS_URL, "--redis-prefix", prefix, "--quiet")
        a, b = proxies(cluster.url, *args), proxies(cluster.url, *args)
        prompts = [fresh() for _ in range(6)]
        barrier = threading.Barrier(12)
        answers: list[httpx.Response] = []
        lock = threading.Lock()

        def ask(proxy: ProxyProcess, text: str) -> None:
            barrier.wait(timeout=30)
            # 50 tokens, no early end: both proxies' requests overlap upstream.
            r = proxy.generate(text, max_new_tokens=50, ignore_eos=True)
            with lock:
                answers.append(r)

        threads = [
            threading.Thread(target=ask, args=(proxy, text)) for text in prompts for proxy in (a, b)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(answers) == 12 and all(r.status_code == 200 for r in answers)
        generated = sum(w.app.stats.completions_generated for w in cluster.workers)
        assert generated == len(prompts)  # one generation per key across both proxies
        labels = sorted(r.headers["x-cache"] for r in answers)
        assert labels == ["HIT"] * 6 + ["MISS"] * 6
        by_text: dict[str, set[str]] = {}
        for r in answers:
            by_text.setdefault(r.json()["meta_info"]["id"], set()).add(r.json()["text"])
        assert all(len(texts) == 1 for texts in by_text.values())
        # Hits from either proxy, each serving what the other generated.
        for text in prompts:
            for proxy in (a, b):
                assert (
                    proxy.generate(text, max_new_tokens=50, ignore_eos=True).headers["x-cache"]
                    == "HIT"
                )
        # The proxies pass the caller's routing key on with their misses: one worker.
        places = set()
        for proxy in (a, b) * 3:
            before = served(cluster)
            body = {"text": fresh(), "sampling_params": {"max_new_tokens": 2}}
            r = proxy.post("/generate", body, **{ROUTING_KEY_HEADER: "conversation-9"})
            assert (r.status_code, r.headers["x-cache"]) == (200, "MISS")
            places.update(moved(before, served(cluster)))
        assert len(places) == 1
        # A key that is no valid header value upstream is refused, never sent on.
        before = served(cluster)
        body = {"text": fresh(), "sampling_params": {"max_new_tokens": 2}}
        r = a.post("/generate", body, **{ROUTING_KEY_HEADER: "two words"})
        assert r.status_code == 400 and "X-SMG-Routing-Key" in r.text
        assert served(cluster) == before
