"""Serve an ASGI app (the proxy) with uvicorn in a thread on a free loopback port, for tests
that need real HTTP on the wire (raw request targets, headers) without a subprocess."""

from __future__ import annotations

import http.client
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from sglang_client import SGLangClient
from sglang_client.cache import CachedClient, MemoryStore
from sglang_client.cache.stores.base import CacheStore
from sglang_client.server import ProxyApp, ProxyConfig, create_app
from sglang_client.testing._server import ThreadedServer

__all__ = ["proxy_app", "raw_request", "serve"]


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` (lifespan on) until the block ends; yield its base URL."""
    server = ThreadedServer(app, lifespan="on")
    server.start(timeout=20)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop(timeout=20)


def proxy_app(
    upstream: str,
    *,
    upstream_key: str | None = None,
    store: CacheStore | None = None,
    **config: Any,
) -> ProxyApp:
    """A proxy over ``upstream`` with a memory store (unless given) and no retries."""
    client = SGLangClient(upstream, api_key=upstream_key, max_retries=0)
    cached = CachedClient(client, store if store is not None else MemoryStore())
    settings = ProxyConfig(
        upstream_url=upstream, upstream_api_key=upstream_key, quiet=True, **config
    )
    return create_app(cached, settings)


def raw_request(
    url: str,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """Send ``method target`` exactly as written (nothing normalises the target)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
        all_headers = {"Content-Length": str(len(body or b"")), **(headers or {})}
        for name, value in all_headers.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
