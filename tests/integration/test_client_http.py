"""SGLangClient over real loopback HTTP, against the fake server (or SGLANG_URL)."""

from __future__ import annotations

import uuid

import pytest

from sglang_client import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    GenerateResponse,
    ServerOverloadedError,
    SGLangClient,
    StreamError,
)

from ._targets import ApiKeyServer
from .conftest import free_port

pytestmark = pytest.mark.anyio

GREEDY = {"temperature": 0, "max_new_tokens": 8}


@pytest.mark.gateway_differs("takes one text per /generate (a list of texts is a 422)")
async def test_generate_single_batch_and_n(sglang_url: str) -> None:
    async with SGLangClient(sglang_url) as client:
        single = await client.generate("The capital of France is", sampling_params=GREEDY)
        batch = await client.generate(["Hello", "Goodbye"], sampling_params=GREEDY)
        samples = await client.generate("Once upon a time", sampling_params={**GREEDY, "n": 3})
        by_ids = await client.generate(input_ids=[1000, 1001, 1002], sampling_params=GREEDY)
    assert isinstance(single, GenerateResponse)
    assert single.meta_info.completion_tokens == len(single.output_ids)
    assert single.meta_info.finish_reason is not None
    assert single.meta_info.prompt_tokens > 0
    assert isinstance(batch, list)
    assert len(batch) == 2
    assert isinstance(samples, list)
    assert len(samples) == 3
    assert len({s.meta_info.id for s in samples}) == 3
    assert isinstance(by_ids, GenerateResponse)


async def test_greedy_is_reproducible_and_prefix_is_cached(
    sglang_url: str, is_real_server: bool
) -> None:
    prompt = "A long shared system prompt about the history of the Roman empire. " * 4
    async with SGLangClient(sglang_url) as client:
        first = await client.generate(prompt + "Question one?", sampling_params=GREEDY)
        second = await client.generate(prompt + "Question one?", sampling_params=GREEDY)
        third = await client.generate(prompt + "Another question?", sampling_params=GREEDY)
    assert isinstance(first, GenerateResponse)
    assert isinstance(second, GenerateResponse)
    assert isinstance(third, GenerateResponse)
    if not is_real_server:  # real greedy decoding is not bit-reproducible across batches
        assert first.text == second.text
    assert second.meta_info.cached_tokens > 0
    assert third.meta_info.cached_tokens > 0


async def test_stream_matches_non_stream(sglang_url: str, is_real_server: bool) -> None:
    params = {"temperature": 0, "max_new_tokens": 24}
    async with SGLangClient(sglang_url) as client:
        full = await client.generate("Tell me a story", sampling_params=params)
        chunks = await client.generate_stream("Tell me a story", sampling_params=params).collect()
    assert isinstance(full, GenerateResponse)
    assert "".join(c.delta for c in chunks) == chunks[-1].text
    assert len(chunks[-1].output_ids) == chunks[-1].meta_info.completion_tokens
    if not is_real_server:
        assert chunks[-1].text == full.text
        assert chunks[-1].output_ids == full.output_ids
    assert chunks[-1].finish_reason is not None
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_stream_n_interleaves_indices(sglang_url: str) -> None:
    params = {"temperature": 0.8, "max_new_tokens": 6, "n": 2}
    async with SGLangClient(sglang_url) as client:
        chunks = await client.generate_stream("Hi", sampling_params=params).collect()
    finals = {c.index: c for c in chunks if c.finish_reason is not None}
    assert set(finals) == {0, 1}


@pytest.mark.gateway_differs(
    "re-serializes requests into its own types, dropping fields it does not know (seed is "
    "dropped, not refused)"
)
async def test_bad_request_carries_server_message(sglang_url: str) -> None:
    async with SGLangClient(sglang_url) as client:
        with pytest.raises(BadRequestError, match="unknown field `seed`"):
            await client.generate("x", sampling_params={"seed": 1})
        with pytest.raises(BadRequestError) as info:
            await client.generate("x", sampling_params={"top_p": 0})
        assert info.value.status_code == 400
        with pytest.raises(BadRequestError, match="Either text, input_ids"):
            await client.generate_stream().collect()


