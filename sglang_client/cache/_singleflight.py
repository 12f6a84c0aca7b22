"""Per-key coalescing: one upstream generation per cache key at a time, in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import anyio

__all__ = ["KeyedLocks"]


class _Slot:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


class KeyedLocks:
    """A lock per key, created on demand and dropped when nobody holds or waits for it.

    Several keys are taken in sorted order, so two requests over overlapping key sets cannot
    deadlock. Bookkeeping happens without awaiting; every path releases on ``BaseException``
    (cancellation included).
    """

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold the locks of ``keys`` for the duration of the ``async with`` block."""
        slots = []
        for key in sorted(set(keys)):
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
            slot.users += 1
            slots.append((key, slot))
        acquired: list[_Slot] = []
        try:
            for _, slot in slots:
                try:
                    slot.lock.acquire_nowait()  # the common, uncontended case: no loop turn
                except anyio.WouldBlock:
                    await slot.lock.acquire()
                acquired.append(slot)
            yield
        finally:
            for slot in reversed(acquired):
                slot.lock.release()
            for key, slot in slots:
                slot.users -= 1
                if slot.users == 0:
                    del self._slots[key]
