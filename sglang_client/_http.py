"""The request pipeline: the only module that talks HTTP.

It owns (or borrows) one pooled ``httpx.AsyncClient``, adds auth, applies timeouts, runs the retry
policy, and translates httpx's exceptions into ``SGLangError`` subclasses in one place.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from sglang_client._defaults import NOT_GIVEN, NotGiven
from sglang_client._retry import RetryPolicy
from sglang_client.errors import APIConnectionError, APITimeoutError, error_from_response

__all__ = ["HTTPPipeline", "TimeoutTypes", "map_transport_errors"]

TimeoutTypes = float | httpx.Timeout | None

_JSON_HEADERS = {"content-type": "application/json"}


@contextmanager
def map_transport_errors(what: str) -> Iterator[None]:
    """Translate httpx transport failures into ``APITimeoutError`` / ``APIConnectionError``."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise APITimeoutError(f"{what} timed out ({type(exc).__name__}: {exc})") from exc
    except httpx.TransportError as exc:
        detail = str(exc) or type(exc).__name__
        raise APIConnectionError(f"{what} failed: {detail}") from exc


def _default_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    # httpx's own pool tops out near 180 req/s at concurrency 64 (encode/httpx#3215); aiohttp's
    # connector behind httpx's API does not have that ceiling.
    from httpx_aiohttp import AiohttpTransport

    transport: httpx.AsyncBaseTransport = AiohttpTransport(
        limits=httpx.Limits(max_connections=max_connections)
    )
    return transport


class HTTPPipeline:
    """Send requests to one SGLang base URL with auth, timeouts, retries and error mapping.

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:30000``. timeout: default timeout in
        seconds (``None``: no timeout). max_connections: pool size. retry: the retry policy.
        api_key: sent as ``Authorization: Bearer <key>``. headers: extra headers on every request.
        transport: an httpx transport to use instead of the default (tests:
        ``httpx.MockTransport``). http_client: an ``httpx.AsyncClient`` to borrow; it is never
        closed here.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: TimeoutTypes,
        max_connections: int,
        retry: RetryPolicy,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.timeout = timeout
        default_headers = dict(headers or {})
        if api_key is not None:
            default_headers["Authorization"] = f"Bearer {api_key}"
        self._headers = default_headers
        self._default_extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        self._owns_client = http_client is None
        if http_client is None:
            http_client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=httpx.Timeout(timeout),
                transport=transport or _default_transport(max_connections),
                limits=httpx.Limits(max_connections=max_connections),
            )
        self.client = http_client

    def _build(
        self,
        method: str,
        path: str,
        body: object,
        timeout: TimeoutTypes | NotGiven,
        params: Mapping[str, str] | None,
    ) -> httpx.Request:
        headers = self._headers
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers = {**headers, **_JSON_HEADERS}
        if isinstance(timeout, NotGiven):
            # Explicit even for the default: a borrowed pool may carry another default.
            extensions = self._default_extensions
        else:
            extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        return self.client.build_request(
            method,
            self.base_url + path,
            content=content,
            headers=headers,
            params=params,
            extensions=extensions,
        )

    async def _send_once(self, request: httpx.Request) -> httpx.Response:
        # Everything raised here happens before any body byte was consumed, so it may be retried.
        what = f"{request.method} {request.url.path}"
        with map_transport_errors(what):
            response = await self.client.send(request, stream=True)
        if response.status_code >= 400:
            try:
                with map_transport_errors(what):
                    content = await response.aread()
            finally:
                await response.aclose()
            raise error_from_response(
                response.status_code, content, headers=response.headers, response=response
            )
        return response

    async def open(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send with retries and return the response with its body unread (the caller closes it)."""
        request = self._build(method, path, body, timeout, params)
        return await self.retry.call(lambda: self._send_once(request))

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send with retries and return the response with its body read."""
        response = await self.open(method, path, body=body, timeout=timeout, params=params)
        try:
            with map_transport_errors(f"{method} {path}"):
                await response.aread()
        finally:
            await response.aclose()
        return response

    @staticmethod
    async def iter_bytes(response: httpx.Response) -> AsyncIterator[bytes]:
        """Iterate a response body, translating transport errors (no retries: bytes were seen)."""
        iterator = response.aiter_bytes().__aiter__()
        while True:
            with map_transport_errors(f"reading the stream of {response.request.url.path}"):
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
            yield chunk

    async def aclose(self) -> None:
        """Close the pool if this pipeline created it."""
        if self._owns_client:
            await self.client.aclose()


def json_body(response: httpx.Response) -> Any:
    """Decode a read response's JSON body."""
    return json.loads(response.content)
