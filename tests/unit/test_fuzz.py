"""Fuzzing the proxy and the fake over real loopback HTTP: never a 500, a traceback or a hang,
never a stored error, and both stay up.

Two parts: hypothesis-generated requests (paths, methods, headers and bodies built around
SGLang's own field names, with values of every JSON type), and a table of hand-made hostile
requests (huge bodies, deep nesting, bad encodings, header abuse, slow and vanishing clients).
``FUZZ_EXAMPLES`` sets the number of generated requests per target (150 by default; CI runs
that; ``make soak`` runs more).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sglang_client.cache import MemoryStore
from sglang_client.server._validate import (
    _CHAT_FIELDS,
    _COMPLETION_FIELDS,
    _GENERATE_FIELDS,
    _SAMPLING_FIELDS,
)
from sglang_client.testing import FakeSGLangServer

from ._serve import proxy_app, serve

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
PATHS = [
    "/generate",
    "/v1/chat/completions",
    "/v1/completions",
    "/health",
    "/health_generate",
    "/ready",
    "/metrics",
    "/model_info",
    "/get_model_info",
    "/server_info",
    "/get_server_info",
    "/v1/models",
    "/v1/models/x",
    "/flush_cache",
    "/abort_request",
    "/open_session",
    "/close_session",
    "/tokenize",
    "/detokenize",
    "/cache/stats",
    "/cache/info",
    "/cache/clear",
    "/",
    "/nope",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
FIELDS = sorted(
    {*_GENERATE_FIELDS, *_SAMPLING_FIELDS, *_CHAT_FIELDS, *_COMPLETION_FIELDS, "n", "rid"}
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSGLangServer]:
    with FakeSGLangServer(seed=5, enable_metrics=True) as server:
        yield server


@pytest.fixture(scope="module")
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture(scope="module")
def proxy(fake: FakeSGLangServer, store: MemoryStore) -> Iterator[str]:
    with serve(proxy_app(fake.url, store=store, body_timeout=2.0, max_body_bytes=4 << 20)) as url:
        yield url


def check(response: httpx.Response) -> None:
    """What every answer must be: no server error, no leaked traceback."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert "Traceback" not in response.text
    assert "Internal proxy error" not in response.text


def assert_store_clean(store: MemoryStore) -> None:
    """Every stored completion finished normally; nothing stored came from an error."""
    for key, entry in list(store._entries.items()):
        _request, completions, *_ = entry
        for raw in completions:
            completion = json.loads(raw) if isinstance(raw, str) else raw
            finish = (completion.get("meta_info") or {}).get("finish_reason") or (
                completion.get("choice") or {}
            ).get("finish_reason")
            kind = finish.get("type") if isinstance(finish, dict) else finish
            assert kind in ("stop", "length", "tool_calls"), (key, completion)


