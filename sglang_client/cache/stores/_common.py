"""Helpers the stores share: argument checks, JSON decoding and an in-process key lock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from sglang_client.cache.stores.base import JSONObject, LockTimeoutError, StoreError, dump_json

__all__ = [
    "LocalKeyLock",
    "check_key",
    "check_limit",
    "check_page",
    "dump_completions",
    "load_completions",
    "load_request",
]


def check_key(key: str) -> None:
    """Reject keys no store can hold."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"cache key must be a non-empty string, got {key!r}")


def check_limit(limit: int | None) -> None:
    """Reject a negative completion limit."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")


def check_page(offset: int, limit: int) -> None:
    """Reject a negative page offset or size."""
    if offset < 0 or limit < 0:
        raise ValueError(f"offset and limit must be >= 0, got offset={offset}, limit={limit}")


def dump_completions(completions: Sequence[Mapping[str, Any]]) -> list[str]:
    """Encode each completion, raising ``StoreError`` for non-dicts and non-JSON values."""
    if isinstance(completions, (str, bytes, Mapping)):
        raise StoreError("completions must be a sequence of JSON objects, not a single value")
    out = []
    for completion in completions:
        if not isinstance(completion, Mapping):
            raise StoreError(f"each completion must be a JSON object, got {type(completion)}")
        out.append(dump_json(completion, "a completion"))
    return out


def load_request(text: str | bytes | None) -> JSONObject | None:
    """Decode a stored request (``None`` and ``"null"`` both mean no request)."""
    if text is None:
        return None
    value: JSONObject | None = json.loads(text)
    return value


def load_completions(texts: Sequence[str], limit: int | None) -> list[JSONObject]:
    """Decode the first ``limit`` stored completion texts with a single ``json.loads``."""
    if limit is not None and limit < len(texts):
        texts = texts[:limit]
    if not texts:
        return []
    value: list[JSONObject] = json.loads("[" + ",".join(texts) + "]")
    return value


class _Slot:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        # A semaphore, not a Lock: re-entry from the same task waits and times out, as a Redis
        # lock does, instead of raising RuntimeError.
        self.lock = anyio.Semaphore(1)
        self.users = 0


class LocalKeyLock:
    """Per-key mutual exclusion inside one process (one event loop).

    Slots live only while someone holds or waits for them, so the map stays as small as the
    number of keys in flight.
    """

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    @asynccontextmanager
    async def hold(self, key: str, timeout: float | None) -> AsyncIterator[None]:
        """Hold ``key``'s lock, waiting at most ``timeout`` seconds for it."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        slot.users += 1
        try:
            try:
                with anyio.fail_after(timeout):
                    await slot.lock.acquire()
            except TimeoutError as exc:
                raise LockTimeoutError(
                    f"could not lock cache key {key[:16]}... within {timeout} s"
                ) from exc
            try:
                yield
            finally:
                slot.lock.release()
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[key]
