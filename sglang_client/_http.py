"""The request pipeline: the only module that talks HTTP.

It owns (or borrows) one connection pool, adds auth, applies timeouts, runs the retry policy, and
translates transport exceptions into ``SGLangError`` subclasses in one place.

Two backends share one small response type. By default, on asyncio, requests go straight to an
``aiohttp`` session: httpx's own pool tops out near 180 req/s at concurrency 64
(encode/httpx#3215), and even httpx over an aiohttp transport spends ~0.5 ms of CPU per request
building its request/response/header objects (measured: 1.1k vs 3.3-4.2k req/s for raw aiohttp).
When the caller passes an httpx ``transport`` or ``http_client`` (tests, proxies, custom TLS), or
runs under trio, requests go through httpx instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx

from sglang_client._defaults import NOT_GIVEN, NotGiven
from sglang_client._retry import RetryPolicy
from sglang_client.errors import APIConnectionError, APITimeoutError, error_from_response
from sglang_client.routing import current_headers

if TYPE_CHECKING:
    import aiohttp

__all__ = ["HTTPPipeline", "HTTPResponse", "TimeoutTypes", "Timeouts", "map_transport_errors"]

TimeoutTypes = float | httpx.Timeout | None

_JSON_HEADERS = {"content-type": "application/json"}


class Timeouts(NamedTuple):
    """Per-operation timeouts in seconds (``None``: unlimited), as httpx defines them."""

    connect: float | None
    read: float | None
    write: float | None
    pool: float | None

    @classmethod
    def of(cls, value: TimeoutTypes) -> Timeouts:
        t = httpx.Timeout(value)
        return cls(t.connect, t.read, t.write, t.pool)


@contextmanager
def map_transport_errors(what: str) -> Iterator[None]:
    """Translate httpx and aiohttp failures into ``APITimeoutError`` / ``APIConnectionError``."""
    import aiohttp

    try:
        yield
    except (httpx.TimeoutException, asyncio.TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        raise APITimeoutError(f"{what} timed out ({detail})") from exc
    except (httpx.TransportError, aiohttp.ClientError, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        raise APIConnectionError(f"{what} failed: {detail}") from exc


class HTTPResponse:
    """A response whose body is read or streamed once; the same type for both backends.

    Attributes:
        status_code: the HTTP status.
        headers: case-insensitive response headers.
        content: the body, once ``read()`` was awaited.
    """

    __slots__ = ("_chunks", "_close", "content", "headers", "path", "status_code")

    def __init__(
        self,
        status_code: int,
        headers: Mapping[str, str],
        path: str,
        chunks: Callable[[], AsyncIterator[bytes]],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.path = path
        self.content = b""
        self._chunks = chunks
        self._close = close

    @property
    def text(self) -> str:
        """The read body as text."""
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The read body as JSON."""
        return json.loads(self.content)

    async def read(self) -> bytes:
        """Read the whole body, then release the connection."""
        parts = []
        try:
            async for chunk in self.iter_bytes():
                parts.append(chunk)
        finally:
            await self.aclose()
        self.content = b"".join(parts)
        return self.content

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """Iterate the body as it arrives; transport errors become ``SGLangError``s."""
        iterator = self._chunks()
        while True:
            with map_transport_errors(f"reading the response of {self.path}"):
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
            yield chunk

    async def aclose(self) -> None:
        """Release (or, if unread, close) the connection. Idempotent."""
        await self._close()


class _AiohttpBackend:
    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                auto_decompress=True,
                skip_auto_headers=("user-agent",),
            )
        return self._session

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, t: Timeouts
    ) -> HTTPResponse:
        import aiohttp

        response = await self._get_session().request(
            method,
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=t.pool, sock_connect=t.connect, sock_read=t.read
            ),
        )
        content = response.content

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in content.iter_any():
                yield chunk

        async def close() -> None:
            if content.at_eof():
                response.release()
            else:
                # Unread bytes would corrupt the next request on this connection.
                response.close()

        return HTTPResponse(response.status, response.headers, response.url.path, chunks, close)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _HttpxBackend:
    def __init__(self, client: httpx.AsyncClient, owned: bool) -> None:
        self.client = client
        self._owned = owned

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, t: Timeouts
    ) -> HTTPResponse:
        request = self.client.build_request(
            method, url, content=body, headers=headers, extensions={"timeout": t._asdict()}
        )
        response = await self.client.send(request, stream=True)
        return HTTPResponse(
            response.status_code,
            response.headers,
            request.url.path,
            response.aiter_bytes,
            response.aclose,
        )

    async def aclose(self) -> None:
        if self._owned:
            await self.client.aclose()


