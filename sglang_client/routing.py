"""Request-scoped headers and routing keys for SGLang's Model Gateway (``smg``).

The gateway pins a *routing key* to one worker (``--policy manual``, or any policy with
``--routing-key-override`` in newer versions), so every turn of a conversation lands where its
prefix is already in the radix cache. The key travels in the ``X-SMG-Routing-Key`` header;
a plain SGLang server ignores it.

``request_headers`` scopes extra headers to a block of code rather than to one call, so they
reach the server through every layer in between (``SGLangClient``, ``CachedClient``'s misses,
``SessionManager``'s turns) without each layer growing a parameter. They apply to requests
*sent* inside the block; a stream sends its request when iteration starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar

__all__ = [
    "ROUTING_KEY_HEADER",
    "check_routing_key",
    "current_headers",
    "request_headers",
    "routing_key",
    "routing_scope",
]

ROUTING_KEY_HEADER = "X-SMG-Routing-Key"
"""The header SGLang's Model Gateway reads a request's routing key from."""

MAX_ROUTING_KEY = 256
# Visible ASCII only: a key is echoed into another HTTP request, so no CR/LF, no spaces that a
# hop could trim differently, nothing that is not a valid header value everywhere.
_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_ROUTING_KEY}}}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 token)

_HEADERS: ContextVar[Mapping[str, str] | None] = ContextVar("sglang_client_headers", default=None)


def check_routing_key(key: object) -> str:
    """Return ``key`` if it is a valid routing key (1-256 visible ASCII characters).

    Raises:
        ValueError: it is not.
    """
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise ValueError(
            f"a routing key is 1-{MAX_ROUTING_KEY} visible ASCII characters, got {key!r:.80}"
        )
    return key


def current_headers() -> Mapping[str, str] | None:
    """The headers ``request_headers`` blocks around this point add (``None``: none)."""
    return _HEADERS.get()


@contextmanager
def request_headers(headers: Mapping[str, str]) -> Iterator[None]:
    """Send ``headers`` with every request started inside the block.

    Nested blocks merge, the inner one winning; the client's own headers come first.

    Example:
        ```python
        with request_headers({"X-SMG-Routing-Key": "user-42"}):
            await client.generate("Hello")
        ```

    Raises:
        ValueError: a name is not an HTTP token, or a value holds CR, LF or NUL.
    """
    for name, value in headers.items():
        if not isinstance(name, str) or _TOKEN.fullmatch(name) is None:
            raise ValueError(f"not an HTTP header name: {name!r:.80}")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name} has a value with CR, LF or NUL (or not a str)")
    outer = _HEADERS.get()
    token = _HEADERS.set({**outer, **headers} if outer else dict(headers))
    try:
        yield
    finally:
        _HEADERS.reset(token)


def routing_scope(key: str | None) -> AbstractContextManager[None]:
    """``routing_key(key)``, or a block that adds nothing for ``None``.

    Raises:
        ValueError: ``key`` is not 1-256 visible ASCII characters.
    """
    return nullcontext() if key is None else routing_key(key)


def routing_key(key: str) -> AbstractContextManager[None]:
    """``request_headers({"X-SMG-Routing-Key": key})``, with the key checked.

    Raises:
        ValueError: ``key`` is not 1-256 visible ASCII characters.
    """
    return request_headers({ROUTING_KEY_HEADER: check_routing_key(key)})
