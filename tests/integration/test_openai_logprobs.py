"""OpenAI logprobs and echo with the official ``openai`` SDK: on the server under test, through
the proxy (cached under their own key, replayed exactly), and typed in ``SGLangClient``."""

from __future__ import annotations

import uuid

import pytest

from sglang_client import SGLangClient

openai = pytest.importorskip("openai")

MESSAGES = [{"role": "user", "content": "Say something."}]


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.mark.parametrize("target", ["server", "proxy"])
def test_chat_logprobs_whole_and_streamed(target: str, sglang_url: str, proxy_url: str) -> None:
    client = _client(sglang_url if target == "server" else proxy_url)
    content = [{"role": "user", "content": f"logprobs {uuid.uuid4().hex}"}]
    try:
        whole = client.chat.completions.create(
            model="default",
            messages=content,
            max_tokens=4,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
        )
        choice = whole.choices[0]
        assert choice.logprobs is not None and choice.logprobs.content
        assert len(choice.logprobs.content) == whole.usage.completion_tokens
        for entry in choice.logprobs.content:
            assert isinstance(entry.token, str) and entry.logprob <= 0
            assert bytes(entry.bytes or []).decode("utf-8", "replace") is not None
            assert len(entry.top_logprobs) == 2
        streamed = client.chat.completions.create(
            model="default",
            messages=MESSAGES,
            max_tokens=4,
            temperature=0,
            logprobs=True,
            top_logprobs=1,
            stream=True,
        )
        entries = [
            e
            for chunk in streamed
            for c in chunk.choices
            if c.logprobs is not None and c.logprobs.content
            for e in c.logprobs.content
        ]
        assert entries and all(len(e.top_logprobs) == 1 for e in entries)
    finally:
        client.close()


# On the fake, greedy "Once upon 000020" generates EOS as its third and last allowed token.
@pytest.mark.parametrize("fixed", [None, "Once upon 000020"], ids=["random", "eos-at-limit"])
@pytest.mark.parametrize("target", ["server", "proxy"])
def test_completions_logprobs_and_echo(
    target: str, fixed: str | None, sglang_url: str, proxy_url: str
) -> None:
    client = _client(sglang_url if target == "server" else proxy_url)
    prompt = fixed or f"Once upon {uuid.uuid4().hex[:6]}"
    try:
        done = client.completions.create(
            model="default", prompt=prompt, max_tokens=3, temperature=0, logprobs=2
        )
        logprobs = done.choices[0].logprobs
        assert logprobs is not None
        n = done.usage.completion_tokens
        assert len(logprobs.tokens) == len(logprobs.token_logprobs) == n
        assert len(logprobs.top_logprobs) == n and all(len(t) <= 2 for t in logprobs.top_logprobs)
        text, tokens = done.choices[0].text, logprobs.tokens
        if "".join(tokens) != text:
            # Greedy may end on EOS within 3 tokens, finishing "stop", or "length" when EOS was
            # the last allowed token (SGLang checks the length first): the EOS token has a
            # logprob entry (it was generated) but no text.
            assert "".join(tokens[:-1]) == text
        echoed = client.completions.create(
            model="default", prompt=prompt, max_tokens=2, temperature=0, echo=True
        )
        assert echoed.choices[0].text.startswith(prompt)
        pieces = client.completions.create(
            model="default", prompt=prompt, max_tokens=3, temperature=0, logprobs=1, stream=True
        )
        tokens = [t for p in pieces for c in p.choices if c.logprobs for t in c.logprobs.tokens]
        assert tokens
    finally:
        client.close()


def test_the_proxy_replays_logprobs_exactly(proxy_url: str) -> None:
    client = _client(proxy_url)
    messages = [{"role": "user", "content": f"replay {uuid.uuid4().hex}"}]
    asks = {"model": "default", "messages": messages, "max_tokens": 3, "temperature": 0.7}
    try:
        miss = client.chat.completions.with_raw_response.create(
            **asks, logprobs=True, top_logprobs=2
        )
        hit = client.chat.completions.with_raw_response.create(
            **asks, logprobs=True, top_logprobs=2
        )
        plain = client.chat.completions.with_raw_response.create(**asks)
        assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
        assert plain.headers["x-cache"] == "MISS"  # logprob requests have their own key
        first, again = miss.parse().choices[0], hit.parse().choices[0]
        assert first.logprobs == again.logprobs and first.message == again.message
        replay = client.chat.completions.create(**asks, logprobs=True, top_logprobs=2, stream=True)
        entries = [
            e for c in replay for ch in c.choices if ch.logprobs for e in ch.logprobs.content
        ]
        assert entries == list(first.logprobs.content)
    finally:
        client.close()


@pytest.mark.anyio
async def test_sglang_client_types_logprobs(sglang_url: str) -> None:
    async with SGLangClient(sglang_url) as client:
        chat = await client.chat_completion(
            MESSAGES, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2
        )
        completion = await client.completion("Once upon", max_tokens=3, logprobs=2)
    logprobs = chat.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert isinstance(logprobs.content[0].token, str)
    assert len(logprobs.content[0].top_logprobs) == 2
    typed = completion.choices[0].logprobs
    assert typed is not None and typed.tokens and typed.text_offset[0] == -1


@pytest.mark.gateway_differs(
    "re-serializes requests into its own types, dropping fields it does not know (logit_bias)"
)
def test_logit_bias_forces_and_bans_tokens(sglang_url: str) -> None:
    import httpx

    def generate(bias: dict[str, float] | None) -> list[int]:
        params = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}
        if bias is not None:
            params["logit_bias"] = bias
        body = {"text": "Bias me", "sampling_params": params}
        response = httpx.post(sglang_url + "/generate", json=body, timeout=60)
        assert response.status_code == 200, response.text
        ids: list[int] = response.json()["output_ids"]
        return ids

    plain = generate(None)
    forced_token = (plain[0] + 7) % 1000 + 100  # some ordinary token of either vocabulary
    assert generate({str(forced_token): 100}) == [forced_token] * 4
    banned = generate({str(t): -100 for t in set(plain)})
    assert not set(banned) & set(plain)
    client = _client(sglang_url)
    try:
        text = client.completions.create(
            model="default",
            prompt="Bias me",
            max_tokens=3,
            temperature=0,
            logit_bias={str(forced_token): 100},
        )
        assert text.usage.completion_tokens == 3
    finally:
        client.close()


def test_logprob_start_len_beyond_the_input_is_refused(sglang_url: str) -> None:
    import json

    import httpx

    body = {
        "text": "Hello world",
        "sampling_params": {"max_new_tokens": 2},
        "return_logprob": True,
        "logprob_start_len": 500,
    }
    whole = httpx.post(sglang_url + "/generate", json=body, timeout=60)
    assert whole.status_code == 400
    assert "logprob_start_len" in whole.json()["error"]["message"]
    streamed = httpx.post(sglang_url + "/generate", json={**body, "stream": True}, timeout=60)
    assert streamed.status_code == 200
    events = [json.loads(b[6:]) for b in streamed.text.split("\n\n") if b.startswith("data: {")]
    finish = events[-1]["meta_info"]["finish_reason"]
    assert (finish["type"], finish["status_code"]) == ("abort", 400)
    assert streamed.text.rstrip().endswith("data: [DONE]")
    ignored = httpx.post(sglang_url + "/generate", json={**body, "return_logprob": False})
    assert ignored.status_code == 200  # without logprobs, the start is not checked
