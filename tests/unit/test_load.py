"""Server load: parsing SGLang's /metrics and /server_info, the fake's queue, and the proxy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import httpx
import pytest

from sglang_client import SGLangClient
from sglang_client._load import load_from_metrics, load_from_server_info
from sglang_client.errors import APITimeoutError
from sglang_client.testing import FakeSGLangServer

from ._serve import proxy_app, serve

RECORDED = Path(__file__).resolve().parents[1] / "fidelity" / "recorded"


def _recorded_body(name: str) -> str:
    return (RECORDED / f"{name}.txt").read_text().split("### body\n", 1)[1]


def test_real_sglang_metrics_parse_into_a_load() -> None:
    load = load_from_metrics(_recorded_body("metrics"), read_at=1.0)
    assert load.source == "metrics" and load.read_at == 1.0
    assert (load.running_requests, load.queue_length) == (0, 0)
    assert load.kv_token_capacity == 20000
    assert load.token_usage == 0.0 and load.cache_hit_rate == 0.0
    assert load.gen_throughput is not None and load.gen_throughput > 0
    assert set(load.memory_gb) == {"weight", "kvcache", "graph"}
    assert load.memory_gb["kvcache"] == pytest.approx(0.0047686, rel=1e-3)


def test_real_sglang_server_info_parses_into_a_load() -> None:
    info = json.loads(_recorded_body("server_info"))
    load = load_from_server_info(info, read_at=2.0)
    assert load.source == "server_info"
    assert load.kv_token_capacity == 20000
    assert load.queue_length is None and load.running_requests is None  # not in server_info
    assert load.memory_gb["kvcache"] == pytest.approx(0.005)
    assert load.gen_throughput == 0.0


def test_several_ranks_add_up() -> None:
    text = "\n".join(
        [
            "# TYPE sglang:num_running_reqs gauge",
            'sglang:num_running_reqs{tp_rank="0"} 3.0',
            'sglang:num_running_reqs{tp_rank="1"} 4.0',
            "# TYPE sglang:token_usage gauge",
            'sglang:token_usage{tp_rank="0"} 0.25',
            'sglang:token_usage{tp_rank="1"} 0.5',
            "",
        ]
    )
    load = load_from_metrics(text, read_at=0.0)
    assert (load.running_requests, load.token_usage) == (7, 0.5)
    assert load.queue_length is None  # not reported: never guessed


@pytest.mark.anyio
async def test_the_fakes_queue_rises_and_empties_and_wait_for_ready_waits() -> None:
    config = {"latency_per_token": 0.02, "max_running_requests": 2, "enable_metrics": True}
    params = {"max_new_tokens": 40, "ignore_eos": True}
    async with FakeSGLangServer(**config) as server:
        async with SGLangClient(server.url, timeout=60) as client:
            peak = (0, 0)
            async with anyio.create_task_group() as group:
                for i in range(5):
                    group.start_soon(lambda i=i: client.generate(f"q{i}", sampling_params=params))
                for _ in range(500):
                    load = await client.load()
                    peak = max(peak, (load.queue_length or 0, load.running_requests or 0))
                    if peak == (3, 2):
                        break
                    await anyio.sleep(0.01)
                assert peak == (3, 2)
                with pytest.raises(APITimeoutError, match="queued"):
                    await client.wait_for_ready(timeout=0.2, interval=0.02, max_queue=0)
                started = time.monotonic()
                await client.wait_for_ready(timeout=30, interval=0.02, max_queue=0)
                assert (await client.load()).queue_length == 0
                assert time.monotonic() - started > 0.1  # it did wait for the queue
            settled = await client.load()
    assert (settled.queue_length, settled.running_requests) == (0, 0)


def test_the_proxy_shows_the_upstreams_load() -> None:
    with FakeSGLangServer(enable_metrics=True) as fake, serve(proxy_app(fake.url)) as url:
        health = httpx.get(url + "/health", timeout=30).json()
        metrics = httpx.get(url + "/metrics", timeout=30).text
    load = health["upstream"]["load"]
    assert load["source"] == "metrics" and load["queue_length"] == 0
    assert "sglang_cached_upstream_queue_length 0.0" in metrics
    assert "sglang_cached_upstream_kv_token_capacity 1000000.0" in metrics


def test_the_proxy_without_an_upstream_still_answers() -> None:
    with serve(proxy_app("http://127.0.0.1:9")) as url:
        health = httpx.get(url + "/health", timeout=30).json()
        metrics = httpx.get(url + "/metrics", timeout=30)
    assert health["upstream"]["load"] is None
    assert metrics.status_code == 200 and "sglang_cached_upstream_queue_length" not in metrics.text
