"""ASGI plumbing for the proxy: types, request headers and body, responses, SGLang error shapes."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = [
    "JSON_TYPE",
    "SSE_DONE",
    "ASGIApp",
    "BodyTimeout",
    "BodyTooLarge",
    "ClientGone",
    "Message",
    "Receive",
    "RequestHeaders",
    "Scope",
    "Send",
    "dumps",
    "error_body",
    "read_body",
    "read_or_refuse",
    "replay",
    "send_bytes",
    "send_json",
    "sse_event",
    "with_length",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")
SSE_DONE = b"data: [DONE]\n\n"
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class BodyTooLarge(Exception):
    """The request body is over the proxy's limit."""


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class BodyTimeout(Exception):
    """The request body did not arrive in time (a slow or stalled client)."""


class RequestHeaders:
    """The few request headers the proxy acts on, found in one pass over ``scope["headers"]``.

    Attributes:
        content_type: the media type, lower-cased, without parameters (``""`` when absent).
        cache_control: the ``Cache-Control`` value, lower-cased.
        bearer: the token of ``Authorization: Bearer <token>``, or ``None``.
        content_length: the declared body size, or ``None`` (absent or unreadable).
        routing_key: the ``X-SMG-Routing-Key`` value (passed on to a gateway upstream), or
            ``None``; not yet checked (``routing_key`` in ``sglang_client.routing`` checks).
    """

    __slots__ = ("bearer", "cache_control", "content_length", "content_type", "routing_key")

    def __init__(self, scope: Scope) -> None:
        # One C-level pass; a repeated header keeps its last value, which is fine for these four.
        headers: dict[bytes, bytes] = dict(scope["headers"])
        value = headers.get(b"content-type")
        if value is None:
            self.content_type = ""
        elif value == b"application/json":
            self.content_type = "application/json"
        else:
            self.content_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
        value = headers.get(b"cache-control")
        self.cache_control = "" if value is None else value.lower().decode("latin-1")
        self.bearer: str | None = None
        value = headers.get(b"authorization")
        if value is not None:
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                self.bearer = token.strip()
        self.content_length: int | None = None
        value = headers.get(b"content-length")
        if value is not None and value.isdigit():
            self.content_length = int(value)
        value = headers.get(b"x-smg-routing-key")
        self.routing_key = None if value is None else value.decode("latin-1")


async def read_body(receive: Receive, limit: int) -> bytes:
    """Read the whole request body, refusing more than ``limit`` bytes.

    Raises:
        BodyTooLarge: more than ``limit`` bytes arrived.
        ClientGone: the client disconnected first.
    """
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the common case: one message
        if len(body) > limit:
            raise BodyTooLarge(len(body))
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(size)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_or_refuse(
    headers: RequestHeaders, receive: Receive, send: Send, limit: int
) -> bytes | int:
    """The whole request body, or the status the request ended with instead: 413, answered
    here (larger than ``limit``, as declared or as sent), or 499 (the client left first)."""
    try:
        if headers.content_length is not None and headers.content_length > limit:
            raise BodyTooLarge(headers.content_length)
        return await read_body(receive, limit)
    except BodyTooLarge:
        message = f"The request body is larger than the proxy's limit of {limit} bytes."
        await send_json(send, 413, error_body(413, message, "Request Entity Too Large"))
        return 413
    except ClientGone:
        return 499


def error_body(status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    """SGLang's flat error shape (§4): what its HTTPException and OpenAI handlers send."""
    return {
        "object": "error",
        "message": message,
        "type": kind or str(status),
        "param": None,
        "code": status,
    }


def dumps(value: Any) -> bytes:
    """Compact JSON with raw UTF-8, like SGLang's orjson responses."""
    return _DUMPS(value).encode()


def sse_event(value: Any) -> bytes:
    """One SSE event in SGLang's framing (§3.1): ``data: <compact JSON>\\n\\n``."""
    return b"data: " + _DUMPS(value).encode() + b"\n\n"


def with_length(headers: list[tuple[bytes, bytes]], body: bytes) -> list[tuple[bytes, bytes]]:
    """``headers`` plus the ``Content-Length`` of ``body``."""
    return [*headers, (b"content-length", str(len(body)).encode())]


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    complete: bool = False,
) -> None:
    """Send a whole response with its ``Content-Length`` (as SGLang's JSON responses have).

    ``complete=True`` says ``headers`` already carry it.
    """
    if not complete:
        headers = with_length(headers, body)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, value: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a JSON response."""
    await send_bytes(send, status, dumps(value), [JSON_TYPE, *(extra or [])])


def replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first returns ``messages``, the ones already read."""
    if not messages:
        return receive
    pending = list(reversed(messages))

    async def again() -> Message:
        return pending.pop() if pending else await receive()

    return again
