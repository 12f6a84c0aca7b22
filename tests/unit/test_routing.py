"""Request-scoped headers and gateway routing keys: what reaches the wire, and what is refused."""

from __future__ import annotations

import asyncio

import pytest
from pytest_httpx import HTTPXMock

from sglang_client import InternalServerError, request_headers, routing_key
from sglang_client.routing import ROUTING_KEY_HEADER, current_headers, routing_scope
from sglang_client.sessions import SessionManager

from .test_client import make_client, one

pytestmark = pytest.mark.anyio


async def test_scoped_headers_reach_the_request_and_end_with_the_block(
    httpx_mock: HTTPXMock,
) -> None:
    for _ in range(3):
        httpx_mock.add_response(json=one())
    async with make_client(headers={"X-Team": "a"}) as client:
        with request_headers({"X-Trace": "t1"}), routing_key("user-42"):
            assert current_headers() == {"X-Trace": "t1", ROUTING_KEY_HEADER: "user-42"}
            await client.generate("x")
            with routing_key("user-43"):  # the inner block wins
                await client.generate("x")
        assert current_headers() is None
        await client.generate("x")
    first, inner, after = httpx_mock.get_requests()
    assert (first.headers["x-team"], first.headers["x-trace"]) == ("a", "t1")
    assert first.headers["x-smg-routing-key"] == "user-42"
    assert inner.headers["x-smg-routing-key"] == "user-43"
    assert "x-smg-routing-key" not in after.headers and "x-trace" not in after.headers


async def test_scopes_of_concurrent_tasks_stay_apart(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json=one(), is_reusable=True)
    async with make_client() as client:

        async def ask(key: str) -> None:
            with routing_key(key):
                await asyncio.sleep(0)  # let the other task set its own scope in between
                await client.generate(key)

        await asyncio.gather(*(ask(f"k{i}") for i in range(8)))
    for request in httpx_mock.get_requests():
        sent = request.read().decode()
        assert f'"text":"{request.headers["x-smg-routing-key"]}"' in sent


@pytest.mark.parametrize(
    "key", ["", "two words", "new\nline", "ünïcode", "x" * 257, 7, "tab\there"]
)
def test_bad_routing_keys_are_refused(key: object) -> None:
    with pytest.raises(ValueError, match="routing key"):
        routing_key(key)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="routing key"):
        routing_scope(key)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "headers", [{"Bad Name": "v"}, {"": "v"}, {"X-Ok": "a\r\nInjected: 1"}, {"X-Ok": "nul\0"}]
)
def test_header_injection_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        with request_headers(headers):
            pass
    assert current_headers() is None


async def test_gateway_could_not_send_is_retried_other_500s_are_not(
    httpx_mock: HTTPXMock,
) -> None:
    refused = "error sending request for url (http://127.0.0.1:9/generate)"
    httpx_mock.add_response(status_code=500, text=refused)
    httpx_mock.add_response(json=one())
    httpx_mock.add_response(status_code=500, text="Internal Server Error: boom")
    async with make_client(max_retries=2) as client:
        await client.generate("x")  # retried: the gateway never reached a worker
        with pytest.raises(InternalServerError):
            await client.generate("x")  # a worker's own 500 is not retried
    assert len(httpx_mock.get_requests()) == 3


async def test_sessions_send_their_routing_key_and_forks_share_it(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json=one(), is_reusable=True)
    async with make_client() as client:
        manager = SessionManager(client, token_exact=False)
        s = await manager.create_session("sys", session_id="conv-1")
        other = await manager.create_session("sys", routing_key="tenant/user")
        odd = await manager.create_session("sys", session_id="spaced id ü")
        await manager.generate(s.id, "a")
        [same] = [await manager.fork_session(s.id)]
        away = await manager.fork_session(s.id, same_worker=False)
        for session in (same, away, other, odd):
            await manager.generate(session.id, "b")
        with pytest.raises(ValueError, match="routing key"):
            await manager.create_session("sys", routing_key="no spaces allowed")
        unrouted = SessionManager(client, token_exact=False, routing_keys=False)
        plain = await unrouted.create_session("sys")
        await unrouted.generate(plain.id, "c")
    keys = [r.headers.get("x-smg-routing-key") for r in httpx_mock.get_requests()]
    assert keys[:4] == ["conv-1", "conv-1", away.id, "tenant/user"]
    assert keys[4] == odd.routing_key and odd.routing_key is not None
    assert len(odd.routing_key) == 32 and odd.routing_key.isalnum()
    assert keys[5] is None and plain.routing_key is None
