"""SGLang's own abort check, restated for any base URL.

SGLang's ``test/srt/test_abort.py`` starts 16 long generations from a process, kills the
process half a second later and expects the server to abort them all and hold on to nothing
(no leaked KV memory). Here: the same from a killed child process, straight to the server and
through the proxy (which must turn the vanished client into upstream aborts); then the server's
running and queued requests fall back to 0, its KV cache holds no running tokens and a new
request is served. KV usage is not compared: the radix cache keeps the aborted prefixes,
as it should. Memory accounting itself is the server's own test (it needs its internals).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest

from sglang_client import SGLangClient

from . import test_proxy
from .test_proxy import ProxyProcess

proxies = test_proxy.proxies

ABORTED_WITHIN = 10.0
PROMPT = """
System: You are a helpful assistant.
User: What is the capital of France?
Assistant: The capital of France is
"""


def _flood(url: str) -> None:
    """16 concurrent long generations; this process is killed while they run."""

    def one(_: int) -> None:
        # ignore_eos: an answer that ends early (the fake samples EOS now and then) would
        # finish before the kill and test nothing.
        params = {"temperature": 0, "max_new_tokens": 1900, "ignore_eos": True}
        body = {"text": PROMPT, "sampling_params": params}
        httpx.post(url + "/generate", json=body, timeout=120)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(16)))


@pytest.mark.gateway_differs(
    "routes no worker's /get_load, so nothing can watch its running requests"
)
@pytest.mark.parametrize("via", ["server", "proxy"])
@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_killed_clients_leave_nothing_running(
    paced_url: str, proxies: Callable[..., ProxyProcess], via: str
) -> None:
    target = paced_url if via == "server" else proxies(paced_url, "--quiet").url
    async with SGLangClient(paced_url, timeout=60) as client:
        process = multiprocessing.get_context("spawn").Process(target=_flood, args=(target,))
        process.start()
        try:
            deadline = time.monotonic() + 30
            while (await client.load()).running_requests in (None, 0):
                assert time.monotonic() < deadline, "the generations never started"
                await anyio.sleep(0.05)
        finally:
            await anyio.sleep(0.5)
            process.kill()
            process.join(timeout=10)
        # Unaborted, the 16 x 1900 tokens would keep the server busy far longer than this.
        deadline = time.monotonic() + ABORTED_WITHIN
        load = await client.load()
        while (load.running_requests or 0) + (load.queue_length or 0) > 0:
            assert time.monotonic() < deadline, f"still busy {ABORTED_WITHIN} s after: {load}"
            await anyio.sleep(0.2)
            load = await client.load()
        served = await client.generate(PROMPT, sampling_params={"max_new_tokens": 4})
    assert not isinstance(served, list) and served.meta_info.completion_tokens