def _use_aiohttp() -> bool:
    import sniffio

    try:
        return sniffio.current_async_library() == "asyncio"
    except sniffio.AsyncLibraryNotFoundError:
        return True


class HTTPPipeline:
    """Send requests to one SGLang base URL with auth, timeouts, retries and error mapping.

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:30000``.
        timeout: default timeout in seconds (``None``: no timeout) or an ``httpx.Timeout``.
        max_connections: pool size.
        retry: the retry policy.
        api_key: sent as ``Authorization: Bearer <key>``.
        headers: extra headers on every request.
        transport: an httpx transport to use (tests: ``httpx.MockTransport``).
        http_client: an ``httpx.AsyncClient`` to borrow; it is never closed here.
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
        self.timeouts = Timeouts.of(timeout)
        self._max_connections = max_connections
        default_headers = dict(headers or {})
        if api_key is not None:
            default_headers["Authorization"] = f"Bearer {api_key}"
        self.headers = default_headers
        self._json_headers = {**default_headers, **_JSON_HEADERS}
        self._aiohttp: _AiohttpBackend | None = None
        self._httpx: _HttpxBackend | None = None
        self._owns_pools = True
        if http_client is not None:
            self._httpx = _HttpxBackend(http_client, owned=False)
        elif transport is not None:
            self._httpx = _HttpxBackend(self._new_httpx_client(transport), owned=True)

    @property
    def http_client(self) -> httpx.AsyncClient | None:
        """The httpx client in use, if requests go through httpx."""
        return self._httpx.client if self._httpx is not None else None

    def _new_httpx_client(self, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(max_connections=self._max_connections),
        )

    def _backend(self) -> _AiohttpBackend | _HttpxBackend:
        if self._httpx is not None:
            return self._httpx
        if _use_aiohttp():
            if self._aiohttp is None:
                self._aiohttp = _AiohttpBackend(self._max_connections)
            return self._aiohttp
        self._httpx = _HttpxBackend(self._new_httpx_client(None), owned=True)
        return self._httpx

    async def _send_once(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, t: Timeouts
    ) -> HTTPResponse:
        # Everything raised here happens before any body byte was consumed, so it may be retried.
        what = f"{method} {url}"
        with map_transport_errors(what):
            response = await self._backend().send(method, url, headers, body, t)
        if response.status_code >= 400:
            content = await response.read()
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
    ) -> HTTPResponse:
        """Send with retries; return the response with its body unread (the caller closes it)."""
        url = self.base_url + path
        if params:
            url += "?" + str(httpx.QueryParams(params))
        headers = self.headers
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers = self._json_headers
        scoped = current_headers()
        if scoped:
            headers = {**headers, **scoped}
        t = self.timeouts if isinstance(timeout, NotGiven) else Timeouts.of(timeout)
        return await self.retry.call(lambda: self._send_once(method, url, headers, content, t))

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        params: Mapping[str, str] | None = None,
    ) -> HTTPResponse:
        """Send with retries and return the response with its body read."""
        response = await self.open(method, path, body=body, timeout=timeout, params=params)
        await response.read()
        return response

    def borrow_pools(self, other: HTTPPipeline) -> None:
        """Send through ``other``'s connection pools from now on; ``aclose`` will not close them."""
        if other._httpx is None and other._aiohttp is None:
            other._aiohttp = _AiohttpBackend(other._max_connections)
        self._httpx = other._httpx
        self._aiohttp = other._aiohttp
        self._owns_pools = False

    async def probe(self, path: str, timeout: float) -> HTTPResponse:
        """One GET, no retries, status not checked (for health checks)."""
        t = Timeouts(timeout, timeout, timeout, timeout)
        url = self.base_url + path
        with map_transport_errors(f"GET {url}"):
            response = await self._backend().send("GET", url, self.headers, None, t)
            await response.read()
        return response

    async def aclose(self) -> None:
        """Close the pools this pipeline created (never a borrowed httpx client)."""
        if not self._owns_pools:
            return
        if self._aiohttp is not None:
            await self._aiohttp.aclose()
        if self._httpx is not None:
            await self._httpx.aclose()