@pytest.mark.gateway_differs("routes no /abort_request")
async def test_abort_ends_a_running_generation_with_its_reason(paced_url: str) -> None:
    import anyio

    rid = f"abort-{uuid.uuid4().hex}"
    params = {"max_new_tokens": 1500, "ignore_eos": True, "temperature": 0.8}
    results: list[GenerateResponse] = []
    async with SGLangClient(paced_url, timeout=60) as client:

        async def run() -> None:
            r = await client.generate("Go on and on", sampling_params=params, rid=rid)
            assert isinstance(r, GenerateResponse)
            results.append(r)

        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await anyio.sleep(0.5)  # it is generating its 1500 tokens by now
            await client.abort_request(rid)
    (aborted,) = results
    finish = aborted.meta_info.finish_reason
    assert finish is not None and finish.type == "abort"
    assert finish.message == "Aborted"
    assert (finish.status_code, finish.err_type) == (None, None)  # a plain abort, no error
    assert 0 < aborted.meta_info.completion_tokens < 1500


async def test_model_info_has_the_embedding_block(sglang_url: str) -> None:
    async with SGLangClient(sglang_url) as client:
        info = await client.get_model_info()
    assert isinstance(info.embedding, dict) and info.embedding["enabled"] is False
    assert info.architectures and info.model_type


@pytest.mark.gateway_differs("/get_server_info is the gateway's own")
async def test_info_routes_and_flush(sglang_url: str) -> None:
    async with SGLangClient(sglang_url) as client:
        model = await client.get_model_info()
        server = await client.get_server_info()
        health = await client.health()
        message = await client.flush_cache()
    assert model.model_path
    assert server.version
    assert health.available
    assert message.startswith("Cache flushed")


