"""SGLangClient against mocked HTTP: shapes, every error body, retries, timeouts, streaming."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from pytest_httpx import HTTPXMock, IteratorStream

from sglang_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    GenerateResponse,
    InternalServerError,
    NotFoundError,
    ServerOverloadedError,
    SGLangClient,
    StreamError,
)

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1:30000"


def make_client(**kwargs: object) -> SGLangClient:
    # pytest-httpx patches httpx's own transport, so tests pick it explicitly.
    options: dict[str, object] = {"retry_base_delay": 0.0, "transport": httpx.AsyncHTTPTransport()}
    options.update(kwargs)
    return SGLangClient(URL, **options)  # type: ignore[arg-type]


def one(text: str = " Paris.", rid: str = "a" * 32, **meta: object) -> dict[str, object]:
    return {
        "text": text,
        "output_ids": [12366, 13, 151645],
        "meta_info": {
            "id": rid,
            "finish_reason": {"type": "stop", "matched": 151645},
            "prompt_tokens": 7,
            "weight_version": "default",
            "num_retractions": 0,
            "reasoning_tokens": 0,
            "completion_tokens": 3,
            "cached_tokens": 2,
            "e2e_latency": 0.08,
            **meta,
        },
    }


async def test_generate_single_returns_one_response(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{URL}/generate", method="POST", json=one())
    async with make_client(api_key="sk-1") as client:
        r = await client.generate(
            "The capital of France is", sampling_params={"temperature": 0, "max_new_tokens": 16}
        )
    assert isinstance(r, GenerateResponse)
    assert r.text == " Paris."
    assert r.output_ids == [12366, 13, 151645]
    assert r.meta_info.finish_reason is not None
    assert r.meta_info.finish_reason.type == "stop"
    assert r.meta_info.finish_reason.matched == 151645
    assert (r.meta_info.prompt_tokens, r.meta_info.completion_tokens) == (7, 3)
    assert r.meta_info.cached_tokens == 2
    assert r.meta_info.model_extra is not None
    assert r.meta_info.model_extra["num_retractions"] == 0  # unknown keys are kept, not rejected
    request = httpx_mock.get_request()
    assert request is not None
    assert request.headers["authorization"] == "Bearer sk-1"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "text": "The capital of France is",
        "sampling_params": {"temperature": 0, "max_new_tokens": 16},
    }


async def test_generate_list_and_n_and_input_ids_return_lists(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json=[one("a"), one("b")])
    httpx_mock.add_response(json=[one("x"), one("y"), one("z")])
    httpx_mock.add_response(json=one("ids"))
    async with make_client() as client:
        batch = await client.generate(["p0", "p1"])
        samples = await client.generate("p", sampling_params={"n": 3})
        single = await client.generate(input_ids=[1, 2, 3])
    assert isinstance(batch, list)
    assert [r.text for r in batch] == ["a", "b"]
    assert isinstance(samples, list)
    assert len(samples) == 3
    assert isinstance(single, GenerateResponse)
    bodies = [json.loads(r.content) for r in httpx_mock.get_requests()]
    assert bodies[0] == {"text": ["p0", "p1"]}
    assert bodies[2] == {"input_ids": [1, 2, 3]}


async def test_generate_one_element_list_is_still_a_list(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json=[one("only")])
    async with make_client() as client:
        result = await client.generate(["only prompt"])
    assert isinstance(result, list)
    assert result[0].text == "only"


ERROR_SHAPES = [
    pytest.param(
        400,
        {
            "object": "error",
            "message": "1 validation error for GenerateReqInput",
            "type": "Bad Request",
            "param": None,
            "code": 400,
        },
        BadRequestError,
        "1 validation error for GenerateReqInput",
        id="400-pydantic-flat",
    ),
    pytest.param(
        400,
        {"error": "unknown field `seed`, expected one of `max_new_tokens`, `stop`"},
        BadRequestError,
        "unknown field `seed`, expected one of `max_new_tokens`, `stop`",
        id="400-contract-string",
    ),
    pytest.param(
        400,
        {"error": {"message": "top_p must be in (0, 1], got 0.0."}},
        BadRequestError,
        "top_p must be in (0, 1], got 0.0.",
        id="400-semantic-nested",
    ),
    pytest.param(401, {"error": "Unauthorized"}, AuthenticationError, "Unauthorized", id="401"),
    pytest.param(
        404,
        {"detail": "Not Found"},
        NotFoundError,
        "Not Found",
        id="404-fastapi",
    ),
    pytest.param(
        503,
        {
            "object": "error",
            "message": "The request queue is full.",
            "type": "503",
            "param": None,
            "code": 503,
        },
        ServerOverloadedError,
        "The request queue is full.",
        id="503-queue-full",
    ),
    pytest.param(
        500,
        "Internal Server Error",
        InternalServerError,
        "Internal Server Error",
        id="500-plain-text",
    ),
]


@pytest.mark.parametrize(("status", "body", "cls", "message"), ERROR_SHAPES)
async def test_every_native_error_shape(
    httpx_mock: HTTPXMock, status: int, body: object, cls: type[APIStatusError], message: str
) -> None:
    if isinstance(body, str):
        httpx_mock.add_response(status_code=status, text=body)
    else:
        httpx_mock.add_response(status_code=status, json=body)
    async with make_client(max_retries=0) as client:
        with pytest.raises(cls) as info:
            await client.generate("x")
    assert str(info.value) == message
    assert info.value.status_code == status
    assert info.value.body == body
    assert info.value.response is not None


async def test_openai_flat_error(httpx_mock: HTTPXMock) -> None:
    body = {
        "object": "error",
        "message": "Messages cannot be empty.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    httpx_mock.add_response(url=f"{URL}/v1/chat/completions", status_code=400, json=body)
    async with make_client() as client:
        with pytest.raises(BadRequestError, match="^Messages cannot be empty.$"):
            await client.chat_completion(messages=[])
    assert len(httpx_mock.get_requests()) == 1  # a 4xx is never retried


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_retries_then_succeeds_on_retryable_status(
    httpx_mock: HTTPXMock, status: int
) -> None:
    httpx_mock.add_response(status_code=status, text="busy")
    httpx_mock.add_response(status_code=status, text="busy")
    httpx_mock.add_response(json=one())
    async with make_client(max_retries=2) as client:
        r = await client.generate("x")
    assert isinstance(r, GenerateResponse)
    assert len(httpx_mock.get_requests()) == 3


async def test_retries_are_bounded_by_max_retries(httpx_mock: HTTPXMock) -> None:
    for _ in range(3):
        httpx_mock.add_response(status_code=503, json={"message": "The request queue is full."})
    async with make_client(max_retries=2) as client:
        with pytest.raises(ServerOverloadedError):
            await client.generate("x")
    assert len(httpx_mock.get_requests()) == 3


async def test_max_retries_zero_sends_once(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(status_code=503, text="")
    async with make_client(max_retries=0) as client:
        with pytest.raises(ServerOverloadedError):
            await client.generate("x")
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 422, 500])
async def test_never_retries_other_statuses(httpx_mock: HTTPXMock, status: int) -> None:
    httpx_mock.add_response(status_code=status, json={"error": "no"})
    async with make_client(max_retries=3) as client:
        with pytest.raises(APIStatusError):
            await client.generate("x")
    assert len(httpx_mock.get_requests()) == 1


async def test_connection_error_is_retried(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    httpx_mock.add_response(json=one())
    async with make_client(max_retries=1) as client:
        r = await client.generate("x")
    assert isinstance(r, GenerateResponse)
    assert len(httpx_mock.get_requests()) == 2


async def test_connection_error_after_retries_raises_connection_error(
    httpx_mock: HTTPXMock,
) -> None:
    for _ in range(2):
        httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    async with make_client(max_retries=1) as client:
        with pytest.raises(APIConnectionError, match="connection refused") as info:
            await client.generate("x")
    assert not isinstance(info.value, APITimeoutError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_timeout_before_response_is_retried_then_raises(httpx_mock: HTTPXMock) -> None:
    for _ in range(3):
        httpx_mock.add_exception(httpx.ReadTimeout("timed out"))
    async with make_client(max_retries=2) as client:
        with pytest.raises(APITimeoutError, match="timed out"):
            await client.generate("x", timeout=1.5)
    requests = httpx_mock.get_requests()
    assert len(requests) == 3
    assert requests[0].extensions["timeout"]["read"] == 1.5


async def test_client_timeout_default_is_applied(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json=one())
    async with make_client(timeout=7.0) as client:
        await client.generate("x")
    request = httpx_mock.get_request()
    assert request is not None
    assert request.extensions["timeout"] == {"connect": 7.0, "read": 7.0, "write": 7.0, "pool": 7.0}


async def test_retry_after_header_is_used() -> None:
    from sglang_client._retry import RetryPolicy

    policy = RetryPolicy(max_retries=2, base_delay=0.5, max_delay=8.0)
    response = httpx.Response(503, headers={"retry-after": "3"})
    error = ServerOverloadedError("full", status_code=503, response=response)
    assert policy.delay(1, error) == 3.0
    # Without the header: full jitter below an exponentially growing, capped ceiling.
    assert all(0.25 <= policy.delay(1) <= 0.5 for _ in range(50))
    assert all(4.0 <= policy.delay(10) <= 8.0 for _ in range(50))


def sse(*payloads: object) -> list[bytes]:
    events = [f"data: {json.dumps(p, separators=(',', ':'))}\n\n".encode() for p in payloads]
    return [*events, b"data: [DONE]\n\n"]


def stream_chunk(text: str, ids: list[int], done: bool, index: int | None = None) -> dict:
    payload = one(text, completion_tokens=len(ids))
    payload["output_ids"] = ids
    meta = payload["meta_info"]
    assert isinstance(meta, dict)
    meta["finish_reason"] = {"type": "length", "length": 3} if done else None
    if index is not None:
        payload["index"] = index
    return payload


CUMULATIVE = sse(
    stream_chunk(" Once", [1], False),
    stream_chunk(" Once upon", [1, 2], False),
    stream_chunk(" Once upon a", [1, 2, 3], True),
)


def incremental_chunks() -> list[bytes]:
    chunks = []
    for i, (text, tid) in enumerate([(" Once", 1), (" upon", 2), (" a", 3)]):
        payload = stream_chunk(text, [tid], i == 2)
        meta = payload["meta_info"]
        meta["completion_tokens"] = i + 1
        chunks.append(payload)
    return sse(*chunks)


@pytest.mark.parametrize("wire", [CUMULATIVE, incremental_chunks()], ids=["cumulative", "delta"])
async def test_generate_stream_both_modes(httpx_mock: HTTPXMock, wire: list[bytes]) -> None:
    # Cut the wire at odd places so events straddle network chunks.
    blob = b"".join(wire)
    pieces = [blob[i : i + 7] for i in range(0, len(blob), 7)]
    httpx_mock.add_response(
        stream=IteratorStream(pieces), headers={"content-type": "text/event-stream"}
    )
    async with make_client() as client:
        chunks = [c async for c in client.generate_stream("x")]
    assert [c.delta for c in chunks] == [" Once", " upon", " a"]
    assert [c.text for c in chunks] == [" Once", " Once upon", " Once upon a"]
    assert chunks[-1].finish_reason is not None
    assert chunks[0].finish_reason is None
    request = httpx_mock.get_request()
    assert request is not None
    assert json.loads(request.content)["stream"] is True


async def test_stream_error_event_after_200_raises(httpx_mock: HTTPXMock) -> None:
    error = {
        "error": {
            "message": "Either text, input_ids or input_embeds should be provided.",
            "type": "invalid_request_error",
            "code": 400,
            "retryable": False,
        }
    }
    httpx_mock.add_response(stream=IteratorStream(sse(error)))
    async with make_client() as client:
        with pytest.raises(BadRequestError, match="Either text"):
            async for _ in client.generate_stream():
                pass


async def test_stream_abort_with_status_raises_overloaded(httpx_mock: HTTPXMock) -> None:
    abort = stream_chunk("", [], True)
    abort["meta_info"]["finish_reason"] = {
        "type": "abort",
        "status_code": 503,
        "message": "The request queue is full.",
    }
    httpx_mock.add_response(stream=IteratorStream(sse(abort)))
    async with make_client() as client:
        with pytest.raises(ServerOverloadedError, match="The request queue is full."):
            await client.generate_stream("x").collect()
    assert len(httpx_mock.get_requests()) == 1  # inside a 200 stream: not retried


async def test_stream_without_done_raises_stream_error(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(stream=IteratorStream(CUMULATIVE[:2]))
    seen = []
    async with make_client() as client:
        with pytest.raises(StreamError, match=r"before \[DONE\]"):
            async for chunk in client.generate_stream("x"):
                seen.append(chunk.delta)
    assert seen == [" Once", " upon"]
    assert len(httpx_mock.get_requests()) == 1


async def test_stream_retries_before_first_chunk(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(status_code=503, text="")
    httpx_mock.add_response(stream=IteratorStream(CUMULATIVE))
    async with make_client() as client:
        chunks = await client.generate_stream("x").collect()
    assert len(chunks) == 3
    assert len(httpx_mock.get_requests()) == 2


class _Tracked(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece

    async def aclose(self) -> None:
        self.closed = True


async def test_no_retry_once_stream_yielded_and_connection_drops() -> None:
    calls = 0

    class Dropping(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield CUMULATIVE[0]
            raise httpx.ReadError("connection reset by peer")

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, stream=Dropping())

    client = SGLangClient(URL, transport=httpx.MockTransport(handler), retry_base_delay=0.0)
    seen = []
    with pytest.raises(APIConnectionError, match="connection reset"):
        async for chunk in client.generate_stream("x"):
            seen.append(chunk.delta)
    await client.aclose()
    assert seen == [" Once"]
    assert calls == 1


async def test_break_closes_the_response() -> None:
    stream = _Tracked(CUMULATIVE)
    client = SGLangClient(
        URL, transport=httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
    )
    async for _chunk in client.generate_stream("x"):
        break
    for _ in range(5):  # the dropped generator is finalised by the event loop
        await asyncio.sleep(0)
    assert stream.closed
    await client.aclose()


async def test_async_with_closes_the_stream() -> None:
    stream = _Tracked(CUMULATIVE)
    client = SGLangClient(
        URL, transport=httpx.MockTransport(lambda request: httpx.Response(200, stream=stream))
    )
    async with client.generate_stream("x") as chunks:
        async for _chunk in chunks:
            break
    assert stream.closed
    await client.aclose()


async def test_stream_cannot_be_iterated_twice(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(stream=IteratorStream(CUMULATIVE))
    async with make_client() as client:
        stream = client.generate_stream("x")
        await stream.collect()
        with pytest.raises(RuntimeError, match="already iterated"):
            await stream.collect()


async def test_chat_completion_and_stream(httpx_mock: HTTPXMock) -> None:
    completion = {
        "id": "b" * 32,
        "object": "chat.completion",
        "created": 1,
        "model": "default",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!", "reasoning_content": None},
                "logprobs": None,
                "finish_reason": "stop",
                "matched_stop": 2,
            }
        ],
        "usage": {"prompt_tokens": 5, "total_tokens": 7, "completion_tokens": 2},
        "metadata": {"weight_version": "default"},
    }
    httpx_mock.add_response(url=f"{URL}/v1/chat/completions", json=completion)

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {
            "id": "c" * 32,
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "default",
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish,
                    "matched_stop": None,
                }
            ],
        }

    wire = sse(
        chunk({"reasoning_content": None, "role": "assistant", "content": ""}),
        chunk({"reasoning_content": None, "content": "Hi"}),
        chunk({"reasoning_content": None, "content": "!"}),
        chunk({"reasoning_content": None}, "stop"),
    )
    httpx_mock.add_response(url=f"{URL}/v1/chat/completions", stream=IteratorStream(wire))
    messages = [{"role": "user", "content": "Hello"}]
    async with make_client() as client:
        result = await client.chat_completion(messages, max_tokens=8)
        deltas = [
            c.choices[0].delta.content or ""
            async for c in client.chat_completion_stream(messages, max_tokens=8)
        ]
    assert result.choices[0].message.content == "Hi!"
    assert result.usage is not None
    assert result.usage.total_tokens == 7
    assert "".join(deltas) == "Hi!"
    first, second = httpx_mock.get_requests()
    assert json.loads(first.content) == {"messages": messages, "model": "default", "max_tokens": 8}
    assert json.loads(second.content)["stream"] is True


async def test_completion(httpx_mock: HTTPXMock) -> None:
    body = {
        "id": "d" * 32,
        "object": "text_completion",
        "created": 1,
        "model": "default",
        "choices": [{"index": 0, "text": " there", "finish_reason": "length", "logprobs": None}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    httpx_mock.add_response(url=f"{URL}/v1/completions", json=body)
    async with make_client() as client:
        result = await client.completion("Hello", max_tokens=16)
    assert result.choices[0].text == " there"


async def test_health_never_raises(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{URL}/health", status_code=200, text="")
    httpx_mock.add_response(url=f"{URL}/health", status_code=503, text="")
    httpx_mock.add_exception(httpx.ConnectError("refused"), url=f"{URL}/health")
    async with make_client() as client:
        ok = await client.health()
        starting = await client.health()
        down = await client.health()
    assert ok.available
    assert ok.status_code == 200
    assert ok.error is None
    assert not starting.available
    assert starting.status_code == 503
    assert not down.available
    assert down.status_code is None
    assert down.error is not None
    assert "refused" in down.error


async def test_wait_for_ready_polls_until_healthy(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{URL}/health", status_code=503)
    httpx_mock.add_response(url=f"{URL}/health", status_code=503)
    httpx_mock.add_response(url=f"{URL}/health", status_code=200)
    async with make_client() as client:
        await client.wait_for_ready(timeout=10, interval=0.01)
    assert len(httpx_mock.get_requests()) == 3


async def test_wait_for_ready_times_out(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{URL}/health", status_code=503, is_reusable=True)
    async with make_client() as client:
        with pytest.raises(APITimeoutError, match="not ready"):
            await client.wait_for_ready(timeout=0.2, interval=0.02)


async def test_model_info_falls_back_to_old_route(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{URL}/model_info", status_code=404, json={"detail": "Not Found"})
    httpx_mock.add_response(
        url=f"{URL}/get_model_info",
        json={"model_path": "Qwen/Qwen2.5-0.5B-Instruct", "is_generation": True, "x": 1},
    )
    async with make_client() as client:
        info = await client.get_model_info()
    assert info.model_path == "Qwen/Qwen2.5-0.5B-Instruct"


async def test_flush_cache_returns_message(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{URL}/flush_cache", method="POST", text="Cache flushed.\n")
    async with make_client() as client:
        assert (await client.flush_cache()).startswith("Cache flushed.")


async def test_closed_client_refuses_requests() -> None:
    client = make_client()
    await client.aclose()
    await client.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await client.generate("x")


async def test_with_options_shares_the_pool_and_keeps_options(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json=one())
    client = make_client(api_key="k", timeout=3.0)
    other = client.with_options(timeout=9.0)
    await other.generate("x")
    await other.aclose()  # borrowed pool: must stay open for `client`
    httpx_mock.add_response(json=one())
    await client.generate("y")
    await client.aclose()
    first, second = httpx_mock.get_requests()
    assert first.headers["authorization"] == "Bearer k"
    assert first.extensions["timeout"]["read"] == 9.0
    assert second.extensions["timeout"]["read"] == 3.0


def test_with_options_signature_matches_init() -> None:
    init = inspect.signature(SGLangClient.__init__).parameters
    copy = inspect.signature(SGLangClient.with_options).parameters
    assert list(init) == list(copy)
    for name in init:
        assert init[name].kind == copy[name].kind


async def test_borrowed_http_client_is_not_closed(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json=one())
    async with httpx.AsyncClient() as http_client:
        client = SGLangClient(URL, http_client=http_client)
        await client.generate("x")
        await client.aclose()
        assert not http_client.is_closed


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        SGLangClient(URL, max_retries=-1)
    with pytest.raises(ValueError, match="max_connections"):
        SGLangClient(URL, max_connections=0)
