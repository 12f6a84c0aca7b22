"""The demo: the sglang-cached proxy in front of the built-in fake SGLang server.

Starts two processes on free loopback ports (the fake SGLang server with a little latency per
token, and the proxy with a fresh SQLite cache in a temporary directory), then walks the README
flow over real HTTP: a miss, a hit, n=3 reusing the cached completion, n=5 reusing three, an
OpenAI chat call through the official `openai` client (twice), and the cache stats. Each step
prints its latency and X-Cache. Everything it started is stopped at the end.

    make demo        # or: .venv/bin/python examples/demo.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a demo process exited early (code {proc.returncode})")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not become healthy")


def post(url: str, body: dict[str, Any]) -> tuple[Any, str, float]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        data = json.loads(response.read())
        return data, response.headers.get("X-Cache", "-"), time.perf_counter() - started


def show(step: str, seconds: float, cache: str, detail: str) -> None:
    print(f"  {step:<30} {seconds * 1e3:8.1f} ms  X-Cache: {cache:<8} {detail}")


def main() -> int:
    sglang_port, proxy_port = free_port(), free_port()
    sglang = f"http://127.0.0.1:{sglang_port}"
    proxy = f"http://127.0.0.1:{proxy_port}"
    python = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="sglang-cached-demo-") as cache_dir:
        try:
            fake = [python, "-m", "sglang_client.testing", "--host", "127.0.0.1"]
            fake += ["--port", str(sglang_port), "--latency-per-token", "0.01"]
            procs.append(subprocess.Popen(fake, stdout=subprocess.DEVNULL))
            wait_healthy(sglang, procs[-1])
            cached = [python, "-m", "sglang_client.server.cli", "start", "--sglang-url", sglang]
            cached += ["--port", str(proxy_port), "--cache-path", cache_dir, "--quiet"]
            procs.append(subprocess.Popen(cached, stdout=subprocess.DEVNULL))
            wait_healthy(proxy, procs[-1])
            print(f"fake SGLang at {sglang}; sglang-cached at {proxy} (cache in {cache_dir})\n")
            walk(proxy)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
    print("\nStopped the proxy and the fake server.")
    return 0


def cache_stats(proxy: str) -> dict[str, Any]:
    with urllib.request.urlopen(proxy + "/cache/stats", timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def walk(proxy: str) -> None:
    body = {
        "text": "Write one line about the sea.",
        "sampling_params": {"max_new_tokens": 24, "temperature": 0.8},
    }

    def step(name: str, request: dict[str, Any]) -> None:
        before = cache_stats(proxy)["completions_generated"]
        data, cache, t = post(proxy + "/generate", request)
        generated = cache_stats(proxy)["completions_generated"] - before
        items = data if isinstance(data, list) else [data]
        detail = f"{len(items)} completion(s), {generated} generated upstream"
        show(name, t, cache, f"{detail}: {items[0]['text'][:28]!r}")

    step("POST /generate (first time)", body)
    step("POST /generate (same request)", body)
    three = {**body, "sampling_params": {**body["sampling_params"], "n": 3}}
    step("POST /generate n=3", three)
    five = {**body, "sampling_params": {**body["sampling_params"], "n": 5}}
    step("POST /generate n=5", five)
    step("POST /generate n=3 again", three)

    import openai

    client = openai.OpenAI(base_url=proxy + "/v1", api_key="none", max_retries=0)
    for attempt in ("first time", "again"):
        started = time.perf_counter()
        raw = client.chat.completions.with_raw_response.create(
            model="default",
            messages=[{"role": "user", "content": "Say hello in five words."}],
            max_tokens=16,
            temperature=0,
        )
        chat = raw.parse()
        show(
            f"openai chat ({attempt})",
            time.perf_counter() - started,
            raw.headers.get("x-cache", "-"),
            repr((chat.choices[0].message.content or "")[:40]),
        )
    client.close()

    stats = cache_stats(proxy)
    print(
        f"\n  /cache/stats: {stats['num_keys']} keys, {stats['total_responses']} completions"
        f" stored; hits={stats['hits']} misses={stats['misses']}"
        f" partial={stats['partial_hits']} hit_rate={stats['hit_rate']:.2f}"
        f" completions_saved={stats['completions_saved']}"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
