"""kill -9 the proxy under write load, again and again, on one cache file.

Each round starts ``sglang-cached`` on the same SQLite path and first checks that every answer
an earlier round saw committed is a HIT with the same bytes. Then it loads the proxy with
concurrent misses, stops, waits until the proxy reports no pending writes (those answers must
survive every later kill), loads it again and SIGKILLs it mid-load. Between rounds the file must
pass ``PRAGMA integrity_check``. ``SGLANG_CRASH_ROUNDS`` sets the number of kills (3 by default;
``make soak`` runs 10).

The committed set is what the proxy itself reports as durable, not a time window before the kill:
on a starved 2-core machine the writer can fall well behind its 50 ms flush interval, and a test
that assumed it could not failed now and then.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sglang_client.testing import FakeSGLangServer

from . import test_proxy
from .test_proxy import SAMPLED, ProxyProcess, fresh

proxies = test_proxy.proxies
fake = test_proxy.fake

ROUNDS = int(os.environ.get("SGLANG_CRASH_ROUNDS", "3"))
LOAD_SECONDS = 0.75


def _load(
    proxy: ProxyProcess, stop: threading.Event, acked: list[tuple[float, str, bytes]]
) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            prompt = fresh()
            body = {"text": prompt, "sampling_params": SAMPLED}
            try:
                response = client.post(proxy.url + "/generate", json=body)
            except httpx.TransportError:
                return  # killed mid-request: not acknowledged
            if response.status_code == 200:
                acked.append((time.monotonic(), prompt, response.content))


def _loaded(
    proxy: ProxyProcess, seconds: float, then: Callable[[], None] = lambda: None
) -> list[tuple[str, bytes]]:
    """Load the proxy with four clients for ``seconds``, call ``then`` (a kill) before they
    stop; the answers they were given."""
    stop = threading.Event()
    acked: list[tuple[float, str, bytes]] = []
    workers = [threading.Thread(target=_load, args=(proxy, stop, acked)) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    then()
    stop.set()
    for worker in workers:
        worker.join(timeout=30)
    return [(prompt, answer) for _, prompt, answer in acked]


def _kill(proxy: ProxyProcess) -> None:
    proxy.proc.send_signal(signal.SIGKILL)
    proxy.proc.wait(timeout=10)


def _wait_until_committed(proxy: ProxyProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            if client.get(proxy.url + "/health").json()["pending_writes"] == 0:
                return
            time.sleep(0.02)
    raise AssertionError(f"the proxy still had writes pending after {timeout} s")


@pytest.mark.timeout(30 + 25 * ROUNDS)
@pytest.mark.fake_only("the fake's speed: hundreds of fresh answers a second to kill amid")
def test_kill_9_under_load_keeps_every_acknowledged_answer(
    proxies: Callable[..., ProxyProcess], fake: FakeSGLangServer, tmp_path: Path
) -> None:
    path = tmp_path / "crash" / "cache.db"
    expected: list[tuple[str, bytes]] = []  # acknowledged early enough to be on disk
    checked = 0
    for round_ in range(ROUNDS + 1):
        proxy = proxies(fake.url, "--cache-path", str(path), "--quiet")
        with httpx.Client(timeout=30) as client:
            for prompt, answer in expected:
                hit = client.post(
                    proxy.url + "/generate", json={"text": prompt, "sampling_params": SAMPLED}
                )
                assert (hit.headers["x-cache"], hit.content) == ("HIT", answer), prompt
        checked += len(expected)
        if round_ == ROUNDS:
            break  # the last start only checks the last kill
        committed = _loaded(proxy, LOAD_SECONDS)
        _wait_until_committed(proxy)
        # SIGKILL amid writes the proxy has not committed yet.
        acked = _loaded(proxy, LOAD_SECONDS, then=functools.partial(_kill, proxy))
        assert len(committed) > 20 and acked, "the proxy served too little load to test anything"
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        expected += committed
    assert checked >= ROUNDS * 20
