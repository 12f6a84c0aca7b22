"""sglang-cached as a real process on loopback, in front of the server under test.

The server under test is the fake, or a real SGLang (``SGLANG_URL``); the proxy reaches it
through a counting relay (``relay``), so that tests can count what was generated on either.
Each proxy is a ``python -m sglang_client.server.cli start`` subprocess. Helpers here are shared
with the other ``test_proxy_*`` files.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sglang_client.testing import FakeSGLangServer

from ._relay import CountingRelay
from ._targets import ApiKeyServer
from .conftest import free_port, stop_process, wait_healthy

SAMPLED = {"max_new_tokens": 8, "temperature": 0.8}


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=headers, timeout=30)

    def generate(self, text: str, **params: Any) -> httpx.Response:
        return self.post("/generate", {"text": text, "sampling_params": {**SAMPLED, **params}})

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=headers, timeout=30)

    def stats(self) -> dict[str, Any]:
        response = self.get("/cache/stats")
        assert response.status_code == 200, response.text
        stats: dict[str, Any] = response.json()
        return stats

    def wait_flushed(self, timeout: float = 10.0) -> None:
        """Wait until every acknowledged write is on disk (``pending_writes`` reaches 0)."""
        deadline = time.monotonic() + timeout
        while self.stats()["pending_writes"]:
            assert time.monotonic() < deadline, "pending_writes did not reach 0"
            time.sleep(0.02)


def start_proxy(upstream: str, tmp: Path, *args: str) -> ProxyProcess:
    """Start ``sglang-cached start`` on a free port and wait until ``/health`` answers."""
    port = free_port()
    log = tmp / f"proxy-{port}.log"
    cmd = [sys.executable, "-m", "sglang_client.server.cli", "start", "--sglang-url", upstream]
    if "--cache-path" not in args and "--store" not in args:
        args = (*args, "--cache-path", str(tmp / "cache"))
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, "--port", str(port), *args], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
    except BaseException:
        stop_process(proc)
        raise
    return ProxyProcess(proc, url, log)


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Start proxies for one test; every one is stopped afterwards."""
    started: list[ProxyProcess] = []

    def start(upstream: str, *args: str) -> ProxyProcess:
        started.append(start_proxy(upstream, tmp_path, *args))
        return started[-1]

    yield start
    for proxy in started:
        if proxy.proc.poll() is None:
            stop_process(proxy.proc)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSGLangServer]:
    """A fake in this process, for the tests that need its knobs or counters."""
    with FakeSGLangServer(seed=1) as server:
        yield server


