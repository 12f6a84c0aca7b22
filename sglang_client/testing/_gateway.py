"""``GatewayCluster``: SGLang's real Model Gateway (``smg``) in front of N fake workers.

The gateway is the Rust binary from PyPI's ``sglang-router`` (``pip install
'sglang-client[gateway]'``); the workers are ``FakeSGLangServer`` threads, so a test reads each
worker's counters (``cluster.workers[i].app.stats``) and can stop one mid-run.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from sglang_client.testing._config import FakeServerConfig
from sglang_client.testing._server import FakeSGLangServer, stop_process

__all__ = ["GatewayCluster", "find_smg"]

POLICIES = ("random", "round_robin", "cache_aware", "power_of_two", "manual")
# Fast health checks, so a stopped worker leaves the rotation within about a second; with the
# gateway's defaults (60 s between checks) a test would wait a minute.
_HEALTH = (
    "--health-check-interval-secs",
    "1",
    "--health-failure-threshold",
    "1",
    "--health-check-timeout-secs",
    "2",
)


class _QuietProbes(logging.Filter):
    """Drops uvicorn's warning about the gateway's probes: at registration smg also tries the
    gRPC protocol on each worker URL, which an HTTP/1.1 server logs as an invalid request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Invalid HTTP request received."


_QUIET = _QuietProbes()


def find_smg() -> str | None:
    """The ``smg`` binary: beside this Python (a venv's ``bin``), else on ``PATH``."""
    beside = Path(sys.executable).parent / "smg"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("smg")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GatewayCluster:
    """``smg launch`` on ``127.0.0.1`` in front of ``workers`` fake SGLang servers.

    Args:
        workers: how many fake workers.
        policy: the gateway's ``--policy``; ``manual`` pins each ``X-SMG-Routing-Key``.
        gateway_args: more ``smg launch`` flags (e.g. ``("--assignment-mode", "min_load")``).
        config: the fake workers' settings; ``**overrides`` replace fields of it.
        smg: the binary (default: ``find_smg()``).

    Example:
        ```python
        with GatewayCluster(2, policy="manual", enable_cache_report=True) as cluster:
            async with SGLangClient(cluster.url) as client:
                with routing_key("user-42"):
                    await client.generate("Hello")
            print([w.app.stats.generate_requests for w in cluster.workers])
        ```

    Raises:
        RuntimeError: no ``smg`` binary, or the gateway did not come up (its log attached).
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        policy: str = "cache_aware",
        gateway_args: Sequence[str] = (),
        config: FakeServerConfig | None = None,
        smg: str | None = None,
        **overrides: Any,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.workers = [FakeSGLangServer(config, **overrides) for _ in range(workers)]
        self._args = tuple(gateway_args)
        self._smg = smg
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.port = 0
        self.stopped: set[int] = set()

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        if self._proc is None:
            raise RuntimeError("GatewayCluster is not running; use start() or a with block")
        return f"http://127.0.0.1:{self.port}"

    @property
    def worker_urls(self) -> list[str]:
        """Each worker's base URL, in order (as ``/workers`` lists them)."""
        return [w.url for w in self.workers]

    def start(self, timeout: float = 60.0) -> GatewayCluster:
        """Start the workers and the gateway; return once every worker is healthy in it."""
        binary = self._smg or find_smg()
        if binary is None:
            raise RuntimeError(
                "SGLang's Model Gateway (smg) is not installed: pip install"
                " 'sglang-client[gateway]' (it pins sglang-router)"
            )
        logging.getLogger("uvicorn.error").addFilter(_QUIET)  # idempotent: one filter object
        for worker in self.workers:
            worker.start()
        self.port = _free_port()
        command = [
            binary,
            "launch",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--worker-urls",
            *self.worker_urls,
            "--policy",
            self.policy,
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(_free_port()),
            "--log-level",
            "warn",
            *_HEALTH,
            *self._args,
        ]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process)
        self._proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"smg exited with {self._proc.returncode}:\n{self.log()}")
            try:
                listed = httpx.get(f"{self.url}/workers", timeout=2).json()["workers"]
                if len(listed) == len(self.workers) and all(w["is_healthy"] for w in listed):
                    return
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"smg did not list {len(self.workers)} healthy workers:\n{self.log()}")

    def log(self, last: int = 4000) -> str:
        """The end of the gateway's output (for failure messages)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        text: str = self._log.read().decode(errors="replace")
        return text[-last:]

    def worker_of(self, url: str) -> int:
        """The index of the worker at ``url``."""
        return self.worker_urls.index(url.rstrip("/"))

    def stop_worker(self, index: int) -> None:
        """Stop one worker (as if its machine went away); the gateway finds out by itself."""
        self.workers[index].stop()
        self.stopped.add(index)

    def stop(self) -> None:
        """Stop the gateway (by its PID) and every worker."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        for i, worker in enumerate(self.workers):
            if i not in self.stopped:
                worker.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> GatewayCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
