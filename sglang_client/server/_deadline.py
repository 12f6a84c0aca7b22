"""Request-body deadlines without a timer per request.

A body that never completes (a stalled or trickling client) must not hold a request open, but
arming a cancel scope around every ``receive()`` costs ~10 us, a sixth of a cache hit. Here a
request only notes its deadline when it starts reading; one watcher task per app wakes every
second or so and cancels the readers that are past theirs, which then raise ``BodyTimeout``.
The proxy runs on asyncio (uvicorn), which this relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from sglang_client.server._asgi import BodyTimeout, Message, Receive

__all__ = ["BodyDeadlines", "TimedReceive"]


class TimedReceive:
    """``receive`` whose body must complete by a deadline; ``finish()`` when the request ends."""

    __slots__ = ("_complete", "_deadlines", "_receive", "_token")

    def __init__(self, deadlines: BodyDeadlines, receive: Receive) -> None:
        self._deadlines = deadlines
        self._receive = receive
        self._complete = False
        self._token: object | None = None

    async def __call__(self) -> Message:
        if self._complete:
            return await self._receive()
        deadlines = self._deadlines
        if self._token is None:
            self._token = deadlines.start()
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if deadlines.expired(self._token):
                raise BodyTimeout(deadlines.seconds) from None
            raise
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._complete = True
            self.finish()
        return message

    def finish(self) -> None:
        """Stop watching this request (idempotent)."""
        if self._token is not None:
            self._deadlines.stop(self._token)
            self._token = None


class BodyDeadlines:
    """The readers of one app, and the task that cancels those past their deadline.

    Args:
        seconds: how long a request may take to send its whole body.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._reading: dict[object, tuple[float, asyncio.Task[Any]]] = {}
        self._expired: set[object] = set()
        self._watcher: asyncio.Task[None] | None = None

    def track(self, receive: Receive) -> TimedReceive:
        """Wrap one request's ``receive``."""
        return TimedReceive(self, receive)

    def start(self) -> object:
        """Note that the current task starts reading a body; return its token."""
        token = object()
        task = asyncio.current_task()
        assert task is not None
        self._reading[token] = (time.monotonic() + self.seconds, task)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return token

    def stop(self, token: object) -> None:
        self._reading.pop(token, None)
        self._expired.discard(token)

    def expired(self, token: object) -> bool:
        """Whether ``token``'s reader was cancelled for its deadline (then forget it)."""
        if token not in self._expired:
            return False
        self.stop(token)
        task = asyncio.current_task()
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+: this cancel is handled
        if uncancel is not None:
            uncancel()
        return True

    async def _watch(self) -> None:
        step = min(1.0, max(self.seconds / 4, 0.01))
        while self._reading:
            await asyncio.sleep(step)
            now = time.monotonic()
            for token, (deadline, task) in list(self._reading.items()):
                if deadline <= now and token not in self._expired:
                    self._expired.add(token)
                    task.cancel()

    async def aclose(self) -> None:
        """Stop the watcher."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None and not watcher.done():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