@pytest.fixture(scope="module")
def shared(
    relay: CountingRelay, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """One proxy (SQLite store, logging on) for the tests that need no fresh state."""
    proxy = start_proxy(relay.url, tmp_path_factory.mktemp("shared"))
    yield proxy
    stop_process(proxy.proc)


def fresh() -> str:
    return f"prompt {uuid.uuid4().hex}"


# ---------------------------------------------------------------------- the README flow


def test_readme_flow(shared: ProxyProcess, relay: CountingRelay) -> None:
    prompt = fresh()
    before = relay.generated
    miss = shared.generate(prompt)
    assert (miss.status_code, miss.headers["x-cache"]) == (200, "MISS")
    hit = shared.generate(prompt)
    assert hit.headers["x-cache"] == "HIT"
    assert hit.content == miss.content
    three = shared.generate(prompt, n=3)
    assert three.headers["x-cache"] == "PARTIAL"
    assert three.json()[0] == miss.json()
    five = shared.generate(prompt, n=5)
    assert five.headers["x-cache"] == "PARTIAL"
    assert five.json()[:3] == three.json()
    again = shared.generate(prompt, n=3)
    assert again.headers["x-cache"] == "HIT"
    assert again.json() == three.json()
    assert relay.generated - before == 5
    stats = shared.stats()
    assert {"num_keys", "total_responses", "hits", "misses", "hit_rate", "cache_file"} <= set(stats)
    assert stats["cache_file"].endswith("cache.db")
    log = shared.log.read_text()
    assert "[Cache miss] POST /generate" in log
    assert "[Cache hit] POST /generate" in log
    assert "[Cache partial] POST /generate" in log


def test_openai_client_through_the_proxy(shared: ProxyProcess, relay: CountingRelay) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=shared.url + "/v1", api_key="none", max_retries=0)
    messages = [{"role": "user", "content": fresh()}]
    try:
        before = relay.generated
        first = client.chat.completions.with_raw_response.create(
            model="default", messages=messages, max_tokens=12, temperature=0.5
        )
        second = client.chat.completions.with_raw_response.create(
            model="default", messages=messages, max_tokens=12, temperature=0.5
        )
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        content = first.parse().choices[0].message.content
        assert second.parse().choices[0].message.content == content
        chunks = list(
            client.chat.completions.create(
                model="default", messages=messages, max_tokens=12, temperature=0.5, stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
        streamed_miss = list(
            client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": fresh()}],
                max_tokens=12,
                stream=True,
            )
        )
        assert streamed_miss[-1].choices[0].finish_reason in ("stop", "length")
        prompt = fresh()
        done = client.completions.with_raw_response.create(
            model="default", prompt=prompt, max_tokens=6
        )
        redo = client.completions.with_raw_response.create(
            model="default", prompt=prompt, max_tokens=6
        )
        assert (done.headers["x-cache"], redo.headers["x-cache"]) == ("MISS", "HIT")
        assert redo.parse().choices[0].text == done.parse().choices[0].text
        replayed = client.completions.with_raw_response.create(
            model="default", prompt=prompt, max_tokens=6, stream=True
        )
        assert replayed.headers["x-cache"] == "HIT"
        pieces = list(replayed.parse())
        assert "".join(c.choices[0].text for c in pieces) == done.parse().choices[0].text
        assert pieces[-1].choices[0].finish_reason in ("stop", "length")
        other = fresh()
        streamed = client.completions.with_raw_response.create(
            model="default", prompt=other, max_tokens=6, stream=True
        )
        assert streamed.headers["x-cache"] == "MISS"
        text = "".join(c.choices[0].text for c in streamed.parse() if c.choices)
        after = client.completions.with_raw_response.create(
            model="default", prompt=other, max_tokens=6
        )
        assert after.headers["x-cache"] == "HIT"
        assert after.parse().choices[0].text == text
        # chat: one miss, one streamed miss; completions: one miss, one streamed miss
        assert relay.generated - before == 4
    finally:
        client.close()


def _without_created(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_created(v) for k, v in value.items() if k != "created"}
    if isinstance(value, list):
        return [_without_created(v) for v in value]
    return value


@pytest.mark.gateway_differs("answers /get_server_info and others itself")
def test_passthrough_routes_are_unchanged(shared: ProxyProcess, sglang_url: str) -> None:
    for path in ("/model_info", "/get_model_info", "/v1/models", "/v1/models/nope", "/nowhere"):
        direct = httpx.get(sglang_url + path, timeout=10)
        through = shared.get(path)
        assert through.status_code == direct.status_code, path
        assert through.headers["content-type"] == direct.headers["content-type"]
        # /v1/models stamps "created" with the current second: the two calls may straddle one.
        assert _without_created(through.json()) == _without_created(direct.json()), path
    flushed = httpx.post(shared.url + "/flush_cache", timeout=10)
    assert flushed.text.startswith("Cache flushed.")
    tokens = shared.post("/tokenize", {"prompt": "hello world"})
    assert (
        tokens.json() == httpx.post(sglang_url + "/tokenize", json={"prompt": "hello world"}).json()
    )
    session = shared.post("/open_session", {"capacity_of_str_len": 1000}).json()
    assert isinstance(session, str)
    assert shared.post("/close_session", {"session_id": session}).status_code == 200


BAD_REQUESTS: list[tuple[str, bytes, dict[str, str], int]] = [
    ("/generate", b"{broken", {}, 400),
    ("/generate", b'{"text": ["a", 1]}', {}, 400),
    ("/generate", b'{"text": "a", "sampling_params": {"n": 1000}}', {}, 400),
    ("/generate", b'{"text": "a", "sampling_params": {"max_new_tokens": "8"}}', {}, 400),
    ("/generate", b'{"text": "a", "stream": 1}', {}, 400),
    ("/generate", b'{"text": "' + b"x" * 2048 + b'"}', {}, 413),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}]}',
        {"content-type": "text/plain"},
        400,
    ),
    ("/v1/chat/completions", b'{"messages": []}', {}, 400),
    ("/v1/completions", b'{"prompt": "x", "n": 0}', {}, 400),
    ("/model_info", b"x" * 2048, {}, 413),
]


