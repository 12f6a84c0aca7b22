"""Integration fixtures: real HTTP on loopback, against the fake server or SGLANG_URL.

With ``SGLANG_URL`` (or ``--sglang-url``) set, the suite runs against that server and tests
marked ``fake_only`` (fault injection, server flags the fake sets per test) skip themselves.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sglang-url",
        default=None,
        help="run the integration suite against this SGLang server instead of the fake",
    )


def real_server_url(config: pytest.Config) -> str | None:
    url = config.getoption("--sglang-url") or os.environ.get("SGLANG_URL")
    return url.rstrip("/") if url else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if real_server_url(config) is None:
        return
    skip = pytest.mark.skip(reason="needs the fake server's knobs; running against a real SGLang")
    for item in items:
        if "fake_only" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy in {timeout} s")


def start_fake_process(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "sglang_client.testing", "--host", "127.0.0.1"]
    proc = subprocess.Popen([*cmd, "--port", str(port), *args], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def is_real_server(pytestconfig: pytest.Config) -> bool:
    return real_server_url(pytestconfig) is not None


@pytest.fixture(scope="session")
def sglang_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The server under test: SGLANG_URL, or a fake server process started for the session."""
    url = real_server_url(pytestconfig)
    if url is not None:
        wait_healthy(url, None, timeout=float(os.environ.get("SGLANG_WAIT", "600")))
        yield url
        return
    proc, url = start_fake_process()
    try:
        yield url
    finally:
        stop_process(proc)
