"""``FakeSGLangServer``: the fake app served by uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio

from sglang_client._extras import require
from sglang_client._net import bind_loopback

if TYPE_CHECKING:
    import uvicorn

from sglang_client.testing._config import FakeServerConfig
from sglang_client.testing._faults import QuietInjectedFaults
from sglang_client.testing.app import FakeSGLangApp, create_fake_app

__all__ = [
    "FakeSGLangServer",
    "ThreadedServer",
    "bind_loopback",
    "quiet_injected_faults",
    "stop_process",
]


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """End a process this program started: SIGTERM, then SIGKILL if it outlives ``timeout``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def quiet_injected_faults() -> None:
    """Keep uvicorn from logging tracebacks of deliberately dropped connections (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietInjectedFaults) for f in logger.filters):
        logger.addFilter(QuietInjectedFaults())


class ThreadedServer:
    """Serve an ASGI app with uvicorn on a free loopback port, in a thread with its own loop.

    The machinery under ``FakeSGLangServer``, also used by tests that run the proxy in-process.

    Args:
        app: the ASGI app.
        lifespan: uvicorn's lifespan mode (``"off"``, ``"on"``).
    """

    def __init__(self, app: Any, *, lifespan: Literal["on", "off"] = "off") -> None:
        self.app = app
        self.lifespan = lifespan
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    def start(self, timeout: float = 10.0) -> None:
        """Start serving and wait until uvicorn accepts connections.

        Raises:
            RuntimeError: Already running, or uvicorn did not start within ``timeout``.
        """
        if self._server is not None:
            raise RuntimeError("the server is already running")
        uvicorn = require("uvicorn", "the fake SGLang server")
        sock = bind_loopback()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan=self.lifespan,
            log_level="warning",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._error = None
        self._thread = threading.Thread(
            target=self._serve, args=(server, sock), name=f"asgi-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server = None
                sock.close()
                raise RuntimeError(f"the server did not start: {self._error!r}")
            time.sleep(0.005)

    def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # reported by start()
            self._error = exc
        finally:
            sock.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and join its thread (forcing exit if it lingers)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout / 2)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout / 2)
        self._server = None
        self._thread = None


class FakeSGLangServer:
    """Run the fake SGLang server on ``127.0.0.1:<free port>`` in a background thread.

    Usable as ``with`` and ``async with`` (the async form starts and stops in a worker thread,
    so the caller's event loop keeps running). The server has its own event loop.

    Args:
        config: Settings; ``None`` for the defaults.
        **overrides: ``FakeServerConfig`` fields that replace ``config``'s.

    Example:
        ```python
        async with FakeSGLangServer(latency_per_token=0.001) as server:
            async with SGLangClient(server.url) as client:
                r = await client.generate("Hello", sampling_params={"max_new_tokens": 8})
            server.app.faults.fail_next(1, "503")
        ```
    """

    def __init__(self, config: FakeServerConfig | None = None, **overrides: Any) -> None:
        self.app: FakeSGLangApp = create_fake_app(config, **overrides)
        self.config: FakeServerConfig = self.app.config
        self._threaded = ThreadedServer(self.app)

    @property
    def port(self) -> int:
        """The port it listens on (0 before the first start)."""
        return self._threaded.port

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``.

        Raises:
            RuntimeError: The server is not running.
        """
        if not self._threaded.running:
            raise RuntimeError("FakeSGLangServer is not running; use start() or a with block")
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> FakeSGLangServer:
        """Start serving and wait until uvicorn accepts connections.

        Raises:
            RuntimeError: Already running, or uvicorn did not start within ``timeout``.
        """
        if self._threaded.running:
            raise RuntimeError("FakeSGLangServer is already running")
        quiet_injected_faults()
        try:
            self._threaded.start(timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"fake SGLang server did not start: {exc}") from exc
        self.app.mark_started()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and join its thread (forcing exit if it lingers)."""
        self._threaded.stop(timeout)

    def __enter__(self) -> FakeSGLangServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeSGLangServer:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)
