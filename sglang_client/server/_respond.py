"""How the proxy answers from upstream: a cached stream as SSE, and an upstream failure as an
HTTP error. One place for both, shared by the cached routes and the pass-through."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from sglang_client.errors import APIStatusError, APITimeoutError, SGLangError
from sglang_client.server._asgi import (
    SSE_DONE,
    Receive,
    Send,
    error_body,
    send_bytes,
    send_json,
    sse_event,
)

if TYPE_CHECKING:
    from sglang_client.cache import CachedStream
    from sglang_client.server._metrics import Metrics

__all__ = [
    "close_stream",
    "send_stream",
    "unless_client_leaves",
    "upstream_failed",
    "watch_disconnect",
]

T = TypeVar("T")

logger = logging.getLogger("sglang_client.proxy")


async def upstream_failed(exc: SGLangError, send: Send, metrics: Metrics) -> tuple[int, str]:
    """Answer an upstream failure: its own status and body, 504 for a timeout, else 502."""
    if isinstance(exc, APIStatusError):
        metrics.upstream_error("status")
        body = exc.body
        if isinstance(body, (dict, list)):
            await send_json(send, exc.status_code, body)
        else:
            text = str(body if body is not None else exc).encode()
            content_type = (b"content-type", b"text/plain; charset=utf-8")
            await send_bytes(send, exc.status_code, text, [content_type])
        return exc.status_code, "error"
    if isinstance(exc, APITimeoutError):
        metrics.upstream_error("timeout")
        message = f"The upstream SGLang server timed out: {exc}"
        await send_json(send, 504, error_body(504, message, "Gateway Timeout"))
        return 504, "error"
    metrics.upstream_error("connect")
    message = f"The upstream SGLang server is unreachable or failed: {exc}"
    await send_json(send, 502, error_body(502, message, "Bad Gateway"))
    return 502, "error"


async def client_left(receive: Receive) -> None:
    """Return once the client hangs up (the one place that waits for ``http.disconnect``)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` when the client hangs up: nothing is generated for nobody, nor stored."""
    await client_left(receive)
    scope.cancel()


async def unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T | None:
    """Await ``work``, cancelled when the client hangs up first (then ``None``): SGLang aborts
    a request whose client left, and so must the proxy, or the upstream generates for nobody.

    One plain asyncio task waits for the disconnect: a task group's cancel scope would cost
    every store hit, and misses are all this is for.
    """
    task = asyncio.current_task()
    state = {"done": False, "gone": False}

    async def wait() -> None:
        await client_left(receive)
        if not state["done"] and task is not None:
            state["gone"] = True
            task.cancel()

    watcher = asyncio.ensure_future(wait())
    try:
        result = await work
    except asyncio.CancelledError:
        if state["gone"]:
            return None
        raise
    finally:
        state["done"] = True
        watcher.cancel()
    return result


async def close_stream(stream: CachedStream) -> None:
    """Close a cached stream, shielded: it releases the key's lock (a Redis call) even when the
    request was cancelled."""
    with anyio.CancelScope(shield=True):
        await stream.aclose()


async def send_stream(
    stream: CachedStream,
    receive: Receive,
    send: Send,
    metrics: Metrics,
    path: str,
    headers: list[tuple[bytes, bytes]],
) -> tuple[int, str]:
    """Send a cached stream as SSE; return ``(status, outcome)`` (``"aborted"``: client left)."""
    events: AsyncIterator[dict[str, Any]] = stream.__aiter__()
    try:
        # Wait for the first event before answering 200, so an upstream failure that comes
        # before any output is still a real HTTP error (as SGLang's OpenAI routes do).
        first: dict[str, Any] | None = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except SGLangError as exc:
        await close_stream(stream)
        return await upstream_failed(exc, send, metrics)
    except BaseException:
        await close_stream(stream)
        raise
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    outcome = "aborted"
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_disconnect, receive, tg.cancel_scope)
        try:
            if first is not None:
                body = sse_event(first)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                async for event in events:
                    body = sse_event(event)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": SSE_DONE})
            outcome = stream.status.value
        except SGLangError as exc:
            # Headers are gone: end with an error event and [DONE], SGLang's framing (§3.5).
            logger.warning("upstream stream failed mid-way on %s: %s", path, exc)
            metrics.upstream_error("stream")
            error = error_body(502, f"The upstream stream failed: {exc}", "Bad Gateway")
            tail = sse_event({"error": error}) + SSE_DONE
            await send({"type": "http.response.body", "body": tail})
            outcome = "error"
        finally:
            await close_stream(stream)
        tg.cancel_scope.cancel()
    return 200, outcome
