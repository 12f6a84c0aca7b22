"""The fake SGLang server reproduces docs/sglang-protocol.md §11, one test per numbered fact.

Facts 1-20 (native ``/generate`` and the small routes) are here; facts 21-27 (sessions, OpenAI
routes, tokenizer routes) in ``test_fake_server_openai.py``; knobs, determinism, the tokenizer
and the CLI in ``test_fake_server_knobs.py``. Everything goes over real loopback HTTP against
``FakeSGLangServer`` (never ASGITransport, which buffers streams).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from sglang_client.testing import FakeSGLangServer
from sglang_client.testing._tokenizer import EOS_TOKEN_ID, TOKENIZER

HEX32 = re.compile(r"^[0-9a-f]{32}$")
GREEDY = {"temperature": 0}


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSGLangServer]:
    with FakeSGLangServer(seed=1234) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: FakeSGLangServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def incr_server() -> Iterator[FakeSGLangServer]:
    with FakeSGLangServer(
        incremental_streaming_output=True, enable_cache_report=True, enable_metrics=True
    ) as srv:
        yield srv


def sse_payloads(raw: bytes) -> list[str]:
    """Split an SSE body into ``data:`` payloads, checking the exact framing."""
    assert raw.endswith(b"\n\n")
    events = raw.split(b"\n\n")[:-1]
    for event in events:
        assert event.startswith(b"data: "), event
        assert b"\n" not in event
    return [e[len(b"data: ") :].decode() for e in events]


def stream(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> tuple[httpx.Response, list[str]]:
    with client.stream("POST", path, json=body) as response:
        raw = response.read()
    return response, sse_payloads(raw)


def data_chunks(payloads: list[str]) -> list[dict[str, Any]]:
    """The JSON chunks of a well-terminated stream (exactly one final ``[DONE]``)."""
    assert payloads[-1] == "[DONE]"
    assert payloads.count("[DONE]") == 1
    return [json.loads(p) for p in payloads[:-1]]


def generate(client: httpx.Client, **body: Any) -> Any:
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def find_prompt(client: httpx.Client, predicate: Any, **params: Any) -> tuple[str, Any]:
    """The first prompt ``prompt N`` whose greedy result satisfies ``predicate``."""
    for i in range(200):
        prompt = f"prompt {i}"
        result = generate(client, text=prompt, sampling_params={**GREEDY, **params})
        if predicate(result):
            return prompt, result
    raise AssertionError("no prompt found")


# -- facts ---------------------------------------------------------------------------------------


def test_fact_01_generate_returns_one_object_with_meta_info(client: httpx.Client) -> None:
    response = client.post("/generate", json={"text": "The capital of France is"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["text", "output_ids", "meta_info"]
    meta = body["meta_info"]
    for key in (
        "id",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "e2e_latency",
        "weight_version",
        "num_retractions",
        "reasoning_tokens",
    ):
        assert key in meta
    assert HEX32.match(meta["id"])
    assert isinstance(meta["finish_reason"], dict)
    assert meta["prompt_tokens"] == len(TOKENIZER.encode("The capital of France is"))
    assert meta["weight_version"] == "default"
    assert isinstance(meta["e2e_latency"], float)
    named = generate(client, text="x", rid="my-request-1")
    assert named["meta_info"]["id"] == "my-request-1"


def test_fact_02_default_max_new_tokens_is_128_and_zero_means_prefill_only(
    client: httpx.Client,
) -> None:
    body = generate(client, text="Tell me a story", sampling_params={"ignore_eos": True})
    assert body["meta_info"]["completion_tokens"] == 128
    assert body["meta_info"]["finish_reason"] == {"type": "length", "length": 128}
    zero = generate(client, text="Tell me a story", sampling_params={"max_new_tokens": 0})
    assert zero["text"] == ""
    assert zero["output_ids"] == []
    assert zero["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    assert zero["meta_info"]["completion_tokens"] == 0


def test_fact_03_finish_reasons_eos_stop_string_and_length(client: httpx.Client) -> None:
    _, eos = find_prompt(client, lambda r: r["meta_info"]["finish_reason"]["type"] == "stop")
    assert eos["meta_info"]["finish_reason"] == {"type": "stop", "matched": EOS_TOKEN_ID}

    params = {**GREEDY, "max_new_tokens": 12, "ignore_eos": True}
    full = generate(client, text="Once upon a time", sampling_params=params)
    words = full["text"].split(" ")
    stop = " " + words[6]
    cut = full["text"].index(stop)
    trimmed = generate(client, text="Once upon a time", sampling_params={**params, "stop": stop})
    assert trimmed["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert trimmed["text"] == full["text"][:cut]
    kept = generate(
        client,
        text="Once upon a time",
        sampling_params={**params, "stop": [" zzz", stop], "no_stop_trim": True},
    )
    assert kept["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert kept["text"] == full["text"][: cut + len(stop)]

    length = generate(client, text="Once upon a time", sampling_params=params)
    assert length["meta_info"]["finish_reason"] == {"type": "length", "length": 12}


def test_fact_04_output_ids_include_the_stop_token(client: httpx.Client) -> None:
    _, eos = find_prompt(client, lambda r: r["meta_info"]["finish_reason"]["type"] == "stop")
    ids = eos["output_ids"]
    assert ids[-1] == EOS_TOKEN_ID
    assert eos["meta_info"]["completion_tokens"] == len(ids)
    assert eos["text"] == TOKENIZER.decode(ids[:-1])
    assert "<|im_end|>" not in eos["text"]

    params = {**GREEDY, "max_new_tokens": 10, "ignore_eos": True}
    full = generate(client, text="A stop token", sampling_params=params)
    stop_id = full["output_ids"][3]
    first = full["output_ids"].index(stop_id)
    hit = generate(
        client, text="A stop token", sampling_params={**params, "stop_token_ids": [stop_id]}
    )
    assert hit["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    assert hit["output_ids"] == full["output_ids"][: first + 1]
    assert hit["meta_info"]["completion_tokens"] == len(hit["output_ids"])
    assert hit["text"] == TOKENIZER.decode(full["output_ids"][:first])


def test_fact_05_batch_input_returns_an_array_in_input_order(client: httpx.Client) -> None:
    params = {**GREEDY, "max_new_tokens": 6}
    one = generate(client, text=["only one"], sampling_params=params)
    assert isinstance(one, list) and len(one) == 1
    assert "index" not in one[0]
    prompts = ["first prompt", "the second one", "third"]
    batch = generate(client, text=prompts, sampling_params=params)
    singles = [generate(client, text=p, sampling_params=params)["text"] for p in prompts]
    assert [item["text"] for item in batch] == singles
    assert all("index" not in item for item in batch)
    ids = [TOKENIZER.encode(p) for p in prompts]
    by_ids = generate(client, input_ids=ids, sampling_params=params)
    assert [item["text"] for item in by_ids] == singles
    assert [item["meta_info"]["prompt_tokens"] for item in by_ids] == [len(i) for i in ids]


def test_fact_06_n_samples_are_prompt_major_with_fresh_ids(client: httpx.Client) -> None:
    three = generate(client, text="Hello", rid="caller-rid", sampling_params={"n": 3})
    assert isinstance(three, list) and len(three) == 3
    prompts = ["a", "a much longer second prompt here"]
    lengths = [len(TOKENIZER.encode(p)) for p in prompts]
    four = generate(
        client, text=prompts, rid=["r0", "r1"], sampling_params={"n": 2, "max_new_tokens": 4}
    )
    assert [item["meta_info"]["prompt_tokens"] for item in four] == [
        lengths[0],
        lengths[0],
        lengths[1],
        lengths[1],
    ]
    ids = [item["meta_info"]["id"] for item in three + four]
    assert all(HEX32.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert not {"caller-rid", "r0", "r1"} & set(ids)


def test_fact_07_empty_body_is_a_semantic_400(client: httpx.Client) -> None:
    response = client.post("/generate", json={})
    assert response.status_code == 400
    assert response.json() == {
        "error": {"message": "Either text, input_ids or input_embeds should be provided."}
    }


def test_fact_08_contract_errors_are_serde_strings(client: httpx.Client) -> None:
    response = client.post("/generate", json={"text": "x", "sampling_params": {"seed": 1}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert isinstance(error, str)
    assert error.startswith("unknown field `seed`, expected one of `max_new_tokens`, `stop`, ")
    assert "`sampling_seed`" in error and error.endswith("`choice`")
    cases = [
        ({"max_new_tokens": "5"}, 'invalid type: string "5", expected i64'),
        ({"max_new_tokens": 1.5}, "invalid type: floating point `1.5`, expected i64"),
        ({"json_schema": {"type": "object"}}, "invalid type: map, expected a string"),
        ({"temperature": "hot"}, 'invalid type: string "hot", expected f64'),
    ]
    for params, message in cases:
        response = client.post("/generate", json={"text": "x", "sampling_params": params})
        assert response.status_code == 400
        assert response.json() == {"error": message}
    stream_yes = client.post("/generate", json={"text": "x", "stream": "yes"})
    assert stream_yes.json() == {"error": 'invalid type: string "yes", expected a boolean'}
    ignored = generate(client, text="x", no_such_field=1, sampling_params={"max_new_tokens": 1})
    assert ignored["meta_info"]["completion_tokens"] == 1
    nulls = generate(client, text="x", sampling_params={"max_new_tokens": 2, "top_p": None})
    assert nulls["meta_info"]["completion_tokens"] == 2


def test_fact_09_range_violations_are_semantic_400s(client: httpx.Client) -> None:
    cases = [
        ({"top_p": 0}, "top_p must be in (0, 1], got 0.0."),
        ({"temperature": -1}, "temperature must be non-negative, got -1.0."),
        (
            {"regex": "a+", "json_schema": "{}"},
            "Only one of json_schema, regex, ebnf, or structural_tag can be set.",
        ),
        ({"max_new_tokens": -1}, "max_new_tokens must be at least 0, got -1."),
    ]
    for params, message in cases:
        response = client.post("/generate", json={"text": "x", "sampling_params": params})
        assert response.status_code == 400
        assert response.json() == {"error": {"message": message}}


def test_fact_10_stream_framing_is_cumulative(client: httpx.Client) -> None:
    body = {"text": "Stream me", "stream": True, "sampling_params": {**GREEDY, "max_new_tokens": 6}}
    response, payloads = stream(client, "/generate", body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    chunks = data_chunks(payloads)
    assert len(chunks) >= 2
    full = generate(client, text="Stream me", sampling_params={**GREEDY, "max_new_tokens": 6})
    for earlier, later in zip(chunks, chunks[1:], strict=False):
        assert later["text"].startswith(earlier["text"])
        assert later["output_ids"][: len(earlier["output_ids"])] == earlier["output_ids"]
    for chunk in chunks[:-1]:
        assert chunk["meta_info"]["finish_reason"] is None
        assert "e2e_latency" not in chunk["meta_info"]
        assert "index" not in chunk
    last = chunks[-1]
    assert last["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]
    assert "e2e_latency" in last["meta_info"]
    assert (last["text"], last["output_ids"]) == (full["text"], full["output_ids"])
    # The first chunk says when the answer started going out; the last repeats it (as real).
    sent = chunks[0]["meta_info"]["response_sent_to_client_ts"]
    assert all("response_sent_to_client_ts" not in c["meta_info"] for c in chunks[1:-1])
    assert last["meta_info"]["response_sent_to_client_ts"] == sent
    assert chunks[0]["meta_info"]["completion_tokens"] == 1


def test_fact_11_incremental_chunks_concatenate_to_the_full_text(
    incr_server: FakeSGLangServer,
) -> None:
    params = {**GREEDY, "max_new_tokens": 12, "stop": " the"}
    with httpx.Client(base_url=incr_server.url) as c:
        full = generate(c, text="Incremental", sampling_params=params)
        _, payloads = stream(
            c, "/generate", {"text": "Incremental", "stream": True, "sampling_params": params}
        )
    chunks = data_chunks(payloads)
    assert "".join(ch["text"] for ch in chunks) == full["text"]
    assert [i for ch in chunks for i in ch["output_ids"]] == full["output_ids"]
    assert [ch["meta_info"]["completion_tokens"] for ch in chunks] == list(
        range(1, len(full["output_ids"]) + 1)
    )


def test_fact_12_batch_and_n_streams_carry_a_flat_index(client: httpx.Client) -> None:
    body = {
        "text": ["p zero", "p one"],
        "stream": True,
        "sampling_params": {"n": 2, "max_new_tokens": 3},
    }
    _, payloads = stream(client, "/generate", body)
    chunks = data_chunks(payloads)
    assert {c["index"] for c in chunks} == {0, 1, 2, 3}
    finals = [c for c in chunks if c["meta_info"]["finish_reason"] is not None]
    assert sorted(c["index"] for c in finals) == [0, 1, 2, 3]
    single = data_chunks(stream(client, "/generate", {"text": "one", "stream": True})[1])
    assert all("index" not in c for c in single)


def test_fact_13_semantic_error_in_a_stream_is_a_200_error_event(client: httpx.Client) -> None:
    response, payloads = stream(client, "/generate", {"stream": True})
    assert response.status_code == 200
    assert payloads == [
        json.dumps(
            {
                "error": {
                    "message": "Either text, input_ids or input_embeds should be provided.",
                    "type": "invalid_request_error",
                    "code": 400,
                    "retryable": False,
                }
            },
            separators=(",", ":"),
        ),
        "[DONE]",
    ]


def test_fact_14_queue_full_is_503_or_an_abort_chunk(
    server: FakeSGLangServer, client: httpx.Client
) -> None:
    server.app.faults.fail_next(1, "503")
    response = client.post("/generate", json={"text": "busy"})
    assert response.status_code == 503
    assert response.json() == {
        "object": "error",
        "message": "The request queue is full.",
        "type": "503",
        "param": None,
        "code": 503,
    }
    server.app.faults.fail_next(1, "503")
    response, payloads = stream(client, "/generate", {"text": "busy", "stream": True})
    assert response.status_code == 200
    chunks = data_chunks(payloads)
    assert len(chunks) == 1
    assert chunks[0]["meta_info"]["finish_reason"] == {
        "type": "abort",
        "status_code": 503,
        "message": "The request queue is full.",
    }


@pytest.mark.anyio
async def test_fact_15_abort_request_ends_a_running_request_with_partial_text() -> None:
    async with FakeSGLangServer(latency_per_token=0.02) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=20) as c:
            results: dict[str, Any] = {}

            async def run() -> None:
                body = {
                    "text": "long job",
                    "rid": "job-1",
                    "sampling_params": {"max_new_tokens": 400, "ignore_eos": True},
                }
                results["response"] = await c.post("/generate", json=body)

            async with anyio.create_task_group() as group:
                group.start_soon(run)
                for _ in range(500):
                    if "job-1" in srv.app.engine.inflight:
                        break
                    await anyio.sleep(0.01)
                await anyio.sleep(0.1)  # let it produce a few tokens
                again = await c.post("/generate", json={"text": "x", "rid": "job-1"})
                assert again.json() == {
                    "error": {"message": "Duplicate request ID detected: job-1"}
                }
                aborted = await c.post("/abort_request", json={"rid": "job-1"})
                assert aborted.status_code == 200
                assert aborted.content == b""
            response = results["response"]
    assert response.status_code == 200
    body = response.json()
    assert body["meta_info"]["finish_reason"] == {
        "type": "abort",
        "message": "Aborted",
        "status_code": None,
        "err_type": None,
    }
    assert 0 < body["meta_info"]["completion_tokens"] < 400
    assert body["text"] == TOKENIZER.decode(body["output_ids"])


def test_fact_16_api_key_guards_everything_but_health_ready_metrics() -> None:
    with (
        FakeSGLangServer(api_key="sk-test", enable_metrics=True) as srv,
        httpx.Client(base_url=srv.url) as c,
    ):
        for path, method in [
            ("/generate", "POST"),
            ("/v1/models", "GET"),
            ("/v1/chat/completions", "POST"),
            ("/model_info", "GET"),
        ]:
            response = c.request(method, path, json={"text": "x"})
            assert response.status_code == 401, path
            assert response.json() == {"error": "Unauthorized"}
        wrong = c.post("/generate", json={"text": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        basic = c.post("/generate", json={"text": "x"}, headers={"Authorization": "Basic sk-test"})
        assert basic.status_code == 401
        for scheme in ("Bearer", "bearer", "BEARER"):
            ok = c.post(
                "/generate",
                json={"text": "x", "sampling_params": {"max_new_tokens": 1}},
                headers={"Authorization": f"{scheme} sk-test"},
            )
            assert ok.status_code == 200
        for path in ("/health", "/health_generate", "/ready", "/metrics"):
            assert c.get(path).status_code == 200, path


def test_fact_17_health_is_empty_200_and_503_while_starting(client: httpx.Client) -> None:
    for path in ("/health", "/health_generate"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.content == b""
    with FakeSGLangServer(startup_delay=0.4) as srv, httpx.Client(base_url=srv.url) as c:
        starting = c.get("/health")
        assert starting.status_code == 503
        assert starting.content == b""
        assert c.get("/health_generate").status_code == 503
        for _ in range(200):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.02)
        ready = c.get("/health")
        assert ready.status_code == 200
        assert ready.content == b""


def test_fact_18_model_info_and_server_info(server: FakeSGLangServer, client: httpx.Client) -> None:
    for path in ("/model_info", "/get_model_info"):
        info = client.get(path).json()
        assert info["model_path"] == "fake/sglang-tiny"
        assert info["served_model_name"] == "fake/sglang-tiny"
        assert info["tokenizer_path"] == "fake/sglang-tiny"
        assert info["is_generation"] is True
        assert info["weight_version"] == "default"
    for path in ("/server_info", "/get_server_info"):
        info = client.get(path).json()
        assert isinstance(info["version"], str) and info["version"]
        assert isinstance(info["internal_states"], list) and info["internal_states"]
        assert info["incremental_streaming_output"] is False
        # A server argument: null unless launched with --context-length (as real SGLang).
        assert info["context_length"] is None
        assert info["port"] == int(server.url.rsplit(":", 1)[1])


def test_fact_19_v1_models_lists_the_served_model(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == "fake/sglang-tiny"
    assert card["object"] == "model"
    assert card["owned_by"] == "sglang"
    assert card["root"] == "fake/sglang-tiny"
    assert card["parent"] is None
    assert card["max_model_len"] == 4096
    assert isinstance(card["created"], int)
    assert client.get("/v1/models/fake/sglang-tiny").json()["id"] == "fake/sglang-tiny"
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "The model 'nope' does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_fact_20_flush_cache_returns_text_without_a_content_type(client: httpx.Client) -> None:
    for method in ("POST", "GET"):
        response = client.request(method, "/flush_cache")
        assert response.status_code == 200
        # A bare Response in SGLang 0.5.23: text, but no content type at all (recorded).
        assert "content-type" not in response.headers
        assert response.text.startswith("Cache flushed.")