# ------------------------------------------------------------------ generated requests

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Mostly SGLang's own field names, so the validators and handlers are reached, not only the
# "unknown field" paths; the values are anything.
field_name = st.sampled_from(FIELDS) | st.text(max_size=12)
body_object = st.dictionaries(field_name, json_value, max_size=6)
small = {"max_new_tokens": 2}
plausible = st.one_of(
    body_object,
    body_object.map(lambda b: {"text": "fuzz", "sampling_params": small, **b}),
    body_object.map(lambda b: {"prompt": "fuzz", "max_tokens": 2, **b}),
    body_object.map(
        lambda b: {"messages": [{"role": "user", "content": "f"}], "max_tokens": 2, **b}
    ),
    st.dictionaries(st.sampled_from(sorted(_SAMPLING_FIELDS)), json_value, max_size=4).map(
        lambda p: {"text": "fuzz", "sampling_params": {**small, **p}}
    ),
)
raw_body = st.one_of(
    plausible.map(lambda b: json.dumps(b).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
content_type = st.sampled_from(
    [None, "application/json", "text/plain", "application/x-www-form-urlencoded", "bogus/x;;="]
)
request_parts = st.tuples(
    st.sampled_from(METHODS),
    st.sampled_from(PATHS) | st.text(alphabet="/abcdefgh_.%2", min_size=1, max_size=20),
    raw_body,
    content_type,
    st.sampled_from([None, "Bearer x", "Basic Zm9v", "Bearer", "bearer  spaced", "Bearer \x7f"]),
    st.sampled_from([None, "no-cache", "no-store", "max-age=0, no-cache"]),
    st.booleans(),
)


def _send(client: httpx.Client, url: str, parts: tuple[Any, ...]) -> httpx.Response:
    method, path, body, ctype, auth, cache_control, stream = parts
    if not path.startswith("/"):
        path = "/" + path
    headers = {}
    if ctype is not None:
        headers["Content-Type"] = ctype.encode("utf-8").decode("latin-1")
    if auth is not None:
        headers["Authorization"] = auth
    if cache_control is not None:
        headers["Cache-Control"] = cache_control
    if stream and body.startswith(b"{"):
        body = body[:-1] + (b', "stream": true}' if len(body) > 2 else b'"stream": true}')
    return client.send(httpx.Request(method, url + path, content=body, headers=headers))


@pytest.mark.timeout(60 + EXAMPLES // 10)
@pytest.mark.parametrize("target", ["proxy", "fake"])
def test_generated_requests_never_break_anything(
    target: str, proxy: str, fake: FakeSGLangServer, store: MemoryStore
) -> None:
    url = proxy if target == "proxy" else fake.url

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(request_parts)
    def run(parts: tuple[Any, ...]) -> None:
        check(_send(client, url, parts))

    with httpx.Client(timeout=30) as client:
        run()
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    assert_store_clean(store)


# ------------------------------------------------------------------ hand-made hostile requests


def _wrong_types() -> list[tuple[str, bytes]]:
    """A body per known field with a value of the wrong JSON type."""
    out = []
    wrong: list[Any] = [{"nested": True}, [1, "two"], "a string", 12345678901234567890123, True]
    for fields, path, base in (
        (_GENERATE_FIELDS, "/generate", {"text": "w"}),
        (_CHAT_FIELDS, "/v1/chat/completions", {"messages": [{"role": "user", "content": "w"}]}),
        (_COMPLETION_FIELDS, "/v1/completions", {"prompt": "w"}),
    ):
        for i, name in enumerate(sorted(fields)):
            out.append((path, json.dumps({**base, name: wrong[i % len(wrong)]}).encode()))
    for i, name in enumerate(sorted(_SAMPLING_FIELDS)):
        body = {"text": "w", "sampling_params": {name: wrong[i % len(wrong)]}}
        out.append(("/generate", json.dumps(body).encode()))
    return out


HOSTILE_BODIES: list[tuple[str, bytes]] = [
    ("/generate", b""),
    ("/generate", b"{"),
    ("/generate", b'{"text": "x",}'),
    ("/generate", b"null"),
    ("/generate", b"[]"),
    ("/generate", b'"just a string"'),
    ("/generate", b'{"text": NaN}'),
    ("/generate", b'{"text": "x", "sampling_params": {"max_new_tokens": 1e400}}'),
    ("/generate", b'{"text": "x", "sampling_params": {"n": 99999999999999999999}}'),
    ("/generate", b'{"input_ids": [99999999999]}'),
    ("/generate", b'{"input_ids": [-1, -2]}'),
    ("/generate", b'{"text": "\xff\xfe"}'),
    ("/generate", b'{"text": "\\ud800"}'),
    ("/generate", b'{"text": "x", "sampling_params": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("/v1/chat/completions", b'{"messages": "not a list"}'),
    ("/v1/chat/completions", b'{"messages": [{"role": 5}]}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": 1}]}]}'),
    ("/v1/chat/completions", b'{"messages": [{}], "n": 0}'),
    ("/v1/completions", b'{"prompt": [[[]]]}'),
    ("/v1/completions", b'{"prompt": "x", "logprobs": -3, "echo": "yes"}'),
    *_wrong_types(),
]


@pytest.mark.parametrize("target", ["proxy", "fake"])
def test_hostile_bodies(
    target: str, proxy: str, fake: FakeSGLangServer, store: MemoryStore
) -> None:
    url = proxy if target == "proxy" else fake.url
    # The proxy refuses n above --max-n; the fake (like SGLang) would generate them all.
    extra = [("/generate", b'{"text": "x", "sampling_params": {"n": 100000}}')]
    with httpx.Client(timeout=30) as client:
        for path, body in HOSTILE_BODIES + (extra if target == "proxy" else []):
            for ctype in ("application/json", "text/plain"):
                response = client.post(url + path, content=body, headers={"Content-Type": ctype})
                check(response)
                if response.status_code == 200 and path == "/generate":
                    response.json()  # a 200 is a whole answer
        assert client.get(url + "/health").status_code == 200
    assert_store_clean(store)


def test_huge_bodies_are_refused_cheaply(proxy: str, fake: FakeSGLangServer) -> None:
    big = b'{"text": "' + b"a" * (100 << 20) + b'"}'
    with httpx.Client(timeout=60) as client:
        response = client.post(
            proxy + "/generate", content=big, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413
        response = client.post(proxy + "/v1/models", content=big)
        assert response.status_code == 413
        ten = b'{"text": "' + b"a" * (10 << 20) + b'", "sampling_params": {"max_new_tokens": 1}}'
        check(client.post(fake.url + "/generate", content=ten))  # the fake has no limit: 200/400
        assert client.get(proxy + "/health").status_code == 200


def _raw(url: str, data: bytes, wait: float = 10.0) -> bytes:
    parts = urlsplit(url)
    assert parts.port is not None
    with socket.create_connection(("127.0.0.1", parts.port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):  # the status line and headers are in
                    break
        except TimeoutError:
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("target", ["proxy", "fake"])
def test_header_abuse(target: str, proxy: str, fake: FakeSGLangServer) -> None:
    url = proxy if target == "proxy" else fake.url
    cases = [
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
        b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /generate HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
        b"BREW /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET http://evil.example/generate HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ]
    for data in cases:
        reply = _raw(url, data)
        if reply:
            status = int(reply.split(b" ", 2)[1])
            assert status < 500, reply[:300]
    assert httpx.get(url + "/health", timeout=30).status_code == 200


def test_a_stalled_body_is_408_and_others_are_served(proxy: str) -> None:
    parts = urlsplit(proxy)
    assert parts.port is not None
    result: dict[str, bytes] = {}

    def slow_client() -> None:
        with socket.create_connection(("127.0.0.1", parts.port), timeout=30) as sock:
            head = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            sock.sendall(head + b'Content-Length: 100\r\n\r\n{"text": ')
            result["reply"] = sock.recv(4096)  # then nothing more: the body never completes

    started = time.monotonic()
    thread = threading.Thread(target=slow_client)
    thread.start()
    body = {"text": "meanwhile", "sampling_params": {"max_new_tokens": 2}}
    assert httpx.post(proxy + "/generate", json=body, timeout=30).status_code == 200
    thread.join(30)
    assert result["reply"].startswith(b"HTTP/1.1 408"), result
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("path", ["/generate", "/v1/chat/completions", "/v1/completions"])
def test_streams_cancelled_mid_way_store_nothing(
    path: str, proxy: str, fake: FakeSGLangServer, store: MemoryStore
) -> None:
    with (
        FakeSGLangServer(latency_per_token=0.01) as slow,
        serve(proxy_app(slow.url, store=store)) as url,
    ):
        text = f"cancel me {path}"
        body: dict[str, Any] = {
            "/generate": {
                "text": text,
                "sampling_params": {"max_new_tokens": 200, "ignore_eos": True},
            },
            "/v1/chat/completions": {
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 200,
                "ignore_eos": True,
            },
            "/v1/completions": {"prompt": text, "max_tokens": 200, "ignore_eos": True},
        }[path]
        before = len(store._entries)
        for _ in range(3):
            with httpx.Client(timeout=30) as client:
                with client.stream("POST", url + path, json={**body, "stream": True}) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            break  # hang up after the first event
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        for _ in range(200):
            if not slow.app.engine.inflight:
                break
            time.sleep(0.02)
        assert len(store._entries) == before
    assert_store_clean(store)
