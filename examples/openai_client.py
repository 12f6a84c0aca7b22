"""The official ``openai`` client, pointed at sglang-cached (or straight at SGLang).

Shows, with the ``X-Cache`` header of every answer: a chat completion cached on the second call,
the same request streamed (replayed from the cache), n=3 then n=5 samples (the five reuse the
three), a legacy completion, and ``Cache-Control: no-cache`` / ``no-store`` per request.

The proxy is ``SGLANG_CACHED_URL`` (default http://127.0.0.1:30001), e.g. started with

    sglang-cached start --sglang-url http://127.0.0.1:30000 --port 30001

When nothing answers there, this script starts a fake SGLang server (in-process) and an
``sglang-cached`` process on free loopback ports, and stops them at the end. ``SGLANG_API_KEY``
is sent as the bearer token if the proxy was started with ``--api-key``.

    .venv/bin/python examples/openai_client.py

Exits non-zero if the proxy broke one of its promises.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import openai

DEFAULT_URL = "http://127.0.0.1:30001"


class Failed(Exception):
    """A promise of the proxy did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, with an error status
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def proxy_url() -> Iterator[str]:
    """``SGLANG_CACHED_URL`` if something answers there, else a fake server plus a proxy."""
    url = os.environ.get("SGLANG_CACHED_URL", DEFAULT_URL).rstrip("/")
    if answers(url):
        print(f"sglang-cached at {url}")
        yield url
        return
    from sglang_client.testing import FakeSGLangServer

    with FakeSGLangServer(latency_per_token=0.002) as fake:
        port = free_port()
        command = [sys.executable, "-m", "sglang_client.server.cli", "start", "--quiet"]
        command += ["--sglang-url", fake.url, "--port", str(port), "--store", "memory"]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            started = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while not answers(started):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("sglang-cached did not start")
                time.sleep(0.1)
            print(f"Nothing answers at {url}; started a fake SGLang server at {fake.url}")
            print(f"and sglang-cached at {started} (memory store)")
            yield started
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def show(step: str, cache: str, detail: str) -> None:
    print(f"  {step:<32} X-Cache: {cache:<8} {detail}")


def walk(client: openai.OpenAI) -> None:
    run = uuid.uuid4().hex[:8]  # fresh prompts, so the first call of each pair is a miss
    models = client.models.list()
    print(f"  served model: {models.data[0].id}\n")

    messages: Any = [{"role": "user", "content": f"Say hello in five words (run {run})."}]
    chat = client.chat.completions.with_raw_response
    first = chat.create(model="default", messages=messages, max_tokens=16, temperature=0)
    second = chat.create(model="default", messages=messages, max_tokens=16, temperature=0)
    content = first.parse().choices[0].message.content or ""
    show("chat", first.headers.get("x-cache", "-"), repr(content[:40]))
    show("chat, same request", second.headers.get("x-cache", "-"), "")
    check(second.headers.get("x-cache") == "HIT", "the second identical chat call is a hit")
    check(second.parse().choices[0].message.content == content, "a hit returns the same answer")

    with client.chat.completions.with_streaming_response.create(
        model="default", messages=messages, max_tokens=16, temperature=0, stream=True
    ) as raw:
        streamed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        show("chat, streamed", raw.headers.get("x-cache", "-"), repr(streamed[:40]))
    check(streamed == content, "the replayed stream carries the cached answer")

    story: Any = [{"role": "user", "content": f"Start a story in one line (run {run})."}]
    three = chat.create(model="default", messages=story, max_tokens=12, temperature=0.8, n=3)
    five = chat.create(model="default", messages=story, max_tokens=12, temperature=0.8, n=5)
    texts3 = [c.message.content for c in three.parse().choices]
    texts5 = [c.message.content for c in five.parse().choices]
    show("chat n=3 (temperature 0.8)", three.headers.get("x-cache", "-"), f"{len(texts3)} choices")
    show("chat n=5: 3 reused + 2 new", five.headers.get("x-cache", "-"), f"{len(texts5)} choices")
    check(five.headers.get("x-cache") in ("PARTIAL", "HIT"), "n=5 reuses the n=3 samples")
    check(texts5[:3] == texts3, "n=5 starts with the three samples n=3 returned")

    prompt = f"The capital of France is (run {run})"
    legacy = client.completions.with_raw_response
    done = legacy.create(model="default", prompt=prompt, max_tokens=8, temperature=0)
    redo = legacy.create(model="default", prompt=prompt, max_tokens=8, temperature=0)
    show("completion", done.headers.get("x-cache", "-"), repr(done.parse().choices[0].text))
    show("completion, same request", redo.headers.get("x-cache", "-"), "")
    check(redo.headers.get("x-cache") == "HIT", "the second identical completion is a hit")

    for directive, expected in (("no-cache", "MISS"), ("no-store", "BYPASS")):
        raw = chat.create(
            model="default",
            messages=messages,
            max_tokens=16,
            temperature=0,
            extra_headers={"Cache-Control": directive},
        )
        show(f"chat, Cache-Control: {directive}", raw.headers.get("x-cache", "-"), "")
        check(raw.headers.get("x-cache") == expected, f"{directive} answers {expected}")


def main() -> int:
    with proxy_url() as url:
        api_key = os.environ.get("SGLANG_API_KEY", "none")
        client = openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=120)
        try:
            walk(client)
        except Failed as exc:
            print(f"\nFAILED: {exc}", file=sys.stderr)
            return 1
        finally:
            client.close()
        request = urllib.request.Request(url + "/cache/stats")
        if api_key != "none":
            request.add_header("Authorization", f"Bearer {api_key}")
        with urllib.request.urlopen(request, timeout=30) as response:
            stats = json.load(response)
        print(
            f"\n  /cache/stats: {stats['num_keys']} keys, {stats['total_responses']} completions,"
            f" hits={stats['hits']} misses={stats['misses']} partial={stats['partial_hits']}"
        )
    print("\nDone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
