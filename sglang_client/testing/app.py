"""The fake SGLang server as a raw ASGI app: routing, auth, faults and the small routes.

Every behaviour cites the protocol notes (``docs/sglang-protocol.md``, §11's facts). The
generation routes live in ``_native`` (``/generate``) and ``_openai`` (``/v1/...``); the
scheduler model (latency, aborts, radix cache, sessions) in ``_engine``.
"""

from __future__ import annotations

import hmac
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from sglang_client.testing._asgi import (
    TEXT_TYPE,
    HTTPError,
    Message,
    Receive,
    Scope,
    Send,
    dumps,
    flat_error,
    read_body,
    require_object,
    send_bytes,
)
from sglang_client.testing._config import FakeServerConfig
from sglang_client.testing._engine import Engine, FakeServerStats
from sglang_client.testing._faults import FaultPlan, InjectedDisconnect, reset_connection
from sglang_client.testing._native import InternalCrash, NativeGenerate
from sglang_client.testing._openai import OpenAIRoutes
from sglang_client.testing._routes import MiscRoutes
from sglang_client.testing._tokenizer import TOKENIZERS

__all__ = ["FakeSGLangApp", "create_fake_app"]

_Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
_EXEMPT = ("/health", "/ready", "/metrics")
_GENERATION = frozenset({"/generate", "/v1/completions", "/v1/chat/completions"})


class _ConnectionGone(Exception):
    """The connection was reset or abandoned on purpose; send nothing more."""


class FakeSGLangApp:
    """A protocol-faithful fake SGLang server (ASGI 3).

    Attributes:
        config: The ``FakeServerConfig`` in force.
        stats: ``FakeServerStats`` counters (requests per route, tokens, aborts...).
        faults: ``FaultPlan``; ``app.faults.fail_next(2, "503")`` fails the next two requests.
        tokenizer: The built-in tokenizer (``encode``/``decode``/``vocab_size``).

    Example:
        ```python
        app = create_fake_app(latency_per_token=0.01)
        # uvicorn.run(app, port=30000), or use FakeSGLangServer for an in-process server
        ```
    """

    def __init__(self, config: FakeServerConfig) -> None:
        self.config = config
        self.tokenizer = TOKENIZERS[config.tokenizer]
        self.stats = FakeServerStats()
        self.rng = random.Random(config.seed)
        self.faults = FaultPlan(config, self.rng)
        self.engine = Engine(config, self.tokenizer, self.rng, self.stats)
        self._native = NativeGenerate(self.engine)
        self._openai = OpenAIRoutes(self.engine, self._native)
        self._misc = MiscRoutes(self)
        self.started_at = time.monotonic()
        misc = self._misc
        get, post = frozenset({"GET"}), frozenset({"POST"})
        get_post = frozenset({"GET", "POST"})
        self._routes: dict[str, tuple[frozenset[str], _Handler]] = {
            "/generate": (frozenset({"POST", "PUT"}), self._generate),
            "/v1/chat/completions": (post, self._chat),
            "/v1/completions": (post, self._completions),
            "/health": (get, misc.health),
            "/health_generate": (get, misc.health),
            "/ready": (get, misc.health),
            "/ping": (get, misc.health),
            "/model_info": (get, misc.model_info),
            "/get_model_info": (get, misc.model_info),
            "/server_info": (get, misc.server_info),
            "/get_server_info": (get, misc.server_info),
            "/flush_cache": (get_post, misc.flush_cache),
            "/tokenize": (post, misc.tokenize),
            "/v1/tokenize": (post, misc.tokenize),
            "/detokenize": (post, misc.detokenize),
            "/v1/detokenize": (post, misc.detokenize),
            "/abort_request": (post, misc.abort_request),
            "/open_session": (get_post, misc.open_session),
            "/close_session": (get_post, misc.close_session),
            "/metrics": (get, misc.metrics),
            "/v1/models": (get, misc.models),
            "/": (frozenset({"GET", "HEAD"}), misc.root),
        }

    def model_card(self) -> dict[str, Any]:
        """The served model's ``/v1/models`` card."""
        return self._openai.model_card()

    def mark_started(self) -> None:
        """Restart the ``startup_delay`` clock (call when the server starts listening)."""
        self.started_at = time.monotonic()

    @property
    def is_ready(self) -> bool:
        """Whether ``startup_delay`` has passed."""
        return time.monotonic() - self.started_at >= self.config.startup_delay

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point (http and lifespan)."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        path: str = scope["path"]
        self.stats.requests[path] += 1
        self.stats.http[(path, scope["method"])] += 1
        for name, value in scope["headers"]:
            if name == b"x-smg-routing-key":
                self.stats.routing_keys[value.decode("latin-1")] += 1
        if self.config.api_key is not None and not self._authorized(scope, path):
            # SGLang's auth middleware answers before its CORS layer: no vary header.
            self.stats.error_responses += 1
            await send_bytes(send, 401, dumps({"error": "Unauthorized"}))
            return
        send = _with_vary(send)
        try:
            route = self._routes.get(path)
            if route is None:
                if path.startswith("/v1/models/"):
                    route = (frozenset({"GET"}), self._misc.model)
                else:
                    raise HTTPError(404, {"detail": "Not Found"})
            methods, handler = route
            if scope["method"] not in methods:
                allow = ", ".join(sorted(methods)).encode()
                raise HTTPError(405, {"detail": "Method Not Allowed"}, headers=[(b"allow", allow)])
            if (
                self.faults.pending
                and path not in _GENERATION
                and await self.path_fault(path, receive, send)
            ):
                return
            await handler(scope, receive, send)
        except HTTPError as exc:
            self.stats.error_responses += 1
            await send_bytes(send, exc.status, exc.body, exc.content_type, exc.headers)
        except InternalCrash:
            # Starlette's answer to an uncaught exception.
            self.stats.error_responses += 1
            await send_bytes(send, 500, b"Internal Server Error", TEXT_TYPE)
        except _ConnectionGone:
            pass

    def _authorized(self, scope: Scope, path: str) -> bool:
        """SGLang's API-key middleware (fact 16): Bearer scheme, constant-time compare."""
        if path.startswith(_EXEMPT) or scope["method"] == "OPTIONS":
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                key = self.config.api_key or ""
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    token.strip().encode(), key.encode()
                )
        return False

    # -- generation routes -------------------------------------------------------------------

    def _fault_drawer(
        self, path: str, receive: Receive, send: Send
    ) -> Callable[[bool], Awaitable[str | None]]:
        async def draw(stream: bool) -> str | None:
            kind = self.faults.draw(path, True, stream)
            if kind is None or kind in ("503", "drop_stream"):
                return kind
            await _connection_fault(kind, receive, send)
            return None

        return draw

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        self.stats.generate_requests += 1
        if not _reads_json(scope):
            # FastAPI hands a non-JSON body over as bytes, which the dataclass refuses.
            require_object(body, "GenerateReqInput")
        draw = self._fault_drawer("/generate", receive, send)
        await self._native.handle(receive, send, body, draw)

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        self.stats.chat_completion_requests += 1
        draw = self._fault_drawer("/v1/chat/completions", receive, send)
        await self._openai.chat(scope, receive, send, body, draw)

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        self.stats.completion_requests += 1
        draw = self._fault_drawer("/v1/completions", receive, send)
        await self._openai.completions(scope, receive, send, body, draw)

    async def path_fault(self, path: str, receive: Receive, send: Send) -> bool:
        """Apply a fault planned for a non-generation ``path``; True when it answered."""
        kind = self.faults.draw(path, False, False)
        if kind is None:
            return False
        if kind == "503":
            if path.startswith(_EXEMPT):
                await send_bytes(send, 503, b"", None)
            else:
                raise HTTPError(503, flat_error("The request queue is full.", "503", 503))
            return True
        if kind == "drop_stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise InjectedDisconnect("injected disconnect")
        await _connection_fault(kind, receive, send)
        # A "hang" ran out; its wait consumed the request body, so answer "overloaded".
        raise HTTPError(503, flat_error("The request queue is full.", "503", 503))


