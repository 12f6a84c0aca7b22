"""Health, load and readiness: the probes behind ``SGLangClient.health``, ``load`` and
``wait_for_ready`` (kept here so that ``client.py`` stays one method per endpoint)."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import anyio

from sglang_client._load import load_from_metrics, load_from_server_info
from sglang_client.errors import APITimeoutError
from sglang_client.types import HealthStatus, ServerLoad

if TYPE_CHECKING:
    from sglang_client.client import SGLangClient

__all__ = ["check_health", "read_load", "wait_until_ready"]


_LOAD_WITHIN = 1.0  # seconds a detailed health check waits for the load (read alongside)


async def check_health(client: SGLangClient, timeout: float, detailed: bool) -> HealthStatus:
    """``GET /health`` once (and, with ``detailed``, the load alongside it); never raises."""
    started = time.perf_counter()
    outcome: dict[str, Any] = {}

    async def probe() -> None:
        try:
            client._check_open()
            outcome["response"] = await client._http.probe("/health", timeout)
        except Exception as exc:
            outcome["error"] = exc
        outcome["latency"] = time.perf_counter() - started  # of /health alone

    async def read() -> None:
        with contextlib.suppress(Exception):  # health never raises; the load is an extra
            outcome["load"] = await read_load(client, min(timeout, _LOAD_WITHIN))

    # Neither task raises, so nothing leaves the group as an ExceptionGroup.
    async with anyio.create_task_group() as group:
        group.start_soon(probe)
        if detailed:
            group.start_soon(read)
    if "error" in outcome:
        exc = outcome["error"]
        return HealthStatus(
            available=False, latency=outcome["latency"], error=f"{type(exc).__name__}: {exc}"
        )
    response = outcome["response"]
    ok = response.status_code == 200
    error = None if ok else (response.text.strip() or f"HTTP {response.status_code}")
    return HealthStatus(
        available=ok,
        latency=outcome["latency"],
        error=error,
        status_code=response.status_code,
        load=outcome.get("load"),
    )


async def read_load(client: SGLangClient, timeout: float) -> ServerLoad:
    """The server's load: ``/metrics`` when it serves them, else ``/server_info``.

    Raises:
        SGLangError: neither could be read.
    """
    client._check_open()
    response = await client._http.probe("/metrics", timeout)
    read_at = time.time()
    kind = response.headers.get("content-type", "")
    if response.status_code == 200 and kind.startswith("text/plain"):
        return load_from_metrics(response.text, read_at)
    info = await client.get_server_info(timeout=timeout)
    return load_from_server_info(info.model_dump(), read_at)


async def wait_until_ready(
    client: SGLangClient, timeout: float, interval: float, max_queue: int | None
) -> None:
    """Poll until ``/health`` answers 200 (and, with ``max_queue``, the queue is that short).

    Raises:
        APITimeoutError: not ready within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: str | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        status = await check_health(client, max(0.05, min(5.0, remaining)), False)
        last = status.error
        if status.available:
            if max_queue is None:
                return
            try:
                load = await read_load(client, max(0.05, min(5.0, remaining)))
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                # A server that does not report its queue cannot be waited on for it.
                if load.queue_length is None or load.queue_length <= max_queue:
                    return
                last = f"{load.queue_length} requests queued (waiting for <= {max_queue})"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        await anyio.sleep(min(interval, remaining))
    detail = f" (last: {last})" if last else ""
    raise APITimeoutError(f"{client.base_url} was not ready after {timeout:g} s{detail}")