async def test_chat_and_completion(sglang_url: str, is_real_server: bool) -> None:
    async with SGLangClient(sglang_url) as client:
        chat = await client.chat_completion(
            [{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
        )
        deltas = [
            c.choices[0].delta.content or ""
            async for c in client.chat_completion_stream(
                [{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
            )
            if c.choices
        ]
        completion = await client.completion("Hello", max_tokens=8, temperature=0)
    assert isinstance(chat.choices[0].message.content, str)
    assert isinstance(completion.choices[0].text, str)
    if not is_real_server:
        assert chat.choices[0].message.content == "".join(deltas)
        assert completion.choices[0].text


async def test_unreachable_server_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with SGLangClient(url, max_retries=1, retry_base_delay=0.0) as client:
        with pytest.raises(APIConnectionError):
            await client.generate("x")
        status = await client.health()
    assert not status.available
    assert status.error


# ---- fault injection and server flags: the fake server only ------------------------------


async def test_incremental_server_streams_the_same_text(
    sglang_url: str, incremental_url: str, is_real_server: bool
) -> None:
    params = {"temperature": 0, "max_new_tokens": 20}
    results = []
    for url in (sglang_url, incremental_url):
        async with SGLangClient(url) as client:
            chunks = await client.generate_stream("Story:", sampling_params=params).collect()
            full = await client.generate("Story:", sampling_params=params)
        assert isinstance(full, GenerateResponse)
        # .delta is new text in both modes, .text everything so far
        assert "".join(c.delta for c in chunks) == chunks[-1].text
        assert chunks[-1].output_ids[: len(chunks[0].output_ids)] == chunks[0].output_ids
        if not is_real_server:  # real greedy text may differ between batches
            assert chunks[-1].text == full.text
        results.append([c.delta for c in chunks])
    if not is_real_server:
        assert results[0] == results[1]


@pytest.mark.fake_only("fault injection: fail_next(503)")
async def test_retries_ride_out_503s_then_give_up() -> None:
    from sglang_client.testing import FakeSGLangServer

    async with FakeSGLangServer() as server:
        async with SGLangClient(server.url, max_retries=2, retry_base_delay=0.0) as client:
            server.app.faults.fail_next(2, "503")
            r = await client.generate("x", sampling_params=GREEDY)
            assert isinstance(r, GenerateResponse)
            server.app.faults.fail_next(3, "503")
            with pytest.raises(ServerOverloadedError, match="The request queue is full."):
                await client.generate("x", sampling_params=GREEDY)


@pytest.mark.fake_only("fault injection: a queue-full abort in a stream")
async def test_stream_overload_abort_raises() -> None:
    from sglang_client.testing import FakeSGLangServer

    async with FakeSGLangServer(fail_503_rate=1.0) as server:
        async with SGLangClient(server.url, max_retries=0) as client:
            with pytest.raises(ServerOverloadedError):
                await client.generate_stream("x", sampling_params=GREEDY).collect()


@pytest.mark.fake_only("fault injection: drop_stream_rate")
async def test_dropped_stream_is_not_retried() -> None:
    from sglang_client.testing import FakeSGLangServer

    async with FakeSGLangServer(drop_stream_rate=1.0) as server:
        async with SGLangClient(server.url, max_retries=2, retry_base_delay=0.0) as client:
            seen = 0
            with pytest.raises((APIConnectionError, StreamError)):
                async for _ in client.generate_stream("x", sampling_params={"max_new_tokens": 30}):
                    seen += 1
            assert seen >= 1


@pytest.mark.fake_only("latency_per_token, and the fake's abort counter")
async def test_read_timeout_raises_timeout_error() -> None:
    import anyio
    import httpx

    from sglang_client.testing import FakeSGLangServer

    # 200 tokens at 50 ms can never arrive within the 0.5 s read timeout: ignore_eos matters,
    # since a sampled answer may otherwise end after a token or two and beat the timeout.
    # Only the read is tight; connecting may take as long as a loaded machine needs.
    slow = {"max_new_tokens": 200, "ignore_eos": True}
    async with FakeSGLangServer(latency_per_token=0.05) as server:
        timeout = httpx.Timeout(30.0, read=0.5)
        async with SGLangClient(server.url, timeout=timeout, max_retries=0) as client:
            with pytest.raises(APITimeoutError, match="timed out"):
                await client.generate("x", sampling_params=slow)
            # The request was sent and then abandoned: the fake aborts it on the disconnect.
            for _ in range(2000):
                if server.app.stats.aborted_requests >= 1:
                    break
                await anyio.sleep(0.01)
            assert server.app.stats.aborted_requests == 1
            assert server.app.stats.requests["/generate"] == 1
            ok = await client.generate("x", sampling_params={"max_new_tokens": 1}, timeout=30)
            assert isinstance(ok, GenerateResponse)


async def test_api_key(api_key_server: ApiKeyServer) -> None:
    async with SGLangClient(api_key_server.url) as anonymous:
        with pytest.raises(AuthenticationError, match="Unauthorized"):
            await anonymous.generate("x")
        assert (await anonymous.health()).available  # /health is exempt
    async with SGLangClient(api_key_server.url, api_key=api_key_server.key) as client:
        assert isinstance(await client.generate("x", sampling_params=GREEDY), GenerateResponse)
    async with SGLangClient(api_key_server.url, api_key="wrong") as wrong:
        with pytest.raises(AuthenticationError):
            await wrong.chat_completion([{"role": "user", "content": "x"}], max_tokens=2)


@pytest.mark.fake_only("startup_delay: a server that is still loading")
async def test_wait_for_ready_rides_out_slow_startup() -> None:
    from sglang_client.testing import FakeSGLangServer

    async with FakeSGLangServer(startup_delay=0.5) as server:
        async with SGLangClient(server.url) as client:
            assert not (await client.health()).available
            await client.wait_for_ready(timeout=10, interval=0.05)
            assert (await client.health()).available


async def test_break_releases_connection_for_reuse(paced_url: str) -> None:
    # A long stream (still running when left), and one connection: a leaked one would hang.
    long = {"max_new_tokens": 500, "ignore_eos": True}
    async with SGLangClient(paced_url, max_connections=1) as client:
        for _ in range(3):
            async for _chunk in client.generate_stream("x", sampling_params=long):
                break
        r = await client.generate("x", sampling_params=GREEDY, timeout=30)
        assert isinstance(r, GenerateResponse)


@pytest.mark.gateway_differs("routes no /tokenize")
async def test_tokenize_and_detokenize_match_what_generate_sees(sglang_url: str) -> None:
    text = "Hello world.\n\nThe river"
    async with SGLangClient(sglang_url) as client:
        whole = await client.tokenize(text)
        bare = await client.tokenize(text, add_special_tokens=False)
        assert whole[len(whole) - len(bare) :] == bare  # special tokens (a BOS) only in front
        assert await client.detokenize(bare) == text
        by_ids = await client.generate(input_ids=whole, sampling_params=GREEDY)
        by_text = await client.generate(text, sampling_params=GREEDY)
    assert isinstance(by_ids, GenerateResponse) and isinstance(by_text, GenerateResponse)
    assert by_ids.meta_info.prompt_tokens == by_text.meta_info.prompt_tokens == len(whole)
    assert by_ids.output_ids == by_text.output_ids
