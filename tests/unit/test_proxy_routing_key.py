"""The proxy passes a caller's ``X-SMG-Routing-Key`` upstream only when it is a safe header
value; anything else is a 400 that reaches nothing (hits never go upstream at all)."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_client import SGLangClient
from sglang_client.cache import CachedClient, MemoryStore
from sglang_client.routing import MAX_ROUTING_KEY
from sglang_client.server import ProxyConfig, create_app

from ._upstream import Upstream

pytestmark = pytest.mark.anyio


class HeaderUpstream(Upstream):
    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str | None] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/generate":
            self.keys.append(request.headers.get("x-smg-routing-key"))
        return super().handle(request)


async def ask(key: bytes | None, text: str) -> tuple[httpx.Response, HeaderUpstream]:
    upstream = HeaderUpstream()
    client = SGLangClient(
        "http://upstream.test", transport=httpx.MockTransport(upstream.handle), max_retries=0
    )
    app = create_app(
        CachedClient(client, MemoryStore()),
        ProxyConfig(upstream_url="http://127.0.0.1:9", quiet=True),
    )
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"x-smg-routing-key", key))
    body = json.dumps({"text": text, "sampling_params": {"temperature": 0.7}}).encode()
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as http:
        response = await http.post("/generate", content=body, headers=headers)
        if response.status_code == 200:  # the same again is a hit: nothing goes upstream
            again = await http.post("/generate", content=body, headers=headers)
            assert again.headers["x-cache"] == "HIT"
    await app.aclose()
    return response, upstream


async def test_a_valid_key_goes_upstream_with_the_miss() -> None:
    response, upstream = await ask(b"tenant-7/user:42", "a")
    assert response.status_code == 200
    assert upstream.keys == ["tenant-7/user:42"]  # once: the hit did not go upstream
    response, upstream = await ask(None, "b")
    assert response.status_code == 200 and upstream.keys == [None]


@pytest.mark.parametrize(
    "key",
    [b"", b"two words", b"tab\there", b"caf\xe9", b"\x7f", b"x" * (MAX_ROUTING_KEY + 1)],
)
async def test_a_bad_key_is_400_and_reaches_nothing(key: bytes) -> None:
    response, upstream = await ask(key, "c")
    assert response.status_code == 400, response.text
    assert "X-SMG-Routing-Key" in response.json()["message"]
    assert upstream.keys == [] and upstream.calls == []


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300).filter(lambda b: b"\r" not in b and b"\n" not in b))
async def test_any_key_is_forwarded_exactly_or_refused(key: bytes) -> None:
    response, upstream = await ask(key, "d")
    valid = 1 <= len(key) <= MAX_ROUTING_KEY and all(0x21 <= c <= 0x7E for c in key)
    if valid:
        assert response.status_code == 200 and upstream.keys == [key.decode()]
    else:
        assert response.status_code == 400 and upstream.calls == []
