"""Forward any other route to SGLang unchanged, streaming the response body as it arrives."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import quote

import anyio

from sglang_client._http import map_transport_errors
from sglang_client.errors import SGLangError
from sglang_client.server._asgi import (
    Receive,
    RequestHeaders,
    Scope,
    Send,
    read_or_refuse,
)
from sglang_client.server._respond import upstream_failed, watch_disconnect

if TYPE_CHECKING:
    import aiohttp

    from sglang_client.server._metrics import Metrics

__all__ = ["Passthrough"]

# Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP stacks set themselves.
_DROP_REQUEST = {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive"}
_DROP_RESPONSE = {
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "server",
    "date",
}


class Passthrough:
    """Relay requests to the upstream with one pooled aiohttp session.

    Args:
        upstream_url: the SGLang server.
        upstream_api_key: replaces the client's ``Authorization`` when set.
        drop_client_auth: the proxy has its own keys, so a client's ``Authorization`` is for the
            proxy and is not forwarded.
        timeout: seconds to wait for the upstream's response headers and between body chunks.
        max_body_bytes: larger request bodies get 413 without reaching the upstream.
    """

    def __init__(
        self,
        upstream_url: str,
        upstream_api_key: str | None,
        drop_client_auth: bool,
        *,
        timeout: float = 600.0,
        max_body_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self._auth = f"Bearer {upstream_api_key}" if upstream_api_key else None
        self._drop_auth = drop_client_auth
        self._timeout = timeout
        self._max_body = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                skip_auto_headers=("user-agent", "accept", "accept-encoding"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self._timeout),
            )
        return self._session

    def _headers(self, scope: Scope, credentials: bool) -> list[tuple[str, str]]:
        headers = []
        for name, value in scope["headers"]:
            if name in _DROP_REQUEST:
                continue
            if name == b"authorization" and (self._auth is not None or self._drop_auth):
                continue
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if self._auth is not None and credentials:
            headers.append(("Authorization", self._auth))
        return headers

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, metrics: Metrics, *, credentials: bool
    ) -> int:
        """Relay one request; return the status sent to the client.

        ``credentials``: send the upstream key (not for open routes, which need none). The
        path goes out exactly as it came in (the caller checked it; nothing re-normalises it).
        """
        from yarl import URL

        body = await read_or_refuse(RequestHeaders(scope), receive, send, self._max_body)
        if isinstance(body, int):
            return body
        raw_path = scope.get("raw_path") or quote(scope["path"]).encode()
        target = self.upstream_url + raw_path.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        try:
            with map_transport_errors(f"{scope['method']} {scope['path']}"):
                response = await self._get_session().request(
                    scope["method"],
                    URL(target, encoded=True),
                    data=body or None,
                    headers=self._headers(scope, credentials),
                    allow_redirects=False,
                )
        except SGLangError as exc:
            return (await upstream_failed(exc, send, metrics))[0]
        try:
            headers = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in response.headers.items()
                if k.lower() not in _DROP_RESPONSE
            ]
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            if response.content_type == "text/event-stream":
                # A stream can run for minutes: stop reading it when the client hangs up.
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch_disconnect, receive, tg.cancel_scope)
                    await _relay(response, send, metrics)
                    tg.cancel_scope.cancel()
            else:
                await _relay(response, send, metrics)
        finally:
            response.close()
        return response.status

    async def aclose(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()


async def _relay(response: aiohttp.ClientResponse, send: Send, metrics: Metrics) -> None:
    import aiohttp

    try:
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        # Headers are gone: end the body early, as the upstream did.
        metrics.upstream_error("stream")
    await send({"type": "http.response.body", "body": b""})
