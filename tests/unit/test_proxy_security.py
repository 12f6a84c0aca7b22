"""The proxy's trust boundary, attacked over real HTTP: path spellings, the route x key matrix,
tenant isolation.

A fake SGLang (with its own API key) sits behind a proxy served by uvicorn in this process;
requests go out through ``http.client`` exactly as written, so no client library normalises
``/ready/../generate`` before the proxy sees it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from sglang_client.server._routes import ROUTES, Access, access_of, check_path
from sglang_client.testing import FakeSGLangServer

from ._serve import proxy_app, raw_request, serve

USER, ADMIN, UPSTREAM = "user-key", "admin-key", "upstream-key"
GENERATE = json.dumps({"text": "hi", "sampling_params": {"max_new_tokens": 2}}).encode()
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSGLangServer]:
    with FakeSGLangServer(api_key=UPSTREAM) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(fake: FakeSGLangServer) -> Iterator[str]:
    app = proxy_app(fake.url, upstream_key=UPSTREAM, api_key=USER, admin_key=ADMIN)
    with serve(app) as url:
        yield url


def _generations(fake: FakeSGLangServer) -> int:
    return int(fake.app.stats.requests["/generate"])


# ------------------------------------------------------------------ path spellings

TRAVERSALS = [
    "/ready/../generate",
    "/health/../flush_cache",
    "/health/..%2fgenerate",
    "/health/%2e%2e/generate",
    "/health/%2E%2E/flush_cache",
    "/ready/.%2e/generate",
    "//generate",
    "/health//../generate",
    "/health/./x",
    "/./generate",
    "/generate/",
    "/generate/.",
    "/v1/chat/completions/..",
    "/gen%2Frate",
    "/health%2f..%2fgenerate",
    "/health%5c..%5cgenerate",
    "/health\\..\\generate",
    "/generate%00",
    "/v1/models/..%2Fflush_cache",
    "/v1/models/%2e%2e%2f..%2fgenerate",
    "/v1/models/a%5cb",
    "/v1/models/a%00",
    "/v1/models/a%2F%2Fb",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_spellings_are_400_before_auth(
    guarded: str, fake: FakeSGLangServer, target: str
) -> None:
    before = _generations(fake), int(fake.app.stats.requests["/flush_cache"])
    status, body = raw_request(guarded, "POST", target, GENERATE, JSON)
    assert status == 400, body
    assert json.loads(body)["object"] == "error"
    # Even with the right key nothing was served or forwarded.
    status, _ = raw_request(
        guarded, "POST", target, GENERATE, {**JSON, "Authorization": f"Bearer {USER}"}
    )
    assert status == 400
    assert (_generations(fake), int(fake.app.stats.requests["/flush_cache"])) == before


def test_control_and_raw_non_ascii_bytes_are_refused(guarded: str) -> None:
    parts = urlsplit(guarded)
    assert parts.port is not None
    for target in (
        b"/health\x01/../generate",
        b"/generate\x7f",
        b"/gen\xc3\xa9rate",
        b"/model_info?x=\xff",
    ):
        with socket.create_connection(("127.0.0.1", parts.port), timeout=10) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            reply = sock.recv(4096)
        status = int(reply.split(b" ", 2)[1])
        assert 400 <= status < 500, reply[:200]


def test_check_path_is_exact() -> None:
    for good in ("/", "/generate", "/v1/chat/completions", "/v1/models/tiny-llama", "/a.b/c..d"):
        assert check_path(good, good.encode()) is None
    for bad in ("generate", "/a/../b", "/a/./b", "//a", "/a/", "/a\\b", "/a\x00b"):
        assert check_path(bad, bad.encode()) is not None
    assert check_path("/a/b", b"/a%2Fb") is not None  # decoded looks fine; the raw had %2F
    assert check_path("/a/..", b"/a/%2e%2e") is not None
    # A Hugging Face model id ("org/name") is one %2F-encoded segment of /v1/models/...
    assert check_path("/v1/models/org/name", b"/v1/models/org%2Fname") is None
    assert check_path("/v1/org/name", b"/v1/org%2Fname") is not None  # ...and nowhere else


def test_a_model_id_with_a_slash_is_retrieved_through_the_proxy(
    guarded: str, fake: FakeSGLangServer
) -> None:
    model = fake.app.config.model_name  # "fake/sglang-tiny"
    assert "/" in model
    target = "/v1/models/" + model.replace("/", "%2F")
    status, body = raw_request(guarded, "GET", target, b"", {"Authorization": f"Bearer {USER}"})
    assert status == 200, body
    assert json.loads(body)["id"] == model


def test_prefix_of_an_open_route_is_not_open() -> None:
    assert access_of("/health", "GET")[1] is Access.OPEN
    for path in ("/healthz", "/health/x", "/ready_or_not", "/metricsfoo", "/health_generate2"):
        assert access_of(path, "GET")[1] is Access.USER
    assert access_of("/flush_cache", "POST") == (None, Access.ADMIN)
    assert access_of("/dumper/anything", "POST")[1] is Access.ADMIN
    assert access_of("/cache/clear", "POST")[1] is Access.ADMIN
    assert access_of("/cache/clear", "GET") == (None, Access.USER)  # not ours: passed through


# ------------------------------------------------------------------ the route x key matrix

# (method, path, body, access): the proxy's own routes and a sample of passed-through ones.
MATRIX: list[tuple[str, str, Any, Access]] = [
    ("POST", "/generate", {"text": "m", "sampling_params": {"max_new_tokens": 2}}, Access.USER),
    ("PUT", "/generate", {"text": "m", "sampling_params": {"max_new_tokens": 2}}, Access.USER),
    ("POST", "/v1/completions", {"prompt": "m", "max_tokens": 2}, Access.USER),
    (
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "m"}], "max_tokens": 2},
        Access.USER,
    ),
    ("GET", "/cache/stats", None, Access.INSPECT),
    ("GET", "/cache/info", None, Access.INSPECT),
    ("POST", "/cache/clear", None, Access.ADMIN),
    ("GET", "/health", None, Access.OPEN),
    ("GET", "/metrics", None, Access.OPEN),
    ("GET", "/model_info", None, Access.USER),
    ("GET", "/get_server_info", None, Access.USER),
    ("GET", "/v1/models", None, Access.USER),
    ("GET", "/health_generate", None, Access.OPEN),
    ("GET", "/ready", None, Access.OPEN),
    ("POST", "/flush_cache", None, Access.ADMIN),
    ("POST", "/abort_request", {"rid": "nothing"}, Access.ADMIN),
]
EXPECTED = {
    Access.OPEN: {"none": 200, "user": 200, "admin": 200, "upstream": 200},
    Access.USER: {"none": 401, "user": 200, "admin": 401, "upstream": 401},
    Access.INSPECT: {"none": 401, "user": 200, "admin": 200, "upstream": 401},
    Access.ADMIN: {"none": 401, "user": 403, "admin": 200, "upstream": 401},
}
TOKENS = {"none": None, "user": USER, "admin": ADMIN, "upstream": UPSTREAM}


def test_matrix_covers_every_route_of_the_table() -> None:
    covered = {(method, path) for method, path, _, _ in MATRIX}
    for path, route in ROUTES.items():
        for method in route.methods:
            assert (method, path) in covered, (method, path)
    for method, path, _, access in MATRIX:
        assert access_of(path, method)[1] is access


@pytest.mark.parametrize(("method", "path", "body", "access"), MATRIX, ids=lambda v: str(v))
@pytest.mark.parametrize("who", sorted(TOKENS))
def test_route_and_key_matrix(
    guarded: str, method: str, path: str, body: Any, access: Access, who: str
) -> None:
    headers = {} if TOKENS[who] is None else {"Authorization": f"Bearer {TOKENS[who]}"}
    response = httpx.request(method, guarded + path, json=body, headers=headers, timeout=30)
    assert response.status_code == EXPECTED[access][who], (response.status_code, response.text)
    if response.status_code == 403:
        assert "admin key" in response.json()["error"]


def test_options_preflight_is_open_and_carries_no_upstream_key(
    guarded: str, fake: FakeSGLangServer
) -> None:
    # Open, as in SGLang; forwarded without the upstream key, so the upstream answers 401
    # rather than doing anything on the proxy's behalf.
    response = httpx.request("OPTIONS", guarded + "/flush_cache", timeout=30)
    assert response.status_code != 403
    assert int(fake.app.stats.requests["/flush_cache"]) == 0 or response.status_code in (401, 405)


# ------------------------------------------------------------------ tenants


@pytest.fixture(scope="module")
def open_fake() -> Iterator[FakeSGLangServer]:
    with FakeSGLangServer(seed=3) as server:
        yield server


def _post(url: str, path: str, body: Any, token: str | None = None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.post(url + path, json=body, headers=headers, timeout=30)


SAMPLED = {"max_new_tokens": 6, "temperature": 0.9}


@pytest.mark.parametrize("field", ["cache_salt", "extra_key"])
def test_cache_salt_and_extra_key_separate_answers(open_fake: FakeSGLangServer, field: str) -> None:
    with serve(proxy_app(open_fake.url)) as url:
        native = {"text": f"salted {field}", "sampling_params": SAMPLED}
        chat = {"messages": [{"role": "user", "content": f"salted {field}"}], "max_tokens": 6}
        completion = {"prompt": f"salted {field}", "max_tokens": 6}
        for path, body in (
            ("/generate", native),
            ("/v1/chat/completions", chat),
            ("/v1/completions", completion),
        ):
            a = _post(url, path, {**body, field: "tenant-a"})
            b = _post(url, path, {**body, field: "tenant-b"})
            again = _post(url, path, {**body, field: "tenant-a"})
            assert (a.headers["x-cache"], b.headers["x-cache"]) == ("MISS", "MISS"), path
            assert again.headers["x-cache"] == "HIT"


def test_user_field_shares_answers(open_fake: FakeSGLangServer) -> None:
    with serve(proxy_app(open_fake.url)) as url:
        body = {"messages": [{"role": "user", "content": "who am i"}], "max_tokens": 6}
        first = _post(url, "/v1/chat/completions", {**body, "user": "alice"})
        second = _post(url, "/v1/chat/completions", {**body, "user": "bob"})
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")


def test_isolate_by_key_keeps_tenants_apart(open_fake: FakeSGLangServer) -> None:
    app = proxy_app(open_fake.url, api_key=("key-a", "key-b"), admin_key=ADMIN, isolate_by_key=True)
    body = {"text": "isolated prompt", "sampling_params": SAMPLED}
    with serve(app) as url:
        a = _post(url, "/generate", body, "key-a")
        a_again = _post(url, "/generate", body, "key-a")  # also the memo path
        a_third = _post(url, "/generate", body, "key-a")
        b = _post(url, "/generate", body, "key-b")
        assert [r.headers["x-cache"] for r in (a, a_again, a_third, b)] == [
            "MISS",
            "HIT",
            "HIT",
            "MISS",
        ]
        assert a.json()["text"] == a_again.json()["text"] == a_third.json()["text"]
        chat = {"messages": [{"role": "user", "content": "isolated"}], "max_tokens": 6}
        assert _post(url, "/v1/chat/completions", chat, "key-a").headers["x-cache"] == "MISS"
        assert _post(url, "/v1/chat/completions", chat, "key-b").headers["x-cache"] == "MISS"
        assert _post(url, "/v1/chat/completions", chat, "key-b").headers["x-cache"] == "HIT"

        def listed(token: str) -> list[dict[str, Any]]:
            headers = {"Authorization": f"Bearer {token}"}
            info = httpx.get(url + "/cache/info?limit=100", headers=headers, timeout=30)
            assert info.status_code == 200, info.text
            keys: list[dict[str, Any]] = info.json()["keys"]
            return keys

        mine, theirs, everything = listed("key-a"), listed("key-b"), listed(ADMIN)
        assert len(mine) == len(theirs) == 2 and len(everything) == 4
        assert not {k["key"] for k in mine} & {k["key"] for k in theirs}
        assert "key-a" not in json.dumps(everything)  # only a hash of it is kept
        assert all(k["request"]["_tenant"] for k in everything)


def test_without_isolation_keys_share_one_cache(open_fake: FakeSGLangServer) -> None:
    app = proxy_app(open_fake.url, api_key=("key-a", "key-b"))
    body = {"text": "shared prompt", "sampling_params": SAMPLED}
    with serve(app) as url:
        assert _post(url, "/generate", body, "key-a").headers["x-cache"] == "MISS"
        assert _post(url, "/generate", body, "key-b").headers["x-cache"] == "HIT"
        assert _post(url, "/generate", body, "wrong").status_code == 401
