"""sglang-cached keeps what it acknowledged: restarts, kill -9 after a flush, SIGTERM drains."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest

from sglang_client.cache import SQLiteStore
from sglang_client.testing import FakeSGLangServer

from . import test_proxy
from ._relay import CountingRelay
from .conftest import stop_process
from .test_proxy import ProxyProcess, fresh

proxies = test_proxy.proxies  # the fixture, shared


def test_restart_keeps_the_cache(
    proxies: Callable[..., ProxyProcess], relay: CountingRelay, tmp_path: Path
) -> None:
    path = str(tmp_path / "persist")
    first = proxies(relay.url, "--cache-path", path, "--quiet")
    prompt = fresh()
    miss = first.generate(prompt)
    stop_process(first.proc)
    assert first.proc.returncode == 0
    second = proxies(relay.url, "--cache-path", path, "--quiet")
    hit = second.generate(prompt)
    assert hit.headers["x-cache"] == "HIT"
    assert hit.content == miss.content


def test_kill_9_loses_nothing_acknowledged_once_flushed(
    proxies: Callable[..., ProxyProcess], relay: CountingRelay, tmp_path: Path
) -> None:
    path = str(tmp_path / "crash")
    first = proxies(relay.url, "--cache-path", path, "--quiet")
    prompts = [fresh() for _ in range(10)]
    answers = [first.generate(p).content for p in prompts]
    first.wait_flushed()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    generated = relay.generated
    second = proxies(relay.url, "--cache-path", path, "--quiet")
    for prompt, answer in zip(prompts, answers, strict=True):
        hit = second.generate(prompt)
        assert (hit.headers["x-cache"], hit.content) == ("HIT", answer)
    assert relay.generated == generated


@pytest.mark.fake_only("latency_per_token and engine.inflight: SIGTERM mid-generation")
def test_sigterm_finishes_in_flight_then_flushes_and_exits_0(
    proxies: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    path = tmp_path / "drain"
    with FakeSGLangServer(latency_per_token=0.1) as slow:
        proxy = proxies(slow.url, "--cache-path", str(path), "--quiet")
        result: dict[str, httpx.Response] = {}
        # 2 s of generation (ignore_eos: a sampled answer could end at once): the request is in
        # flight when SIGTERM arrives.
        worker = threading.Thread(
            target=lambda: result.update(
                r=proxy.generate("drain me", max_new_tokens=20, ignore_eos=True)
            )
        )
        worker.start()
        deadline = time.monotonic() + 10
        while not slow.app.engine.inflight:
            assert time.monotonic() < deadline, "the request never reached the upstream"
            time.sleep(0.01)
        proxy.proc.send_signal(signal.SIGTERM)
        refused = False
        while worker.is_alive() and not refused:  # new connections are turned away meanwhile
            try:
                httpx.get(proxy.url + "/health", timeout=1)
            except httpx.TransportError:
                refused = True
            time.sleep(0.02)
        worker.join(timeout=30)
        assert result["r"].status_code == 200
        assert result["r"].headers["x-cache"] == "MISS"
        assert proxy.proc.wait(timeout=30) == 0
    assert refused

    async def stored() -> int:
        store = SQLiteStore(path / "cache.db")
        try:
            return (await store.count()).num_keys
        finally:
            await store.aclose()

    assert anyio.run(stored) == 1


def test_sigint_is_a_clean_exit_too(
    proxies: Callable[..., ProxyProcess], relay: CountingRelay
) -> None:
    proxy = proxies(relay.url, "--quiet", "--store", "memory")
    proxy.proc.send_signal(signal.SIGINT)
    assert proxy.proc.wait(timeout=30) == 0
    assert "Traceback" not in proxy.log.read_text()
