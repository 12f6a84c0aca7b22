"""The caching proxy: SGLang's routes plus ``/cache/*``, as one raw ASGI app.

Cached: ``POST /generate``, ``/v1/completions``, ``/v1/chat/completions`` (streaming or not),
answered in SGLang's own JSON and SSE shapes with ``X-Cache: HIT|MISS|PARTIAL|BYPASS``.
``Cache-Control: no-cache`` skips the lookup but stores the result; ``no-store`` skips both.
Every other route is passed through to SGLang unchanged, streaming included. The hot path is raw
ASGI on purpose: a framework router costs a large share of a cache hit's time.

Errors: a client's mistake (bad JSON, wrong types, ``n`` out of range, a body over the limit,
a wrong content type) is a 400/413 in SGLang's flat error shape and never reaches the cache or
the upstream; an unreachable upstream is a 502, a timed-out one a 504; the upstream's own errors
pass through with their status and body.
"""

from __future__ import annotations

import contextlib
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from sglang_client.cache.stats import CacheStatus
from sglang_client.errors import APIStatusError, APITimeoutError, SGLangError
from sglang_client.server._admin import AdminRoutes
from sglang_client.server._asgi import (
    JSON_TYPE,
    SSE_DONE,
    BodyTooLarge,
    ClientGone,
    Message,
    Receive,
    RequestHeaders,
    Scope,
    Send,
    dumps,
    error_body,
    read_body,
    replay,
    send_bytes,
    send_json,
    sse_event,
)
from sglang_client.server._hits import HitMemo, memo_key
from sglang_client.server._metrics import Metrics
from sglang_client.server._passthrough import Passthrough
from sglang_client.server._validate import parse_json, validate_generate, validate_openai

if TYPE_CHECKING:
    from sglang_client.cache import CachedClient, CachedStream

__all__ = ["ProxyApp", "ProxyConfig", "create_app"]

logger = logging.getLogger("sglang_client.proxy")

CACHED_ROUTES = {
    "/generate": "generate",
    "/v1/completions": "completion",
    "/v1/chat/completions": "chat",
}
# SGLang checks the media type on the OpenAI routes only; curl -d sends form-urlencoded.
_GENERATE_TYPES = frozenset({"application/json", "", "application/x-www-form-urlencoded"})
_OPENAI_TYPES = frozenset({"application/json"})
_MEMO_TYPES = frozenset({b"application/json", None})
_MEMO_OPENAI_TYPES = frozenset({b"application/json"})
_OPEN_PATHS = ("/health", "/ready", "/metrics")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_X_CACHE = {status: (b"x-cache", status.value.encode()) for status in CacheStatus}
_LOG_WORD = {
    CacheStatus.HIT: "[Cache hit]",
    CacheStatus.MISS: "[Cache miss]",
    CacheStatus.PARTIAL: "[Cache partial]",
    CacheStatus.BYPASS: "[Cache bypass]",
}


@dataclass(frozen=True)
class ProxyConfig:
    """What the proxy enforces.

    Attributes:
        upstream_url: the SGLang server.
        api_key: clients must send ``Authorization: Bearer <api_key>`` (``/health``, ``/ready``
            and ``/metrics`` stay open, as in SGLang).
        upstream_api_key: sent to SGLang on every forwarded request.
        admin_key: required (instead of ``api_key``) for ``POST /cache/clear`` when set.
        max_body_bytes: larger request bodies get 413.
        max_n: the largest ``n`` accepted on cached routes.
        quiet: no per-request log line.
        upstream_timeout: seconds to wait for the upstream's response headers on passed-through
            routes (cached routes use the ``SGLangClient``'s timeout).
        hit_memo_bytes: memory for pre-encoded hits of repeated requests (0 disables; see
            ``_hits``).
    """

    upstream_url: str
    api_key: str | None = None
    upstream_api_key: str | None = None
    admin_key: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_n: int = 128
    quiet: bool = False
    upstream_timeout: float = 600.0
    hit_memo_bytes: int = 32 * 1024 * 1024


def _matches(token: str | None, key: str) -> bool:
    return token is not None and hmac.compare_digest(token.encode(), key.encode())


