"""A counting relay in front of the server under test (the fake or a real SGLang).

The proxy tests assert how many completions reached the upstream ("a hit generates nothing",
"n = 5 after 3 generates 2"). The fake can count that itself, a real SGLang cannot, so these
tests put this relay between the proxy and the server: it forwards every request unchanged
(streams as they arrive) and counts the completions each successful generation asked for
(``n`` times the number of prompts).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import aiohttp

from sglang_client.testing._server import ThreadedServer

__all__ = ["CountingRelay"]

_HOP = {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive"}
_GENERATION = ("/generate", "/v1/chat/completions", "/v1/completions")


def _completions(path: str, raw: bytes) -> int:
    """How many completions a generation request asks for (0 if it cannot be read)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return 0
    if not isinstance(body, dict):
        return 0
    if path == "/generate":
        params = body.get("sampling_params") or {}
        first = params[0] if isinstance(params, list) and params else params
        n = first.get("n", 1) if isinstance(first, dict) else 1
        text, ids = body.get("text"), body.get("input_ids")
        if isinstance(text, list):
            prompts = len(text)
        elif isinstance(ids, list) and ids and isinstance(ids[0], list):
            prompts = len(ids)
        else:
            prompts = 1
        return int(n or 1) * prompts
    prompt = body.get("prompt")
    prompts = (
        len(prompt)
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list))
        else 1
    )
    return int(body.get("n") or 1) * prompts


class CountingRelay:
    """Forward to ``upstream``; count requests per path and completions generated.

    Use as a context manager; ``url`` is where to send requests.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: Counter[str] = Counter()
        self._generated = 0
        self._lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._server = ThreadedServer(self, lifespan="on")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def generated(self) -> int:
        """Completions the upstream generated for successful requests so far."""
        with self._lock:
            return self._generated

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def __enter__(self) -> CountingRelay:
        self._server.start(timeout=20)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(timeout=20)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._session is not None:
                        await self._session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        path = scope["path"]
        with self._lock:
            self.requests[path] += 1
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_read=900)
            )
        target = self.upstream + scope.get("raw_path", path.encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in _HOP
        ]
        try:
            async with self._session.request(
                scope["method"], target, data=raw or None, headers=headers, allow_redirects=False
            ) as response:
                generation = scope["method"] in ("POST", "PUT") and path in _GENERATION
                if response.status == 200 and generation:
                    with self._lock:
                        self._generated += _completions(path, raw)
                out = [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in response.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection")
                ]
                await send(
                    {"type": "http.response.start", "status": response.status, "headers": out}
                )
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except aiohttp.ClientError as exc:
            body = f"relay: upstream failed: {exc}".encode()
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": body})
