"""What a cached call returns: a whole body or a stream, each with how the cache served it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sglang_client.cache.stats import CacheStatus

__all__ = ["CachedResult", "CachedStream", "iterate"]

JSON = dict[str, Any]


@dataclass
class CachedResult:
    """A raw response and how the cache served it."""

    body: Any
    status: CacheStatus
    from_cache: int = 0
    generated: int = 0


class CachedStream:
    """Raw stream events plus the cache status, known before the first event."""

    def __init__(self, status: CacheStatus, events: AsyncIterator[JSON]) -> None:
        self.status = status
        self._events = events

    def __aiter__(self) -> AsyncIterator[JSON]:
        return self._events

    async def aclose(self) -> None:
        """Stop the stream (nothing partial is stored)."""
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()


async def iterate(events: list[JSON]) -> AsyncIterator[JSON]:
    for event in events:
        yield event