class ProxyApp:
    """The proxy as an ASGI callable; build it with ``create_app``.

    Attributes:
        cached: the cache engine requests go through.
        config: the ``ProxyConfig``.
        metrics: the Prometheus counters behind ``/metrics``.
    """

    def __init__(self, cached: CachedClient, config: ProxyConfig) -> None:
        self.cached = cached
        self.config = config
        self.metrics = Metrics()
        self.memo = HitMemo(cached, config.hit_memo_bytes)
        self.admin = AdminRoutes(cached, self.metrics, self.memo, config.upstream_url)
        self.passthrough = Passthrough(
            config.upstream_url,
            config.upstream_api_key,
            config.api_key,
            timeout=config.upstream_timeout,
            max_body_bytes=config.max_body_bytes,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        try:
            if path in CACHED_ROUTES and scope["method"] == "POST" and self.memo.enabled:
                # A busy cache's commonest request, a repeat, answered before any parsing: the
                # HTTP server's own work is most of a hit's cost, so every step here counts.
                read = await self._memo_hit(scope, path, receive, send, started)
                if read is None:
                    return  # served and counted
                receive = replay(read, receive)
            status, cache = await self._dispatch(scope, receive, send, path)
        except Exception as exc:
            # A bug of ours, never a client's mistake: say so, and keep serving.
            logger.exception("proxy error on %s %s", scope["method"], path)
            status, cache = 500, "error"
            message = f"Internal proxy error: {type(exc).__name__}: {exc}"
            # If the response had started, this fails and the server closes the connection.
            with contextlib.suppress(Exception):
                await send_json(send, 500, error_body(500, message, "InternalServerError"))
        route = path if path in CACHED_ROUTES else "other"
        self.metrics.observe(route, cache, status, time.perf_counter() - started)

    async def _memo_hit(
        self, scope: Scope, path: str, receive: Receive, send: Send, started: float
    ) -> list[Message] | None:
        """Send the memoised response of a repeated request to a cached route.

        Returns ``None`` when it did, else the request messages it read (for the full path).
        Anything unusual (a content type or ``Cache-Control`` the full path must look at, a
        failed auth check, a body over the limit, a disconnect) goes the full path.
        """
        headers = dict(scope["headers"])
        allowed = _MEMO_TYPES if path == "/generate" else _MEMO_OPENAI_TYPES
        if headers.get(b"content-type") not in allowed or b"cache-control" in headers:
            return []
        if self.config.api_key is not None and self._denied(RequestHeaders(scope), path, "POST"):
            return []
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            messages = [message]
            raw: bytes = message.get("body", b"")
        else:
            messages, raw = await self._read_small(message, receive)
            if not raw:
                return messages
        hit = await self.memo.lookup(memo_key(path, raw))
        if hit is None:
            return messages
        response, response_headers = hit.render()
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": response})
        elapsed = time.perf_counter() - started
        self.cached.record_hit(elapsed, hit.served)
        self.metrics.observe(path, "HIT", 200, elapsed)
        self._log(CacheStatus.HIT, path, started)
        return None

    async def _read_small(self, message: Message, receive: Receive) -> tuple[list[Message], bytes]:
        """The rest of a body in several messages: (messages read, body or ``b""``).

        Only bodies the memo can hold are read whole; a bigger one, or a disconnect, is left to
        the full path.
        """
        limit = min(self.config.max_body_bytes, self.memo.max_body)
        messages = [message]
        size = len(message.get("body", b""))
        while message["type"] == "http.request" and message.get("more_body", False):
            if size > limit:
                return messages, b""
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
        if message["type"] != "http.request" or size > limit:
            return messages, b""
        return messages, b"".join(m.get("body", b"") for m in messages)

    def _denied(self, headers: RequestHeaders, path: str, method: str) -> tuple[int, str] | None:
        """The auth failure for this request, if any (SGLang's rules, plus the admin key)."""
        config = self.config
        if path == "/cache/clear" and config.admin_key is not None:
            if _matches(headers.bearer, config.admin_key):
                return None
            if config.api_key is not None and _matches(headers.bearer, config.api_key):
                return 403, "Forbidden: POST /cache/clear needs the admin key."
            return 401, "Unauthorized"
        if config.api_key is None or method == "OPTIONS" or path.startswith(_OPEN_PATHS):
            return None
        if _matches(headers.bearer, config.api_key):
            return None
        return 401, "Unauthorized"

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, path: str
    ) -> tuple[int, str]:
        method: str = scope["method"]
        headers = RequestHeaders(scope)
        denied = self._denied(headers, path, method)
        if denied is not None:
            await send_json(send, denied[0], {"error": denied[1]})
            return denied[0], "none"
        kind = CACHED_ROUTES.get(path)
        if kind is not None and (method == "POST" or (method == "PUT" and kind == "generate")):
            return await self._cached(kind, path, headers, receive, send)
        admin = self.admin
        if path == "/cache/stats" and method == "GET":
            return await admin.stats(send), "none"
        if path == "/cache/info" and method == "GET":
            return await admin.info(scope, send), "none"
        if path == "/cache/clear" and method == "POST":
            return await admin.clear(send), "none"
        if path == "/health" and method == "GET":
            return await admin.health(send), "none"
        if path == "/metrics" and method == "GET":
            return await admin.prometheus(send), "none"
        return await self.passthrough(scope, receive, send, self.metrics), "pass"

    # ------------------------------------------------------------------ cached routes

    async def _reject(self, send: Send, status: int, message: str, kind: str) -> tuple[int, str]:
        await send_json(send, status, error_body(status, message, kind))
        return status, "rejected"

    async def _cached(
        self, kind: str, path: str, headers: RequestHeaders, receive: Receive, send: Send
    ) -> tuple[int, str]:
        started = time.perf_counter()
        allowed = _GENERATE_TYPES if kind == "generate" else _OPENAI_TYPES
        if headers.content_type not in allowed:
            message = (
                "Unsupported Media Type: Only 'application/json' is allowed"
                f" (got '{headers.content_type}')."
            )
            return await self._reject(send, 400, message, "BadRequestError")
        limit = self.config.max_body_bytes
        try:
            if headers.content_length is not None and headers.content_length > limit:
                raise BodyTooLarge(headers.content_length)
            raw = await read_body(receive, limit)
        except BodyTooLarge:
            message = f"The request body is larger than the proxy's limit of {limit} bytes."
            return await self._reject(send, 413, message, "Request Entity Too Large")
        except ClientGone:
            return 499, "none"
        directives = headers.cache_control
        write = "no-store" not in directives
        read = write and "no-cache" not in directives
        memo = self.memo
        if read and memo.enabled:
            hit = await memo.lookup(memo_key(path, raw))
            if hit is not None:
                response, response_headers = hit.render()
                await send_bytes(send, 200, response, response_headers, complete=True)
                self.cached.record_hit(time.perf_counter() - started, hit.served)
                self._log(CacheStatus.HIT, path, started)
                return 200, "HIT"
        body, error = parse_json(raw)
        if error is None:
            if kind == "generate":
                error = validate_generate(body, self.config.max_n)
            else:
                error = validate_openai(body, self.config.max_n, chat=kind == "chat")
        if error is not None:
            return await self._reject(send, 400, error, "Bad Request")
        try:
            if body.get("stream"):
                stream = await self._open_stream(kind, path, body, read, write)
                return await self._stream(stream, receive, send, started, path)
            if kind == "generate":
                result = await self.cached.generate_json(body, read=read, write=write)
            else:
                result = await self.cached.openai_json(path, body, read=read, write=write)
        except SGLangError as exc:
            return await self._upstream_failed(exc, send)
        except RecursionError:  # valid JSON, but too deep to hash into a cache key
            return await self._reject(send, 400, "The request is nested too deeply.", "Bad Request")
        status = result.status
        response = dumps(result.body)
        await send_bytes(send, 200, response, [JSON_TYPE, _X_CACHE[status]])
        self._log(status, path, started)
        if status is CacheStatus.HIT and read and memo.enabled:
            await memo.remember(path, raw, body, result.body, response)
        return 200, status.value

    async def _open_stream(
        self, kind: str, path: str, body: dict[str, Any], read: bool, write: bool
    ) -> CachedStream:
        if kind == "generate":
            return await self.cached.generate_stream_json(body, read=read, write=write)
        return await self.cached.openai_stream_json(path, body, read=read, write=write)

    async def _stream(
        self, stream: CachedStream, receive: Receive, send: Send, started: float, path: str
    ) -> tuple[int, str]:
        events: AsyncIterator[dict[str, Any]] = stream.__aiter__()
        try:
            # Wait for the first event before answering 200, so an upstream failure that comes
            # before any output is still a real HTTP error (as SGLang's OpenAI routes do).
            first: dict[str, Any] | None = await events.__anext__()
        except StopAsyncIteration:
            first = None
        except SGLangError as exc:
            await _close(stream)
            return await self._upstream_failed(exc, send)
        except BaseException:
            await _close(stream)
            raise
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_SSE_HEADERS, _X_CACHE[stream.status]],
            }
        )
        outcome = "aborted"
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_disconnect, receive, tg.cancel_scope)
            try:
                if first is not None:
                    await send(
                        {"type": "http.response.body", "body": sse_event(first), "more_body": True}
                    )
                    async for event in events:
                        chunk = sse_event(event)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": SSE_DONE})
                outcome = stream.status.value
            except SGLangError as exc:
                # Headers are gone: end with an error event and [DONE], SGLang's framing (§3.5).
                logger.warning("upstream stream failed mid-way on %s: %s", path, exc)
                self.metrics.upstream_error("stream")
                error = error_body(502, f"The upstream stream failed: {exc}", "Bad Gateway")
                tail = sse_event({"error": error}) + SSE_DONE
                await send({"type": "http.response.body", "body": tail})
                outcome = "error"
            finally:
                await _close(stream)
            tg.cancel_scope.cancel()
        if outcome != "aborted":
            self._log(stream.status, path, started)
        return 200, outcome

    async def _upstream_failed(self, exc: SGLangError, send: Send) -> tuple[int, str]:
        if isinstance(exc, APIStatusError):
            self.metrics.upstream_error("status")
            body = exc.body
            if isinstance(body, (dict, list)):
                await send_json(send, exc.status_code, body)
            else:
                text = str(body if body is not None else exc).encode()
                content_type = (b"content-type", b"text/plain; charset=utf-8")
                await send_bytes(send, exc.status_code, text, [content_type])
            return exc.status_code, "error"
        if isinstance(exc, APITimeoutError):
            self.metrics.upstream_error("timeout")
            message = f"The upstream SGLang server timed out: {exc}"
            await send_json(send, 504, error_body(504, message, "Gateway Timeout"))
            return 504, "error"
        self.metrics.upstream_error("connect")
        message = f"The upstream SGLang server is unreachable or failed: {exc}"
        await send_json(send, 502, error_body(502, message, "Bad Gateway"))
        return 502, "error"

    def _log(self, status: CacheStatus, path: str, started: float) -> None:
        if not self.config.quiet:
            ms = (time.perf_counter() - started) * 1e3
            logger.info("%s POST %s %.1f ms", _LOG_WORD[status], path, ms)

    # ------------------------------------------------------------------ lifecycle

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.warm_up()
                # Everything imported and built so far lives as long as the process: keep the
                # collector from re-scanning it on every full collection.
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.aclose()
                except Exception as exc:
                    logger.error("shutdown: %s", exc)
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def warm_up(self) -> None:
        """Open the store and learn the model identity now rather than on the first request.

        Both are retried on demand later, so an upstream that is still starting is fine.
        """
        try:
            await self.cached.store.get("0" * 64, limit=0)
        except SGLangError as exc:
            logger.warning("the cache store is not usable yet: %s", exc)
        with anyio.move_on_after(5):
            try:
                await self.cached.model_identity()
            except SGLangError as exc:
                logger.warning("the upstream is not reachable yet: %s", exc)

    async def aclose(self) -> None:
        """Flush the store and close upstream connections (uvicorn calls this on shutdown)."""
        try:
            await self.cached.aclose()
        finally:
            await self.passthrough.aclose()
            await self.cached.client.aclose()


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Stop the stream when the client hangs up: nothing is generated for nobody, nor stored."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _close(stream: CachedStream) -> None:
    # Shielded: closing releases the key's lock (a Redis call) even when the request was cancelled.
    with anyio.CancelScope(shield=True):
        await stream.aclose()


def create_app(cached: CachedClient, config: ProxyConfig | Mapping[str, Any]) -> ProxyApp:
    """Build the proxy ASGI app over a ``CachedClient``.

    Example:
        ```python
        cached = CachedClient(SGLangClient(url), store=SQLiteStore("~/.sglang_cache"))
        app = create_app(cached, {"upstream_url": url, "api_key": "secret"})
        # uvicorn.run(app, port=30001)
        ```
    """
    if not isinstance(config, ProxyConfig):
        config = ProxyConfig(**config)
    return ProxyApp(cached, config)
