"""Raw ASGI plumbing for the fake server: bodies, JSON, responses, SSE, and error shapes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = [
    "DONE_EVENT",
    "JSON_TYPE",
    "TEXT_TYPE",
    "HTTPError",
    "Receive",
    "Scope",
    "Send",
    "dumps",
    "flat_error",
    "parse_json",
    "read_body",
    "require_object",
    "send_bytes",
    "send_json",
    "sse_event",
    "start_sse",
    "validation_error",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = b"application/json"
TEXT_TYPE = b"text/plain; charset=utf-8"
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]
DONE_EVENT = b"data: [DONE]\n\n"

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_encode_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def dumps(obj: object) -> bytes:
    """Compact JSON bytes, like orjson (UTF-8, no spaces)."""
    try:
        return _encode(obj).encode()
    except UnicodeEncodeError:
        # Lone surrogates from the request cannot be UTF-8; escape them instead.
        return _encode_ascii(obj).encode()


class HTTPError(Exception):
    """An HTTP error response, raised anywhere in a handler and sent by the app."""

    def __init__(
        self,
        status: int,
        body: object,
        content_type: bytes = JSON_TYPE,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body if isinstance(body, bytes) else dumps(body)
        self.content_type = content_type
        self.headers = headers or []


def flat_error(message: str, type_: str, code: int) -> dict[str, Any]:
    """SGLang's flat ``ErrorResponse`` body (pydantic errors, HTTPExceptions, OpenAI routes)."""
    return {"object": "error", "message": message, "type": type_, "param": None, "code": code}


def validation_error(errors: list[dict[str, Any]]) -> HTTPError:
    """FastAPI's ``RequestValidationError`` as SGLang reports it: 400, flat, ``Bad Request``."""
    return HTTPError(400, flat_error(str(errors), "Bad Request", 400))


def _parse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(text: str) -> int:
    value = int(text)
    if not -(1 << 63) <= value < 1 << 64:
        raise ValueError("Integer exceeds 64-bit range")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("Number out of range")
    return value


_decoder = json.JSONDecoder(
    parse_constant=_parse_constant, parse_int=_parse_int, parse_float=_parse_float
)


def parse_json(body: bytes, *, required: bool = True) -> Any:
    """Parse a request body as orjson would (no NaN/Infinity, 64-bit ints).

    Raises:
        HTTPError: 400 in FastAPI's validation shape for an empty or malformed body.
    """
    if not body.strip():
        if not required:
            return None
        return _raise_missing()
    try:
        text = body.decode()
        value = _decoder.decode(text)
    except UnicodeDecodeError as exc:
        raise _json_invalid(exc.start, "str is not valid UTF-8") from None
    except ValueError as exc:
        raise _json_invalid(getattr(exc, "pos", 0), getattr(exc, "msg", str(exc))) from None
    except RecursionError:
        # orjson allows 1024 levels; Python's parser gives up a little earlier.
        raise _json_invalid(_too_deep_at(text), "depth limit exceeded") from None
    if "\\u" in text:
        lone = _lone_surrogate(text)
        if lone is not None:
            raise _json_invalid(*lone) from None
    return value


def _json_invalid(position: int, reason: str) -> HTTPError:
    error: dict[str, Any] = {"type": "json_invalid", "loc": ("body", position)}
    error["msg"] = "JSON decode error"
    error.update({"input": {}, "ctx": {"error": reason}})
    return validation_error([error])


_MAX_DEPTH = 1024
# An escape sequence \\uXXXX not itself escaped (an even run of backslashes before it).
_UNICODE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u([0-9a-fA-F]{4})")


def _too_deep_at(text: str) -> int:
    """Where orjson stops a too-deeply nested document: just past its 1025th open bracket."""
    depth = deepest = at = 0
    in_string = escaped = False
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, i + 1
            if depth > _MAX_DEPTH:
                return i + 1
        elif char in "]}":
            depth -= 1
    return at


def _lone_surrogate(text: str) -> tuple[int, str] | None:
    """orjson's error for the first unpaired surrogate escape, as ``(position, reason)``."""
    pending: int | None = None  # position of a high surrogate waiting for its low half
    last_end = -1
    for match in _UNICODE_ESCAPE.finditer(text):
        code = int(match.group(1), 16)
        start = match.end() - 6
        if pending is not None and (start != last_end or not 0xDC00 <= code <= 0xDFFF):
            return pending, "no low surrogate in string"
        if pending is not None:
            pending = None
        elif 0xD800 <= code <= 0xDBFF:
            pending = start
        elif 0xDC00 <= code <= 0xDFFF:
            return start, "invalid high surrogate in string"
        last_end = match.end()
    return (pending, "no low surrogate in string") if pending is not None else None


def _raise_missing() -> Any:
    error = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
    raise validation_error([error])


def require_object(value: object, class_name: str) -> dict[str, Any]:
    """Return ``value`` if it is a JSON object, else raise the pydantic dataclass error."""
    if isinstance(value, dict):
        return value
    error = {
        "type": "dataclass_type" if class_name.endswith("ReqInput") else "model_attributes_type",
        "loc": ("body",),
        "msg": f"Input should be a dictionary or an instance of {class_name}",
        "input": value,
        "ctx": {"class_name": class_name},
    }
    raise validation_error([error])


async def read_body(receive: Receive) -> bytes:
    """Read the whole request body."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return bytes(body)
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None = JSON_TYPE,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a complete response (``content_type=None``: no content type, as some routes)."""
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, obj: object, status: int = 200) -> None:
    """Send ``obj`` as compact JSON."""
    await send_bytes(send, status, dumps(obj))


async def start_sse(send: Send) -> None:
    """Start a 200 ``text/event-stream`` response (chunked)."""
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})


def sse_event(obj: object) -> bytes:
    """One SSE event: ``data: <compact json>\\n\\n``."""
    return b"data: " + dumps(obj) + b"\n\n"
