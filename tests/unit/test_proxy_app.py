"""The sglang-cached ASGI app in process, over a scripted upstream (no sockets).

httpx.ASGITransport buffers response bodies, which is fine here: these tests check what the
proxy answers, not when; streaming timing and disconnects are covered over loopback in
tests/integration/test_proxy*.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sglang_client import SGLangClient
from sglang_client.cache import CachedClient, MemoryStore
from sglang_client.server import ProxyApp, ProxyConfig, create_app
from sglang_client.server._asgi import RequestHeaders
from sglang_client.server._validate import validate_generate, validate_openai

from ._upstream import Upstream

pytestmark = pytest.mark.anyio

BODY = {"text": "hello", "sampling_params": {"max_new_tokens": 8, "temperature": 0.7}}


class ScriptedUpstream(Upstream):
    """``Upstream`` plus ``/health``, a cut stream (prompt ``CUT``) and injectable failures."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: Exception | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.fail is not None:
            raise self.fail
        if request.url.path == "/health":
            return httpx.Response(200)
        if request.url.path == "/generate" and json.loads(request.content).get("text") == "CUT":
            self.calls.append({"path": "/generate", "text": "CUT"})
            meta = {"id": "r1", "finish_reason": None, "prompt_tokens": 1, "completion_tokens": 1}
            event = {"text": " a", "output_ids": [1], "meta_info": meta}
            wire = f"data: {json.dumps(event)}\n\n".encode()  # no [DONE]: the upstream died
            return httpx.Response(200, content=wire, headers={"content-type": "text/event-stream"})
        return super().handle(request)


@dataclass
class Proxy:
    app: ProxyApp
    http: httpx.AsyncClient
    upstream: ScriptedUpstream
    store: MemoryStore

    async def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return await self.http.post(path, json=body, headers=headers)

    async def generate(self, body: Any = None, **headers: str) -> httpx.Response:
        return await self.post("/generate", BODY if body is None else body, **headers)


Make = Callable[..., Proxy]


@pytest.fixture
async def make_proxy() -> AsyncIterator[Make]:
    made: list[Proxy] = []

    def make(**config: Any) -> Proxy:
        upstream = ScriptedUpstream()
        client = SGLangClient(
            "http://upstream.test", transport=httpx.MockTransport(upstream.handle), max_retries=0
        )
        store = MemoryStore()
        app = create_app(
            CachedClient(client, store),
            ProxyConfig(upstream_url="http://127.0.0.1:9", quiet=True, **config),
        )
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://proxy")
        made.append(Proxy(app, http, upstream, store))
        return made[-1]

    yield make
    for proxy in made:
        await proxy.http.aclose()
        await proxy.app.aclose()


@pytest.fixture
def proxy(make_proxy: Make) -> Proxy:
    return make_proxy()


def assert_sglang_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["object"] == "error"
    assert body["code"] == status
    assert fragment in body["message"], body["message"]


def sse_events(response: httpx.Response) -> list[Any]:
    text = response.text
    assert text.endswith("data: [DONE]\n\n"), text[-80:]
    frames = text.split("\n\n")[:-1]
    assert all(frame.startswith("data: ") and "\n" not in frame for frame in frames)
    return [json.loads(f[6:]) for f in frames[:-1]]


# ---------------------------------------------------------------------- cached /generate


async def test_miss_then_hit_same_bytes(proxy: Proxy) -> None:
    miss = await proxy.generate()
    assert miss.status_code == 200
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["content-type"] == "application/json"
    assert int(miss.headers["content-length"]) == len(miss.content)
    for _ in range(3):  # the second hit onwards comes from the memo
        hit = await proxy.generate()
        assert hit.headers["x-cache"] == "HIT"
        assert hit.content == miss.content
    assert proxy.upstream.generated == 1
    assert len(proxy.app.memo) == 1
    stats = (await proxy.http.get("/cache/stats")).json()
    assert (stats["hits"], stats["misses"], stats["num_keys"]) == (3, 1, 1)
    assert stats["hit_latency"]["p50"] is not None