async def _connection_fault(kind: str, receive: Receive, send: Send) -> None:
    """Apply a ``500``, ``connect_reset`` or ``hang`` fault (``hang`` may return after 30 s)."""
    if kind == "500":
        raise InternalCrash("injected fault")
    if kind == "connect_reset":
        if await reset_connection(send):
            raise _ConnectionGone
        raise InjectedDisconnect("injected connection reset")
    # "hang": answer nothing until the client gives up (or 30 s pass, then serve normally).
    with anyio.move_on_after(30):
        while (await receive())["type"] != "http.disconnect":
            pass
        raise _ConnectionGone


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_fake_app(config: FakeServerConfig | None = None, **overrides: Any) -> FakeSGLangApp:
    """Create the fake SGLang ASGI app.

    Args:
        config: Settings; ``None`` for the defaults.
        **overrides: ``FakeServerConfig`` fields that replace ``config``'s.

    Returns:
        The app; it exposes ``stats``, ``faults``, ``config`` and ``tokenizer`` for tests.

    Raises:
        TypeError: An override is not a ``FakeServerConfig`` field.
        ValueError: A setting is out of range.

    Example:
        ```python
        app = create_fake_app(api_key="secret", incremental_streaming_output=True)
        app.faults.fail_next(1, "503")
        ```
    """
    return FakeSGLangApp(FakeServerConfig.build(config, overrides))


_VARY = (b"vary", b"Origin")


def _reads_json(scope: Scope) -> bool:
    """Whether FastAPI parses the body as JSON: ``application/json`` or ``application/*+json``
    (no content type, ``text/plain`` and curl -d's form type are refused, as SGLang does)."""
    value = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    media = value.decode("latin-1").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _with_vary(send: Send) -> Send:
    """``send`` adding ``vary: Origin`` to every response, as SGLang's CORS middleware does."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), _VARY]}
        await send(message)

    sending.__wrapped__ = send  # type: ignore[attr-defined]  # for reset_connection
    return sending
