"""Fault injection: random fault rates, a deterministic plan of the next faults, and the means
to cut a connection from inside an ASGI app."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import threading
from collections import deque
from typing import Any

from sglang_client.testing._config import FakeServerConfig

__all__ = [
    "FAULT_KINDS",
    "FaultPlan",
    "InjectedDisconnect",
    "QuietInjectedFaults",
    "reset_connection",
]

FAULT_KINDS = ("503", "500", "drop_stream", "connect_reset", "hang")
"""``503``: queue full; ``500``: plain-text crash; ``drop_stream``: the connection is cut after
part of the body; ``connect_reset``: the connection is reset before any response byte;
``hang``: no response until the client gives up (at most 30 s). ``connect_reset`` needs
uvicorn (it reaches the transport through ``send``); elsewhere it degrades to a 500."""


class InjectedDisconnect(ConnectionAbortedError):
    """Raised inside the app to make the server drop a connection mid-response on purpose."""


class QuietInjectedFaults(logging.Filter):
    """Drop uvicorn's "Exception in ASGI application" records caused by injected faults."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except tracebacks of ``InjectedDisconnect``."""
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, InjectedDisconnect)


class FaultPlan:
    """Which requests fail and how: planned faults first, then the configured rates.

    Thread-safe, so a test can plan faults while the server runs in its own thread.

    Example:
        ```python
        app.faults.fail_next(2, "503")      # the next two generation requests get 503
        app.faults.fail_next(1, "drop_stream", path="/generate")
        ```
    """

    def __init__(self, config: FakeServerConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self._planned: deque[tuple[str, str | None]] = deque()
        self._lock = threading.Lock()
        self.injected: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    def fail_next(self, count: int = 1, kind: str = "503", *, path: str | None = None) -> None:
        """Make the next ``count`` matching requests fail with ``kind``.

        Args:
            count: How many requests fail.
            kind: One of ``FAULT_KINDS``.
            path: Only requests to this exact path match; ``None`` matches the generation
                routes (``/generate``, ``/v1/completions``, ``/v1/chat/completions``).

        Raises:
            ValueError: Unknown ``kind`` or negative ``count``.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        with self._lock:
            self._planned.extend([(kind, path)] * count)

    def clear(self) -> None:
        """Forget planned faults."""
        with self._lock:
            self._planned.clear()

    @property
    def pending(self) -> int:
        """Planned faults not yet used."""
        return len(self._planned)

    def draw(self, path: str, is_generation: bool, is_stream: bool) -> str | None:
        """The fault for this request, if any (a planned one is used up)."""
        if self._planned:
            with self._lock:
                for i, (planned, only) in enumerate(self._planned):
                    if only == path or (only is None and is_generation):
                        del self._planned[i]
                        self.injected[planned] += 1
                        return planned
        if not is_generation:
            return None
        config = self._config
        kind: str | None = None
        if config.fail_503_rate and self._rng.random() < config.fail_503_rate:
            kind = "503"
        elif config.fail_500_rate and self._rng.random() < config.fail_500_rate:
            kind = "500"
        elif is_stream and config.drop_stream_rate and self._rng.random() < config.drop_stream_rate:
            kind = "drop_stream"
        if kind is not None:
            self.injected[kind] += 1
        return kind


async def reset_connection(send: Any) -> bool:
    """Reset the client's TCP connection (RST, no response) from inside an ASGI app.

    Works with uvicorn, whose ``send`` is a method of the request cycle holding the transport.
    Returns ``False`` when the transport is not reachable (another server).
    """
    send = getattr(send, "__wrapped__", send)  # under the app's header wrapper
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 makes close() send RST: the client sees "connection reset by peer".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    for _ in range(100):  # let uvicorn notice, so it does not try to answer with a 500
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0)
    return True
