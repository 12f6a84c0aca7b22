"""kill -9 the proxy under write load, again and again, on one cache file.

Each round starts ``sglang-cached`` on the same SQLite path, first checks that every answer
acknowledged in earlier rounds more than the write-behind window before its kill is a HIT with
the same bytes, then loads it with concurrent misses and SIGKILLs it mid-load. Between rounds
the file must pass ``PRAGMA integrity_check``. ``SGLANG_CRASH_ROUNDS`` sets the number of kills
(3 by default; ``make soak`` runs 10).
"""

from __future__ import annotations

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
# The store commits within flush_interval (50 ms) plus a commit's time; a kill can only lose
# what was acknowledged that recently. The margin covers a loaded 2-core machine.
WINDOW = 0.5


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


@pytest.mark.timeout(30 + 15 * ROUNDS)
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
        stop = threading.Event()
        acked: list[tuple[float, str, bytes]] = []
        workers = [threading.Thread(target=_load, args=(proxy, stop, acked)) for _ in range(4)]
        for worker in workers:
            worker.start()
        time.sleep(1.5)
        proxy.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proxy.proc.wait(timeout=10)
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        assert len(acked) > 20, "the proxy served too little load to test anything"
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        expected += [(p, a) for at, p, a in acked if at < killed - WINDOW]
    assert checked >= ROUNDS * 20
