"""Facts 21-27 of docs/sglang-protocol.md §11: sessions, OpenAI routes, tokenizer routes.

Also checks that the official ``openai`` SDK parses the fake server's responses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from sglang_client.testing import FakeSGLangServer
from sglang_client.testing._tokenizer import EOS_TOKEN_ID, TOKENIZER

HEX32 = re.compile(r"^[0-9a-f]{32}$")
CHAT = {"model": "whatever", "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSGLangServer]:
    with FakeSGLangServer(seed=7) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: FakeSGLangServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streaming request; check the framing; return the JSON events before [DONE]."""
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    parts = raw.split(b"\n\n")[:-1]
    assert all(p.startswith(b"data: ") for p in parts)
    assert parts.count(b"data: [DONE]") == 1
    return [json.loads(p[len(b"data: ") :]) for p in parts[:-1]]


def post_ok(client: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


# -- sessions ------------------------------------------------------------------------------------


def test_fact_21_open_and_close_session(client: httpx.Client) -> None:
    opened = client.post("/open_session", json={"capacity_of_str_len": 1000})
    assert opened.status_code == 200
    assert HEX32.match(opened.json())
    named = client.post("/open_session", json={"capacity_of_str_len": 10, "session_id": "mine"})
    assert named.json() == "mine"
    again = client.post("/open_session", json={"capacity_of_str_len": 10, "session_id": "mine"})
    assert again.status_code == 400
    assert again.json() == {
        "error": {
            "message": "Failed to open the session. Check if a session with the same id is "
            "still open."
        }
    }
    missing = client.post("/open_session", json={"session_id": "other"})
    assert missing.status_code == 400
    assert missing.json()["type"] == "Bad Request"
    assert "capacity_of_str_len" in missing.json()["message"]
    for session_id in ("mine", opened.json(), "never-opened"):
        closed = client.post("/close_session", json={"session_id": session_id})
        assert closed.status_code == 200
        assert closed.content == b""


def test_fact_22_session_history_branching_replace_offset_drop(client: httpx.Client) -> None:
    sid = post_ok(client, "/open_session", {"capacity_of_str_len": 4096})
    params = {"max_new_tokens": 5, "ignore_eos": True}

    def turn(text: str, own_rid: str, **session: Any) -> Any:
        body = {
            "text": text,
            "rid": own_rid,
            "sampling_params": params,
            "session_params": {"id": sid, **session},
            "return_prompt_token_ids": True,
        }
        return client.post("/generate", json=body)

    a = turn("Hello there", "a1").json()
    assert a["meta_info"]["id"] == "a1"
    a_context = a["prompt_token_ids"] + a["output_ids"]
    new = TOKENIZER.encode(" And then")
    b = turn(" And then", "b1", rid="a1").json()
    assert b["prompt_token_ids"] == a_context + new
    assert b["meta_info"]["prompt_tokens"] == len(a_context) + len(new)
    fresh = turn(" And then", "root2").json()
    assert fresh["meta_info"]["prompt_tokens"] == len(new)
    sibling = turn(" Or else", "b2", rid="a1")
    assert sibling.status_code == 200  # branching: a second child of a1
    offset = turn(" And then", "c1", rid="a1", offset=2).json()
    assert offset["prompt_token_ids"] == a_context[:2] + new
    dropped = turn(" And then", "c2", rid="a1", drop_previous_output=True).json()
    assert dropped["prompt_token_ids"] == a["prompt_token_ids"] + new

    unknown_parent = turn("x", "d1", rid="nope")
    assert unknown_parent.status_code == 400
    assert unknown_parent.json() == {"error": {"message": "Invalid request session id"}}
    replaced = turn(" Instead", "e1", rid="a1", replace=True)
    assert replaced.status_code == 200
    gone = turn(" more", "e2", rid="b1")  # b1 was a child of a1: replace discarded it
    assert gone.json() == {"error": {"message": "Invalid request session id"}}
    assert turn(" more", "e3", rid="e1").status_code == 200

    unknown = client.post(
        "/generate", json={"text": "x", "session_params": {"id": "no-such-session"}}
    )
    assert unknown.status_code == 400
    assert unknown.json() == {
        "error": {"message": "Invalid request: session id no-such-session does not exist"}
    }
    client.post("/close_session", json={"session_id": sid})
    closed = turn("x", "f1", rid="a1")
    assert closed.status_code == 400
    assert closed.json() == {
        "error": {"message": f"Invalid request: session id {sid} does not exist"}
    }


# -- OpenAI routes -------------------------------------------------------------------------------


def test_fact_23_chat_completion_shape(client: httpx.Client) -> None:
    body = post_ok(client, "/v1/chat/completions", {**CHAT, "max_tokens": 8, "temperature": 0})
    assert body["object"] == "chat.completion"
    assert HEX32.match(body["id"])
    assert body["model"] == "whatever"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert "matched_stop" in choice
    assert choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens_details"] is None
    assert (
        body["usage"]["completion_tokens"] + body["usage"]["prompt_tokens"]
        == (body["usage"]["total_tokens"])
    )
    completion = body["usage"]["completion_tokens"]
    versions = [{"version": "default", "start": 0, "end": completion}]
    assert body["metadata"] == {"weight_version": "default", "weight_versions": versions}
    assert "tool_calls" not in choice["message"]  # SGLang leaves it out without tool calls
    empty = post_ok(client, "/v1/chat/completions", {**CHAT, "max_tokens": 0})
    assert empty["choices"][0]["message"]["content"] == ""
    with FakeSGLangServer(enable_cache_report=True) as srv, httpx.Client(base_url=srv.url) as c:
        post_ok(c, "/v1/chat/completions", {**CHAT, "max_tokens": 2})
        again = post_ok(c, "/v1/chat/completions", {**CHAT, "max_tokens": 2})
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    eos_hits = [
        post_ok(
            client,
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": f"q{i}"}], "temperature": 0},
        )["choices"][0]
        for i in range(40)
    ]
    stopped = [c for c in eos_hits if c["finish_reason"] == "stop"]
    assert stopped and all(c["matched_stop"] == EOS_TOKEN_ID for c in stopped)


def test_fact_24_chat_stream_role_content_finish_usage(client: httpx.Client) -> None:
    body = {**CHAT, "max_tokens": 4, "temperature": 0, "stream": True}
    chunks = events(client, "/v1/chat/completions", body)
    assert chunks[0]["choices"][0]["delta"] == {
        "reasoning_content": None,
        "role": "assistant",
        "content": "",
    }
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finish = chunks[-1]["choices"][0]
    assert finish["delta"] == {"reasoning_content": None}
    assert finish["finish_reason"] == "length"
    content = chunks[1:-1]
    assert content and all(c["choices"][0]["finish_reason"] is None for c in content)
    assert all("usage" not in c for c in chunks)
    full = post_ok(client, "/v1/chat/completions", {**CHAT, "max_tokens": 4, "temperature": 0})
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text == full["choices"][0]["message"]["content"]
    with_usage = events(
        client, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}}
    )
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"]["completion_tokens"] == 4
    assert with_usage[-2]["choices"][0]["finish_reason"] == "length"