def test_bad_input_is_4xx_and_never_reaches_upstream(
    proxies: Callable[..., ProxyProcess], relay: CountingRelay
) -> None:
    proxy = proxies(relay.url, "--max-body-bytes", "1024", "--max-n", "64")
    seen = relay.total_requests
    for path, raw, headers, status in BAD_REQUESTS:
        response = httpx.post(
            proxy.url + path,
            content=raw,
            headers={"content-type": "application/json", **headers},
            timeout=10,
        )
        assert response.status_code == status, (path, raw[:40], response.text)
        body = response.json()
        assert (body["object"], body["code"]) == ("error", status)
        assert body["message"]
    assert relay.total_requests == seen
    assert proxy.stats()["num_keys"] == 0


# ---------------------------------------------------------------------- faults and keys


def test_upstream_down_is_502_and_health_says_so(proxies: Callable[..., ProxyProcess]) -> None:
    proxy = proxies(f"http://127.0.0.1:{free_port()}", "--quiet", "--max-retries", "0")
    response = proxy.generate(fresh())
    assert response.status_code == 502
    assert "unreachable" in response.json()["message"]
    assert proxy.get("/model_info").status_code == 502
    health = proxy.get("/health").json()
    assert (health["status"], health["upstream"]["available"]) == ("degraded", False)
    assert 'sglang_cached_upstream_errors_total{kind="connect"}' in proxy.get("/metrics").text


@pytest.mark.fake_only("time_to_first_token: an upstream slower than the proxy's --timeout")
def test_upstream_timeout_is_504(proxies: Callable[..., ProxyProcess]) -> None:
    with FakeSGLangServer(time_to_first_token=5.0) as slow:
        proxy = proxies(slow.url, "--timeout", "0.3", "--max-retries", "0", "--quiet")
        response = proxy.generate(fresh())
        assert response.status_code == 504
        assert "timed out" in response.json()["message"]


def test_api_admin_and_upstream_keys(
    proxies: Callable[..., ProxyProcess], api_key_server: ApiKeyServer
) -> None:
    keys = (
        "--api-key",
        "user",
        "--admin-key",
        "admin",
        "--upstream-api-key",
        api_key_server.key,
    )
    proxy = proxies(api_key_server.url, *keys)
    assert proxy.generate(fresh()).status_code == 401
    user = {"Authorization": "Bearer user"}
    ok = proxy.post("/generate", {"text": fresh()}, **user)
    assert (ok.status_code, ok.headers["x-cache"]) == (200, "MISS")
    assert proxy.get("/model_info", **user).status_code == 200  # upstream key swapped in
    assert proxy.get("/model_info").status_code == 401
    assert proxy.get("/health").status_code == 200
    assert proxy.post("/cache/clear", None, **user).status_code == 403
    assert proxy.post("/cache/clear", None).status_code == 401
    cleared = proxy.post("/cache/clear", None, Authorization="Bearer admin")
    assert cleared.json() == {"cleared": 1}


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("sglang-cached")
    if not script.exists():
        pytest.skip("sglang-cached is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(script), "--help"], capture_output=True, timeout=30, check=False)
    assert result.returncode == 0
    assert b"start" in result.stdout