async def test_memo_follows_the_store(proxy: Proxy) -> None:
    first = await proxy.generate()
    await proxy.generate()
    assert len(proxy.app.memo) == 1
    # The entry vanishes behind the proxy's back (TTL, eviction, another process, ...).
    await proxy.store.clear()
    again = await proxy.generate()
    assert again.headers["x-cache"] == "MISS"
    assert again.content != first.content
    assert proxy.upstream.generated == 2
    assert (await proxy.generate()).content == again.content


async def test_memo_never_stores_what_the_full_path_would_not_send(proxy: Proxy) -> None:
    await proxy.generate()
    raw = json.dumps(BODY).encode()
    other = {"text": "something else"}
    await proxy.app.memo.remember("/generate", raw, BODY, other, b'{"text":"something else"}')
    assert len(proxy.app.memo) == 0
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    answer = (await proxy.post("/v1/chat/completions", chat)).json()
    answer["choices"][0]["message"]["content"] = "something else"
    raw = json.dumps(chat).encode()
    await proxy.app.memo.remember("/v1/chat/completions", raw, chat, answer, b"")
    assert len(proxy.app.memo) == 0


async def asgi_call(app: ProxyApp, messages: list[dict[str, Any]], **headers: str) -> list[Any]:
    """Call the app with exactly these request messages; return what it sent."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/generate",
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        "query_string": b"",
    }
    pending = list(messages)
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_memoised_hits_still_check_the_api_key(make_proxy: Make) -> None:
    proxy = make_proxy(api_key="sk-1")
    auth = {"Authorization": "Bearer sk-1"}
    first = await proxy.generate(**auth)
    assert (await proxy.generate(**auth)).headers["x-cache"] == "HIT"
    assert len(proxy.app.memo) == 1
    assert (await proxy.generate()).status_code == 401
    assert (await proxy.generate(Authorization="Bearer sk-2")).status_code == 401
    hit = await proxy.generate(**auth)
    assert (hit.headers["x-cache"], hit.content) == ("HIT", first.content)


async def test_memoised_bodies_still_honour_cache_control_and_content_type(proxy: Proxy) -> None:
    raw = json.dumps(BODY).encode()

    async def post(content_type: str, **headers: str) -> httpx.Response:
        headers["Content-Type"] = content_type
        return await proxy.http.post("/generate", content=raw, headers=headers)

    first = await post("application/json")
    await post("application/json")
    assert len(proxy.app.memo) == 1
    fresh = await post("application/json", **{"Cache-Control": "no-cache"})
    assert fresh.headers["x-cache"] == "MISS"
    assert proxy.upstream.generated == 2
    assert_sglang_error(await post("text/plain"), 400, "Only 'application/json' is allowed")
    # curl -d sends form-urlencoded, which SGLang 0.5.23 refuses on /generate too (recorded):
    # a memoised body is no exception. A JSON subtype is read as JSON, through the full path.
    form = await post("application/x-www-form-urlencoded")
    assert_sglang_error(form, 400, "Only 'application/json' is allowed")
    hit = await post("application/vnd.api+json")
    assert hit.headers["x-cache"] == "HIT"
    assert hit.content == first.content
    assert (await post("application/json")).content == first.content


async def test_memoised_body_in_several_messages_and_early_disconnect(proxy: Proxy) -> None:
    raw = json.dumps(BODY).encode()
    sent = await proxy.http.post(
        "/generate", content=raw, headers={"Content-Type": "application/json"}
    )
    await proxy.http.post("/generate", content=raw, headers={"Content-Type": "application/json"})
    assert len(proxy.app.memo) == 1
    parts = [
        {"type": "http.request", "body": raw[:5], "more_body": True},
        {"type": "http.request", "body": raw[5:], "more_body": False},
    ]
    out = await asgi_call(proxy.app, parts, content_type="application/json")
    assert out[0]["status"] == 200
    assert dict(out[0]["headers"])[b"x-cache"] == b"HIT"
    assert out[1]["body"] == sent.content
    # A client gone before its body: nothing sent, nothing counted as served.
    hits = proxy.app.cached.counters.hits
    assert await asgi_call(proxy.app, [], content_type="application/json") == []
    assert proxy.app.cached.counters.hits == hits
    assert proxy.upstream.generated == 1


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_memoised_openai_hits_get_a_fresh_id_each_time(proxy: Proxy, path: str) -> None:
    if path == "/v1/completions":
        body: dict[str, Any] = {"model": "m", "prompt": "memo", "n": 2, "temperature": 0.5}
    else:
        body = {"model": "m", "messages": [{"role": "user", "content": "memo"}], "n": 2}
    miss = await proxy.post(path, body)
    assert miss.headers["x-cache"] == "MISS"
    hits = [await proxy.post(path, body) for _ in range(3)]  # the 2nd onwards: from the memo
    assert len(proxy.app.memo) == 1
    assert proxy.upstream.generated == 2
    answers = [h.json() for h in hits]
    assert len({a["id"] for a in answers}) == 3
    assert all(len(a["id"]) == 32 and isinstance(a["created"], int) for a in answers)
    same = [{k: v for k, v in a.items() if k not in ("id", "created")} for a in answers]
    assert same[0] == same[1] == same[2]
    assert [c["index"] for c in answers[2]["choices"]] == [0, 1]
    assert all(int(h.headers["content-length"]) == len(h.content) for h in hits)
    # The same bytes to the other OpenAI route are another request: never served from here.
    other = "/v1/completions" if path != "/v1/completions" else "/v1/chat/completions"
    raw = json.dumps(body).encode()
    crossed = await proxy.http.post(
        other, content=raw, headers={"Content-Type": "application/json"}
    )
    assert crossed.headers.get("x-cache") != "HIT"
    # The memo follows the store, and the OpenAI routes insist on a JSON content type.
    await proxy.store.clear()
    assert (await proxy.post(path, body)).headers["x-cache"] == "MISS"
    await proxy.post(path, body)
    await proxy.post(path, body)
    bare = await proxy.http.post(path, content=json.dumps(body, separators=(",", ":")).encode())
    assert bare.status_code == 400


async def test_memo_disabled(make_proxy: Make) -> None:
    proxy = make_proxy(hit_memo_bytes=0)
    await proxy.generate()
    assert (await proxy.generate()).headers["x-cache"] == "HIT"
    assert len(proxy.app.memo) == 0


async def test_n_aware_partial_and_greedy(proxy: Proxy) -> None:
    await proxy.generate()
    three = {**BODY, "sampling_params": {**BODY["sampling_params"], "n": 3}}
    partial = await proxy.generate(three)
    assert partial.headers["x-cache"] == "PARTIAL"
    assert len(partial.json()) == 3
    assert proxy.upstream.generated == 3
    assert (await proxy.generate(three)).headers["x-cache"] == "HIT"
    greedy = {"text": "g", "sampling_params": {"temperature": 0, "n": 4}}
    assert (await proxy.generate(greedy)).headers["x-cache"] == "MISS"
    assert proxy.upstream.generated == 4


async def test_cache_control(proxy: Proxy) -> None:
    await proxy.generate()
    await proxy.generate()
    refreshed = await proxy.generate(**{"Cache-Control": "no-cache"})
    assert refreshed.headers["x-cache"] == "MISS"  # looked nothing up, stored the new one
    assert proxy.upstream.generated == 2
    bypass = await proxy.generate({"text": "fresh"}, **{"Cache-Control": "no-store"})
    assert bypass.headers["x-cache"] == "BYPASS"
    assert (await proxy.generate({"text": "fresh"})).headers["x-cache"] == "MISS"


async def test_put_generate_and_form_content_type(proxy: Proxy) -> None:
    response = await proxy.http.put("/generate", json=BODY)
    assert response.headers["x-cache"] == "MISS"
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {} if content_type is None else {"content-type": content_type}
        refused = await proxy.http.post(
            "/generate", content=json.dumps(BODY).encode(), headers=headers
        )
        assert refused.status_code == 400, content_type  # as SGLang itself answers
    assert proxy.upstream.generated == 1


# ---------------------------------------------------------------------- bad input


BAD_GENERATE = [
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b'{"text": NaN}', "not valid JSON"),
    (b'{"text": "\xff"}', "UTF-8"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"text": 5}', "text must be a string or a list of strings"),
    (b'{"text": "a", "sampling_params": {"max_new_tokens": "5"}}', "max_new_tokens"),
    (b'{"text": "a", "sampling_params": {"temperature": true}}', "temperature must be a number"),
    (b'{"text": "a", "sampling_params": 3}', "sampling_params must be"),
    (b'{"text": "a", "stream": "yes"}', "stream must be a boolean"),
    (b'{"text": "a", "sampling_params": {"n": 0}}', "between 1 and 128"),
    (b'{"text": "a", "sampling_params": {"n": 129}}', "between 1 and 128"),
    (b'{"text": "a", "sampling_params": [{"n": 2}, {"n": 1.5}]}', "must be an integer"),
    (b'{"input_ids": [1, "2"]}', "input_ids"),
    (b'{"input_ids": [1, 99999999999]}', "input_ids"),
    (b'{"text": "a", "priority": 100000000000000000000}', "priority"),
    (b'{"sampling_params": {}}', "Either text, input_ids or input_embeds"),
    (b'{"text": "a", "sampling_params": {"temperature": 1e400}}', "out of range"),
    (b'{"text": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    (b'{"text": "a", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}", "nested too deeply"),
]


@pytest.mark.parametrize(("raw", "fragment"), BAD_GENERATE)
async def test_bad_generate_bodies_never_reach_upstream(
    proxy: Proxy, raw: bytes, fragment: str
) -> None:
    response = await proxy.http.post(
        "/generate", content=raw, headers={"content-type": "application/json"}
    )
    assert_sglang_error(response, 400, fragment)
    assert proxy.upstream.calls == []
    assert (await proxy.store.count()).num_keys == 0


BAD_OPENAI = [
    ("/v1/chat/completions", {"messages": []}, "Messages cannot be empty"),
    ("/v1/chat/completions", {"model": "m"}, "messages is required"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages must be a list"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}], "n": 0}, "between 1 and"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}], "max_tokens": 1.5}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}], "model": 3}, "model must be"),
    ("/v1/completions", {"prompt": 5}, "prompt must be"),
    ("/v1/completions", {"prompt": []}, "Prompt cannot be empty"),
    ("/v1/completions", {"model": "m"}, "prompt is required"),
    ("/v1/completions", {"prompt": "x", "stop": [1]}, "stop must be"),
]


@pytest.mark.parametrize(("path", "body", "fragment"), BAD_OPENAI)
async def test_bad_openai_bodies_never_reach_upstream(
    proxy: Proxy, path: str, body: dict[str, Any], fragment: str
) -> None:
    assert_sglang_error(await proxy.post(path, body), 400, fragment)
    assert proxy.upstream.calls == []


async def test_openai_routes_need_json_content_type(proxy: Proxy) -> None:
    response = await proxy.http.post(
        "/v1/chat/completions",
        content=b'{"messages": [{"role": "user", "content": "x"}]}',
        headers={"content-type": "text/plain"},
    )
    assert_sglang_error(response, 400, "Only 'application/json' is allowed")
    generate = await proxy.http.post(
        "/generate", content=b'{"text": "x"}', headers={"content-type": "multipart/form-data"}
    )
    assert_sglang_error(generate, 400, "got 'multipart/form-data'")
    assert proxy.upstream.calls == []


async def test_body_limit(make_proxy: Make) -> None:
    proxy = make_proxy(max_body_bytes=100)
    big = {"text": "x" * 200}
    assert_sglang_error(await proxy.generate(big), 413, "limit of 100 bytes")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(4):
            yield b" " * 40

    response = await proxy.http.post(
        "/generate", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_sglang_error(response, 413, "limit of 100 bytes")
    passthrough = await proxy.http.post("/tokenize", content=b"x" * 101)
    assert_sglang_error(passthrough, 413, "limit")
    assert proxy.upstream.calls == []


def test_validators_accept_what_sglang_accepts() -> None:
    ok = [
        {"text": ["a", "b"], "sampling_params": [{"n": 2}, {"n": 2, "stop": ["x"]}]},
        {"input_ids": [[1, 2], [3]], "sampling_params": {"temperature": 0, "top_p": 1}},
        {"text": "a", "sampling_params": {"seed_unknown_to_us": "kept for SGLang to judge"}},
        {"text": "a", "sampling_params": {"max_new_tokens": None}, "rid": None},
        {"input_embeds": [[0.1]]},
    ]
    assert [validate_generate(body, 128) for body in ok] == [None] * len(ok)
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}], "n": 3}
    assert validate_openai(chat, 128, chat=True) is None
    assert validate_openai({"prompt": [[1, 2], [3]], "temperature": 1}, 128, chat=False) is None


def test_request_headers() -> None:
    headers = RequestHeaders(
        {
            "headers": [
                (b"content-type", b"Application/JSON; charset=utf-8"),
                (b"authorization", b"bearer  tok "),
                (b"cache-control", b"No-Cache"),
                (b"content-length", b"abc"),
            ]
        }
    )
    assert headers.content_type == "application/json"
    assert headers.bearer == "tok"
    assert headers.cache_control == "no-cache"
    assert headers.content_length is None
    assert RequestHeaders({"headers": [(b"authorization", b"Basic x")]}).bearer is None


# ---------------------------------------------------------------------- upstream faults


async def test_upstream_error_passes_through_and_is_not_cached(proxy: Proxy) -> None:
    for _ in range(2):
        response = await proxy.generate({"text": "FAIL"})
        assert response.status_code == 400
        assert response.json() == {"error": {"message": "bad prompt"}}
    assert len(proxy.upstream.calls) == 2
    assert (await proxy.store.count()).num_keys == 0


@pytest.mark.parametrize(
    ("error", "status", "fragment"),
    [
        (httpx.ConnectError("connection refused"), 502, "unreachable"),
        (httpx.ReadTimeout("read timed out"), 504, "timed out"),
    ],
)
async def test_upstream_down_or_slow(
    proxy: Proxy, error: Exception, status: int, fragment: str
) -> None:
    proxy.upstream.fail = error
    assert_sglang_error(await proxy.generate(), status, fragment)
    chat = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    assert_sglang_error(await proxy.post("/v1/chat/completions", chat), status, fragment)
    metrics = (await proxy.http.get("/metrics")).text
    kind = "connect" if status == 502 else "timeout"
    assert f'sglang_cached_upstream_errors_total{{kind="{kind}"}} 2' in metrics
    health = (await proxy.http.get("/health")).json()
    assert health["status"] == "degraded"
    assert health["upstream"]["available"] is False


async def test_passthrough_to_a_dead_upstream_is_502(proxy: Proxy) -> None:
    assert_sglang_error(await proxy.http.get("/model_info"), 502, "unreachable")


async def test_internal_error_is_500_and_the_app_keeps_serving(proxy: Proxy) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    proxy.app.cached.openai_json = broken  # type: ignore[method-assign]
    chat = {"messages": [{"role": "user", "content": "x"}]}
    assert_sglang_error(await proxy.post("/v1/chat/completions", chat), 500, "boom")
    assert (await proxy.generate()).status_code == 200


async def test_internal_error_on_the_memo_path_is_500_too(proxy: Proxy) -> None:
    first = await proxy.generate()
    await proxy.generate()
    assert len(proxy.app.memo) == 1

    async def broken(key: str) -> float:
        raise RuntimeError("probe boom")

    proxy.app.memo._probe = broken
    assert_sglang_error(await proxy.generate(), 500, "probe boom")
    proxy.app.memo._probe = proxy.store.created_at
    assert (await proxy.generate()).content == first.content


# ---------------------------------------------------------------------- streaming


async def test_generate_stream_miss_then_replayed_hit(proxy: Proxy) -> None:
    body = {**BODY, "stream": True}
    miss = await proxy.generate(body)
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = sse_events(miss)
    assert events[-1]["meta_info"]["finish_reason"]["type"] == "length"
    hit = await proxy.generate(body)
    assert hit.headers["x-cache"] == "HIT"
    replay = sse_events(hit)
    assert replay[-1]["text"] == events[-1]["text"]
    plain = await proxy.generate()
    assert plain.headers["x-cache"] == "HIT"
    assert plain.json()["text"] == events[-1]["text"]
    assert proxy.upstream.generated == 1


async def test_stream_cut_mid_way_ends_with_an_error_event(proxy: Proxy) -> None:
    response = await proxy.generate({"text": "CUT", "stream": True})
    assert response.status_code == 200
    events = sse_events(response)
    assert events[0]["text"] == " a"
    assert events[-1]["error"]["code"] == 502
    assert "before [DONE]" in events[-1]["error"]["message"]
    assert (await proxy.store.count()).num_keys == 0


async def test_stream_error_before_first_event_is_a_real_status(proxy: Proxy) -> None:
    response = await proxy.generate({"text": "FAIL", "stream": True})
    assert response.status_code == 400
    assert response.json() == {"error": {"message": "bad prompt"}}


async def test_chat_miss_hit_and_stream_replay(proxy: Proxy) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}
    miss = await proxy.post("/v1/chat/completions", body)
    assert miss.headers["x-cache"] == "MISS"
    hit = await proxy.post("/v1/chat/completions", body)
    assert hit.headers["x-cache"] == "HIT"
    content = miss.json()["choices"][0]["message"]["content"]
    assert hit.json()["choices"][0]["message"]["content"] == content
    streamed = await proxy.post("/v1/chat/completions", {**body, "stream": True})
    assert streamed.headers["x-cache"] == "HIT"
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in sse_events(streamed)]
    assert "".join(deltas) == content
    assert proxy.upstream.generated == 1


async def test_completions_stream_miss_then_replayed_hit(proxy: Proxy) -> None:
    body = {"model": "m", "prompt": "tell me", "max_tokens": 4, "n": 2, "stream": True}
    miss = await proxy.post("/v1/completions", body)
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["content-type"].startswith("text/event-stream")
    missed = sse_events(miss)
    assert all(e["choices"] for e in missed)  # the usage chunk the proxy asked for stays hidden
    hit = await proxy.post("/v1/completions", body)
    assert hit.headers["x-cache"] == "HIT"
    replayed = sse_events(hit)
    assert proxy.upstream.generated == 2

    def texts(events: list[Any]) -> dict[int, str]:
        out: dict[int, str] = {}
        for event in events:
            assert event["object"] == "text_completion"
            for choice in event["choices"]:
                out[choice["index"]] = out.get(choice["index"], "") + choice["text"]
        return out

    assert texts(replayed) == texts(missed)
    assert [e["choices"][0]["finish_reason"] for e in replayed] == ["length", "length"]
    assert all(e["usage"] is None and e["model"] == "m" for e in replayed)
    whole = await proxy.post("/v1/completions", {**body, "stream": False})
    assert whole.headers["x-cache"] == "HIT"
    assert [c["text"] for c in whole.json()["choices"]] == [texts(missed)[0], texts(missed)[1]]


async def test_chat_stream_partial_hit_says_partial(proxy: Proxy) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "p"}], "temperature": 0.5}
    await proxy.post("/v1/chat/completions", body)
    partial = await proxy.post("/v1/chat/completions", {**body, "n": 2, "stream": True})
    assert partial.headers["x-cache"] == "PARTIAL"
    indexes = {c["index"] for e in sse_events(partial) for c in e["choices"]}
    assert indexes == {0, 1}
    assert proxy.upstream.generated == 2
    hit = await proxy.post("/v1/chat/completions", {**body, "n": 2, "stream": True})
    assert hit.headers["x-cache"] == "HIT"
    assert proxy.upstream.generated == 2


# ---------------------------------------------------------------------- auth
# ---------------------------------------------------------------------- auth


async def test_api_key(make_proxy: Make) -> None:
    proxy = make_proxy(api_key="user-key")
    assert (await proxy.generate()).status_code == 401
    assert (await proxy.generate(Authorization="Bearer wrong")).status_code == 401
    response = await proxy.generate(Authorization="Bearer user-key")
    assert response.status_code == 200
    assert (await proxy.http.get("/health")).status_code == 200
    assert (await proxy.http.get("/metrics")).status_code == 200
    assert (await proxy.http.get("/cache/stats")).json() == {"error": "Unauthorized"}
    ok = await proxy.http.post("/cache/clear", headers={"Authorization": "Bearer user-key"})
    assert ok.json() == {"cleared": 1}  # no admin key configured: the api key is enough


async def test_admin_key(make_proxy: Make) -> None:
    proxy = make_proxy(api_key="user-key", admin_key="admin-key")
    await proxy.generate(Authorization="Bearer user-key")
    user = await proxy.http.post("/cache/clear", headers={"Authorization": "Bearer user-key"})
    assert user.status_code == 403
    assert "admin key" in user.json()["error"]
    assert (await proxy.http.post("/cache/clear")).status_code == 401
    admin = await proxy.http.post("/cache/clear", headers={"Authorization": "Bearer admin-key"})
    assert admin.json() == {"cleared": 1}
    # The admin key is for /cache/clear only.
    assert (await proxy.generate(Authorization="Bearer admin-key")).status_code == 401


# ---------------------------------------------------------------------- /cache, /metrics


async def test_cache_info_pages(proxy: Proxy) -> None:
    for i in range(5):
        await proxy.generate({"text": f"p{i}"})
    info = (await proxy.http.get("/cache/info", params={"offset": 1, "limit": 2})).json()
    assert info["store"] == "memory"
    assert info["num_keys"] == 5
    assert info["total_responses"] == 5
    assert [k["request"]["text"] for k in info["keys"]] == ["p1", "p2"]
    assert info["next_offset"] == 3
    assert info["oldest_entry"] <= info["newest_entry"]
    assert set(info["limits"]) == {"max_entries", "max_bytes", "ttl"}
    last = (await proxy.http.get("/cache/info", params={"offset": 4})).json()
    assert last["next_offset"] is None
    for query in ({"limit": 0}, {"offset": -1}, {"limit": "x"}):
        assert_sglang_error(await proxy.http.get("/cache/info", params=query), 400, "limit")


async def test_stats_clear_and_metrics(proxy: Proxy) -> None:
    await proxy.generate()
    await proxy.generate()
    stats = (await proxy.http.get("/cache/stats")).json()
    required = {"num_keys", "total_responses", "hits", "misses", "hit_rate", "cache_file"}
    assert required <= set(stats)
    assert stats["pending_writes"] == 0
    assert stats["hit_rate"] == 0.5
    metrics = (await proxy.http.get("/metrics")).text
    assert "sglang_cached_hits_total 1" in metrics
    assert "sglang_cached_misses_total 1" in metrics
    assert 'sglang_cached_requests_total{route="/generate",cache="HIT",status="200"} 1' in metrics
    assert 'sglang_cached_request_seconds_count{cache="MISS"} 1' in metrics
    assert (await proxy.http.post("/cache/clear")).json() == {"cleared": 1}
    assert len(proxy.app.memo) == 0
    assert (await proxy.generate()).headers["x-cache"] == "MISS"
