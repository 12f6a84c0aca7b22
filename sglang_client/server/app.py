"""The caching proxy: SGLang's routes plus ``/cache/*``, as one raw ASGI app.

Cached: ``POST /generate``, ``/v1/completions``, ``/v1/chat/completions`` (streaming or not),
answered in SGLang's own JSON and SSE shapes with ``X-Cache: HIT|MISS|PARTIAL|BYPASS``.
``Cache-Control: no-cache`` skips the lookup but stores the result; ``no-store`` skips both.
Every other route is passed through to SGLang unchanged, streaming included. The hot path is raw
ASGI on purpose: a framework router costs a large share of a cache hit's time.

Errors: a client's mistake (bad JSON, wrong types, ``n`` out of range, a body over the limit,
a wrong content type) is a 400/413 in SGLang's flat error shape and never reaches the cache or
the upstream; an unreachable upstream is a 502, a timed-out one a 504; the upstream's own errors
pass through with their status and body. The trust boundaries, in order, are in
docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from sglang_client.cache.keys import tenant_of
from sglang_client.cache.stats import CacheStatus
from sglang_client.errors import SGLangError
from sglang_client.routing import routing_scope
from sglang_client.server._admin import AdminRoutes
from sglang_client.server._asgi import (
    JSON_TYPE,
    BodyTimeout,
    Message,
    Receive,
    RequestHeaders,
    Scope,
    Send,
    dumps,
    error_body,
    read_or_refuse,
    replay,
    send_bytes,
    send_json,
)
from sglang_client.server._deadline import BodyDeadlines
from sglang_client.server._hits import HitMemo, memo_key
from sglang_client.server._metrics import Metrics
from sglang_client.server._passthrough import Passthrough
from sglang_client.server._respond import send_stream, unless_client_leaves, upstream_failed
from sglang_client.server._routes import Access, Gate, access_of, check_path
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
_MEMO_TYPES = frozenset({b"application/json"})


def _json_media(content_type: str, generate: bool) -> bool:
    """Whether SGLang reads the body as JSON: its OpenAI routes want ``application/json``;
    ``/generate`` (FastAPI) also takes ``application/*+json``, and refuses anything else,
    no content type and curl -d's form type included (seen on SGLang 0.5.23)."""
    if content_type == "application/json":
        return True
    return generate and content_type.startswith("application/") and content_type.endswith("+json")


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
            and ``/metrics`` stay open, as in SGLang); a tuple accepts any of several keys.
        upstream_api_key: sent to SGLang on every forwarded request that needs a key.
        admin_key: required (instead of ``api_key``) for ``POST /cache/clear`` and SGLang's
            admin routes (``/flush_cache``, ``/abort_request``, ...) when set.
        isolate_by_key: keep a separate cache per bearer token (a salted hash of it), so that
            tenants never see each other's answers; ``/cache/info`` then lists only the
            caller's entries unless it holds the admin key.
        max_body_bytes: larger request bodies get 413.
        max_n: the largest ``n`` accepted on cached routes.
        quiet: no per-request log line.
        upstream_timeout: seconds to wait for the upstream's response headers on passed-through
            routes (cached routes use the ``SGLangClient``'s timeout).
        hit_memo_bytes: memory for pre-encoded hits of repeated requests (0 disables; see
            ``_hits``).
        body_timeout: seconds a client has to send its whole request body, then 408.
        freeze_gc: at startup, move everything built so far out of the garbage collector's
            full scans (``gc.freeze``). A process-wide choice: ``sglang-cached`` makes it, an
            app embedding the proxy should not (it also blinds ``gc.get_referrers``).
    """

    upstream_url: str
    api_key: str | tuple[str, ...] | None = None
    upstream_api_key: str | None = None
    admin_key: str | None = None
    isolate_by_key: bool = False
    max_body_bytes: int = 16 * 1024 * 1024
    max_n: int = 128
    quiet: bool = False
    upstream_timeout: float = 600.0
    hit_memo_bytes: int = 32 * 1024 * 1024
    body_timeout: float = 60.0
    freeze_gc: bool = False

    @property
    def api_keys(self) -> tuple[str, ...]:
        """Every accepted API key."""
        if self.api_key is None:
            return ()
        return (self.api_key,) if isinstance(self.api_key, str) else tuple(self.api_key)


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
        self.gate = Gate(config.api_keys, config.admin_key)
        self.deadlines = BodyDeadlines(config.body_timeout)
        self.memo = HitMemo(cached, config.hit_memo_bytes)
        self.admin = AdminRoutes(cached, self.metrics, self.memo, config.upstream_url)
        self.passthrough = Passthrough(
            config.upstream_url,
            config.upstream_api_key,
            config.api_key is not None,
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
        timed = self.deadlines.track(receive)
        receive = timed
        try:
            refused = check_path(path, scope.get("raw_path"), scope.get("query_string", b""))
            if refused is not None:
                # Before auth and before any route is matched: what was checked is what runs.
                await send_json(send, 400, error_body(400, refused, "Bad Request"))
                self.metrics.observe("other", "rejected", 400, time.perf_counter() - started)
                return
            if path in CACHED_ROUTES and scope["method"] == "POST" and self.memo.enabled:
                # A busy cache's commonest request, a repeat, answered before any parsing: the
                # HTTP server's own work is most of a hit's cost, so every step here counts.
                read = await self._memo_hit(scope, path, receive, send, started)
                if read is None:
                    return  # served and counted
                receive = replay(read, receive)
            status, cache = await self._dispatch(scope, receive, send, path)
        except BodyTimeout:
            status, cache = 408, "rejected"
            message = f"The request body did not arrive within {self.config.body_timeout:g} s."
            with contextlib.suppress(Exception):
                await send_json(send, 408, error_body(408, message, "Request Timeout"))
        except Exception as exc:
            # A bug of ours, never a client's mistake: say so, and keep serving.
            logger.exception("proxy error on %s %s", scope["method"], path)
            status, cache = 500, "error"
            message = f"Internal proxy error: {type(exc).__name__}: {exc}"
            # If the response had started, this fails and the server closes the connection.
            with contextlib.suppress(Exception):
                await send_json(send, 500, error_body(500, message, "InternalServerError"))
        finally:
            timed.finish()
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
        if headers.get(b"content-type") not in _MEMO_TYPES or b"cache-control" in headers:
            return []
        tenant = None
        if self.gate.api_keys or self.config.isolate_by_key:
            bearer = RequestHeaders(scope).bearer
            if self.gate.denied(Access.USER, "POST", bearer) is not None:
                return []
            tenant = self._tenant(bearer)
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            messages = [message]
            raw: bytes = message.get("body", b"")
        else:
            messages, raw = await self._read_small(message, receive)
            if not raw:
                return messages
        hit = await self.memo.lookup(memo_key(path, raw, tenant))
        if hit is None:
            return messages
        response, response_headers = hit.render()
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": response})
        elapsed = time.perf_counter() - started
        self.cached.engine.record_hit(elapsed, hit.served)
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

    def _tenant(self, bearer: str | None) -> str | None:
        """The cache namespace of a request: its key's, with ``isolate_by_key``, else shared."""
        return tenant_of(bearer) if self.config.isolate_by_key else None

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, path: str
    ) -> tuple[int, str]:
        method: str = scope["method"]
        headers = RequestHeaders(scope)
        route, access = access_of(path, method)
        denied = self.gate.denied(access, method, headers.bearer)
        if denied is not None:
            await send_json(send, denied[0], {"error": denied[1]})
            return denied[0], "none"
        if route is None:
            status = await self.passthrough(
                scope, receive, send, self.metrics, credentials=access is not Access.OPEN
            )
            return status, "pass"
        handler = route.handler
        tenant = self._tenant(headers.bearer)
        if handler in ("generate", "completion", "chat"):
            return await self._cached(handler, path, headers, tenant, receive, send)
        admin = self.admin
        if handler == "stats":
            return await admin.stats(send), "none"
        if handler == "info":
            everything = not self.config.isolate_by_key or self.gate.is_admin(headers.bearer)
            return await admin.info(scope, send, None if everything else tenant), "none"
        if handler == "clear":
            return await admin.clear(send), "none"
        if handler == "health":
            return await admin.health(send), "none"
        return await admin.prometheus(send), "none"

    # ------------------------------------------------------------------ cached routes

    async def _reject(self, send: Send, status: int, message: str, kind: str) -> tuple[int, str]:
        await send_json(send, status, error_body(status, message, kind))
        return status, "rejected"

    async def _cached(
        self,
        kind: str,
        path: str,
        headers: RequestHeaders,
        tenant: str | None,
        receive: Receive,
        send: Send,
    ) -> tuple[int, str]:
        started = time.perf_counter()
        if not _json_media(headers.content_type, kind == "generate"):
            message = (
                "Unsupported Media Type: Only 'application/json' is allowed"
                f" (got '{headers.content_type}')."
            )
            return await self._reject(send, 400, message, "BadRequestError")
        raw = await read_or_refuse(headers, receive, send, self.config.max_body_bytes)
        if isinstance(raw, int):
            return raw, "rejected" if raw == 413 else "none"
        directives = headers.cache_control
        write = "no-store" not in directives
        read = write and "no-cache" not in directives
        memo = self.memo
        if read and memo.enabled:
            hit = await memo.lookup(memo_key(path, raw, tenant))
            if hit is not None:
                response, response_headers = hit.render()
                await send_bytes(send, 200, response, response_headers, complete=True)
                self.cached.engine.record_hit(time.perf_counter() - started, hit.served)
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
            route = routing_scope(headers.routing_key)
        except ValueError as exc:
            return await self._reject(send, 400, f"X-SMG-Routing-Key: {exc}", "Bad Request")
        # Misses go upstream under the caller's routing key, so a gateway behind the proxy
        # keeps the caller's conversation on one worker.
        with route:
            return await self._answer(
                kind, path, raw, body, (read, write), tenant, receive, send, started
            )

    async def _answer(
        self,
        kind: str,
        path: str,
        raw: bytes,
        body: dict[str, Any],
        use: tuple[bool, bool],
        tenant: str | None,
        receive: Receive,
        send: Send,
        started: float,
    ) -> tuple[int, str]:
        """Answer a valid request to a cached route (``use``: read, write the cache)."""
        read, write = use
        memo = self.memo
        try:
            if body.get("stream"):
                stream = await self._open_stream(kind, path, body, read, write, tenant)
                return await self._stream(stream, receive, send, started, path)
            cached = self.cached
            if kind == "generate":
                work = cached.generate_json(body, read=read, write=write, tenant=tenant)
            else:
                work = cached.openai_json(path, body, read=read, write=write, tenant=tenant)
            answer = await unless_client_leaves(receive, work)
            if answer is None:
                return 499, "aborted"  # nothing to send: the client is gone
            result = answer
        except SGLangError as exc:
            return await upstream_failed(exc, send, self.metrics)
        except RecursionError:  # valid JSON, but too deep to hash into a cache key
            return await self._reject(send, 400, "The request is nested too deeply.", "Bad Request")
        status = result.status
        response = dumps(result.body)
        await send_bytes(send, 200, response, [JSON_TYPE, _X_CACHE[status]])
        self._log(status, path, started)
        if status is CacheStatus.HIT and read and memo.enabled:
            await memo.remember(path, raw, body, result.body, response, tenant)
        return 200, status.value

    async def _open_stream(
        self,
        kind: str,
        path: str,
        body: dict[str, Any],
        read: bool,
        write: bool,
        tenant: str | None,
    ) -> CachedStream:
        cached = self.cached
        if kind == "generate":
            return await cached.generate_stream_json(body, read=read, write=write, tenant=tenant)
        return await cached.openai_stream_json(path, body, read=read, write=write, tenant=tenant)

    async def _stream(
        self, stream: CachedStream, receive: Receive, send: Send, started: float, path: str
    ) -> tuple[int, str]:
        headers = [*_SSE_HEADERS, _X_CACHE[stream.status]]
        status, outcome = await send_stream(stream, receive, send, self.metrics, path, headers)
        if status == 200 and outcome != "aborted":
            self._log(stream.status, path, started)
        return status, outcome

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
                if self.config.freeze_gc:
                    # Everything imported and built so far lives as long as the process: keep
                    # the collector from re-scanning it on every full collection.
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
                await self.cached.engine.model_identity()
            except SGLangError as exc:
                logger.warning("the upstream is not reachable yet: %s", exc)

    async def aclose(self) -> None:
        """Flush the store and close upstream connections (uvicorn calls this on shutdown)."""
        try:
            await self.cached.aclose()
        finally:
            await self.deadlines.aclose()
            await self.passthrough.aclose()
            await self.cached.client.aclose()


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
