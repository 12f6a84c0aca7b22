"""The exception hierarchy: every failure a user can meet is an ``SGLangError``.

```
SGLangError
├── APIConnectionError          could not reach the server, or the connection dropped
│   └── APITimeoutError         connect/read/pool timeout, or wait_for_ready ran out
├── APIStatusError              the server answered with an error status (.status_code, .body, ...)
│   ├── BadRequestError         400
│   ├── AuthenticationError     401
│   ├── PermissionDeniedError   403
│   ├── NotFoundError           404
│   ├── UnprocessableEntityError 422
│   ├── InternalServerError     500 and other 5xx
│   └── ServerOverloadedError   503 (queue full, shutting down, request timeout)
├── StreamError                 an error event inside a 200 SSE stream, or a stream cut short
├── SessionNotFoundError        (also a LookupError) unknown or deleted session id
└── TokenizerUnavailable        a token-exact session cannot tokenize (no /tokenize, no tokenizer)
```

``error_from_response`` turns any of SGLang's error bodies (docs/sglang-protocol.md §4) into
the right class, with the server's own message as ``str(exc)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sglang_client._http import HTTPResponse

__all__ = [
    "STATUS_TO_ERROR",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "SGLangError",
    "ServerOverloadedError",
    "SessionNotFoundError",
    "TokenizerUnavailable",
    "StreamError",
    "UnprocessableEntityError",
    "decode_body",
    "error_from_response",
    "error_from_status",
    "extract_error_message",
]


class SGLangError(Exception):
    """Base class of every exception this library raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIConnectionError(SGLangError):
    """The server could not be reached, or the connection broke before a response arrived."""


class APITimeoutError(APIConnectionError):
    """A request (or ``wait_for_ready``) did not complete in time."""


class APIStatusError(SGLangError):
    """The server answered with an HTTP error status.

    Attributes:
        status_code: the HTTP status.
        body: the decoded JSON body, or the raw text when it was not JSON.
        request_id: the request's id where known (``X-Request-Id`` header or ``rid``).
        response: the HTTP response when there was one.
    """

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: object = None,
        request_id: str | None = None,
        response: HTTPResponse | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.request_id = request_id
        self.response = response


class BadRequestError(APIStatusError):
    """400: the request was invalid (bad JSON, unknown sampling key, out-of-range value, ...)."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403: the endpoint needs an admin key."""


class NotFoundError(APIStatusError):
    """404: no such route or model."""


class UnprocessableEntityError(APIStatusError):
    """422: the body was well-formed but could not be processed."""


class InternalServerError(APIStatusError):
    """500 or another 5xx status: the server failed."""


class ServerOverloadedError(InternalServerError):
    """503: the server's queue is full, it is starting or stopping, or the request timed out."""


class StreamError(SGLangError):
    """An error event arrived inside a 200 SSE stream, or the stream ended before ``[DONE]``.

    Attributes:
        body: the error event's JSON, where there was one.
    """

    def __init__(self, message: str, *, body: object = None) -> None:
        super().__init__(message)
        self.body = body


class SessionNotFoundError(SGLangError, LookupError):
    """The session id is unknown or was deleted."""


class TokenizerUnavailable(SGLangError):
    """A token-exact session cannot tokenize: the server has no ``/tokenize`` route and no local
    tokenizer was given."""


class ServerSessionsUnavailable(SGLangError):
    """Server sessions were asked for, but the server routes no ``/open_session`` (SGLang's
    Model Gateway 0.3 does not); client-side sessions work there."""


STATUS_TO_ERROR: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: UnprocessableEntityError,
    503: ServerOverloadedError,
}


def extract_error_message(body: object, default: str) -> str:
    """Return the human message from any of SGLang's error body shapes.

    Handles ``{"error": "text"}`` (contract errors, 401), ``{"error": {"message": ...}}``
    (semantic 400s, stream error events), flat ``{"object": "error", "message": ...}`` (pydantic
    400s, 503, OpenAI routes), FastAPI's ``{"detail": ...}`` and plain text.
    """
    if isinstance(body, str):
        return body.strip() or default
    if not isinstance(body, Mapping):
        return default
    error = body.get("error")
    if isinstance(error, str) and error:
        return error
    if isinstance(error, Mapping):
        nested = error.get("message")
        if isinstance(nested, str) and nested:
            return nested
    message = body.get("message")
    if isinstance(message, str) and message:
        return message
    detail = body.get("detail")
    if isinstance(detail, str) and detail:
        return detail
    if detail is not None:
        return json.dumps(detail)
    return default


def error_from_status(
    status_code: int,
    message: str,
    *,
    body: object = None,
    request_id: str | None = None,
    response: HTTPResponse | None = None,
) -> APIStatusError:
    """Build the ``APIStatusError`` subclass that ``STATUS_TO_ERROR`` names for a status."""
    cls = STATUS_TO_ERROR.get(status_code)
    if cls is None:
        cls = InternalServerError if status_code >= 500 else APIStatusError
    return cls(
        message, status_code=status_code, body=body, request_id=request_id, response=response
    )


def decode_body(content: bytes) -> object:
    """Decode a response body: JSON when it parses, else the text."""
    text = content.decode("utf-8", errors="replace")
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        return text
    return parsed


def error_from_response(
    status_code: int,
    content: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
    response: HTTPResponse | None = None,
) -> APIStatusError:
    """Turn an error response into the matching ``APIStatusError`` subclass."""
    body = decode_body(content)
    message = extract_error_message(body, f"HTTP {status_code}")
    if request_id is None and headers is not None:
        request_id = headers.get("x-request-id")
    return error_from_status(
        status_code, message, body=body, request_id=request_id, response=response
    )
