"""Streams through sglang-cached arrive as they are produced, and stop when the client leaves.

The upstream here is a tiny ASGI app whose streams send one event, then wait for the test to
open a gate: a proxy that buffered would never deliver the first event, so nothing depends on
timing. It also records when its client (the proxy) hangs up.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from . import test_proxy
from .test_proxy import ProxyProcess, fresh

proxies = test_proxy.proxies  # the fixture, shared

Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def chunk(text: str, done: bool) -> bytes:
    meta = {
        "id": "r1",
        "finish_reason": {"type": "length", "length": 2} if done else None,
        "prompt_tokens": 3,
        "completion_tokens": 2 if done else 1,
        "cached_tokens": 0,
    }
    event = {"text": text, "output_ids": [5, 6] if done else [5], "meta_info": meta}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class GatedUpstream:
    """Serves ``/stream`` and a streaming ``/generate``, each gated after its first event."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.hung_up = threading.Event()
        self.url = ""

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        path = scope["path"]
        if path in ("/health", "/model_info"):
            body = b'{"model_path": "gated"}'
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        first, rest = (b"data: one\n\n", b"data: two\n\n")
        if path == "/generate":
            first, rest = chunk(" a", False), chunk(" a b", True) + b"data: [DONE]\n\n"
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.hung_up.set()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await anyio.to_thread.run_sync(self.gate.wait, abandon_on_cancel=True)
            await send({"type": "http.response.body", "body": rest})
            tg.cancel_scope.cancel()


@pytest.fixture
def upstream() -> Iterator[GatedUpstream]:
    app = GatedUpstream()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    app.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        yield app
    finally:
        app.gate.set()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def first_event(lines: Iterator[str]) -> str:
    for line in lines:
        if line:
            return line
    raise AssertionError("the stream ended without an event")


def test_passthrough_stream_arrives_as_produced(
    proxies: Callable[..., ProxyProcess], upstream: GatedUpstream
) -> None:
    proxy = proxies(upstream.url, "--quiet", "--store", "memory")
    with httpx.stream("GET", proxy.url + "/stream", timeout=20) as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.iter_lines()
        assert first_event(lines) == "data: one"  # the upstream is still waiting on the gate
        upstream.gate.set()
        assert [line for line in lines if line] == ["data: two"]


def test_passthrough_stream_stops_when_the_client_leaves(
    proxies: Callable[..., ProxyProcess], upstream: GatedUpstream
) -> None:
    proxy = proxies(upstream.url, "--quiet", "--store", "memory")
    with httpx.stream("GET", proxy.url + "/stream", timeout=20) as response:
        assert first_event(response.iter_lines()) == "data: one"
    assert upstream.hung_up.wait(timeout=10), "the proxy kept the upstream stream open"


def test_cached_stream_miss_is_incremental_and_a_hangup_stores_nothing(
    proxies: Callable[..., ProxyProcess], upstream: GatedUpstream
) -> None:
    proxy = proxies(upstream.url, "--quiet", "--store", "memory")
    body = {"text": fresh(), "stream": True, "sampling_params": {"max_new_tokens": 2}}
    with httpx.stream("POST", proxy.url + "/generate", json=body, timeout=20) as response:
        assert response.headers["x-cache"] == "MISS"
        assert json.loads(first_event(response.iter_lines())[6:])["text"] == " a"
    assert upstream.hung_up.wait(timeout=10), "the proxy kept generating for nobody"
    assert proxy.stats()["num_keys"] == 0

    upstream.gate.set()
    with httpx.stream("POST", proxy.url + "/generate", json=body, timeout=20) as response:
        assert response.headers["x-cache"] == "MISS"
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["text"] == " a b"
    replay = proxy.post("/generate", body)
    assert replay.headers["x-cache"] == "HIT"
    assert replay.text.count("data: ") == 2  # one whole-completion event, then [DONE]
