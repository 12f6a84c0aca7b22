"""Sessions behind SGLang's Model Gateway: each session's routing key on each of its requests."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from sglang_client._session_types import Session, SessionClient, aclose_all
from sglang_client.errors import NotFoundError, ServerSessionsUnavailable
from sglang_client.routing import check_routing_key, routing_scope

__all__ = ["open_server_session", "route", "routed", "session_routing_key"]

T = TypeVar("T")
_END: Any = object()  # anext's default: the iterator is exhausted


def session_routing_key(session_id: str, given: str | None) -> str:
    """``given`` (checked), else the session id, else a stable hash of an id unfit for a header.

    Raises:
        ValueError: ``given`` is not a valid routing key.
    """
    if given is not None:
        return check_routing_key(given)
    try:
        return check_routing_key(session_id)
    except ValueError:  # an id with spaces or non-ASCII characters
        return hashlib.sha256(session_id.encode()).hexdigest()[:32]


def route(session: Session) -> AbstractContextManager[None]:
    """The session's routing key on the requests started inside (nothing without a key)."""
    return routing_scope(session.routing_key)


async def routed(session: Session, chunks: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """``chunks``, with its request sent under the session's routing key.

    Only the first step runs inside the header scope: a stream sends its request then, and a
    scope must not stay open across a ``yield``, where the caller's own code runs.
    """
    try:
        with route(session):
            chunk = await anext(chunks, _END)
        while chunk is not _END:
            yield chunk
            chunk = await anext(chunks, _END)
    finally:
        await aclose_all(chunks)


async def open_server_session(client: SessionClient, capacity: int, key: str | None) -> str:
    """``/open_session`` under the session's routing key (the gateway pins it there).

    Raises:
        ServerSessionsUnavailable: the server routes no ``/open_session``.
    """
    try:
        with routing_scope(key):
            return await client.open_session(capacity)
    except NotFoundError as exc:
        raise ServerSessionsUnavailable(
            "this server has no /open_session (SGLang's Model Gateway 0.3 routes none); use"
            " SessionManager(server_sessions=False): sessions then re-send their token ids"
            " and stay on one worker by their routing key"
        ) from exc