def test_fact_25_completion_stream_finishes_on_the_last_text_chunk(client: httpx.Client) -> None:
    body = {"model": "m", "prompt": "Once", "max_tokens": 5, "temperature": 0, "stream": True}
    chunks = events(client, "/v1/completions", body)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert all(c["usage"] is None for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + [
        "length"
    ]
    full = post_ok(client, "/v1/completions", {**body, "stream": False})
    assert full["object"] == "text_completion"
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]
    assert full["usage"]["completion_tokens"] == 5
    default = post_ok(client, "/v1/completions", {"prompt": "Once", "ignore_eos": True})
    assert default["usage"]["completion_tokens"] == 16  # completions default max_tokens
    usage = events(client, "/v1/completions", {**body, "stream_options": {"include_usage": True}})
    assert usage[-1]["choices"] == [] and usage[-1]["usage"]["completion_tokens"] == 5
    assert "prompt_tokens_details" not in usage[-1]["usage"]


def test_fact_26_openai_errors_are_flat(client: httpx.Client) -> None:
    empty = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert empty.status_code == 400
    assert empty.json() == {
        "object": "error",
        "message": "Messages cannot be empty.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    for path in ("/v1/chat/completions", "/v1/completions"):
        wrong = client.post(path, content=json.dumps(CHAT), headers={"content-type": "text/plain"})
        assert wrong.status_code == 400
        body = wrong.json()
        assert body["object"] == "error" and body["code"] == 400
        assert "Unsupported Media Type: Only 'application/json' is allowed" in body["message"]
    too_long = client.post("/v1/completions", json={"prompt": "word " * 5000, "max_tokens": 4})
    assert too_long.status_code == 400
    assert too_long.json()["type"] == "BadRequestError"
    assert "context length" in too_long.json()["message"]


def test_fact_27_tokenize_and_detokenize(client: httpx.Client) -> None:
    for path in ("/tokenize", "/v1/tokenize"):
        body = post_ok(client, path, {"prompt": "The capital of France is"})
        assert body == {
            "tokens": TOKENIZER.encode("The capital of France is"),
            "count": len(TOKENIZER.encode("The capital of France is")),
            "max_model_len": 4096,
        }
    tokens = TOKENIZER.encode("héllo wörld")
    for path in ("/detokenize", "/v1/detokenize"):
        assert post_ok(client, path, {"tokens": tokens}) == {"text": "héllo wörld"}
    batch = post_ok(client, "/tokenize", {"prompt": ["a b", "c"]})
    assert batch["count"] == [len(t) for t in batch["tokens"]]
    assert post_ok(client, "/detokenize", {"tokens": batch["tokens"]}) == {"text": ["a b", "c"]}
    bad = client.post("/detokenize", json={"tokens": [TOKENIZER.vocab_size]})
    assert bad.status_code == 400


def test_openai_sdk_parses_every_route(server: FakeSGLangServer) -> None:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0) as oai:
        chat = oai.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=6, n=2
        )
        assert len(chat.choices) == 2
        assert all(isinstance(c.message.content, str) for c in chat.choices)
        assert chat.usage is not None and chat.usage.completion_tokens <= 12
        pieces = [
            chunk.choices[0].delta.content or ""
            for chunk in oai.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=6,
                temperature=0,
                stream=True,
            )
            if chunk.choices
        ]
        greedy = oai.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
            temperature=0,
        )
        assert "".join(pieces) == greedy.choices[0].message.content
        completion = oai.completions.create(model="default", prompt="Once", max_tokens=3)
        assert completion.choices[0].text
        assert [m.id for m in oai.models.list()] == ["fake/sglang-tiny"]
        with pytest.raises(openai.BadRequestError, match="Messages cannot be empty"):
            oai.chat.completions.create(model="default", messages=[])
