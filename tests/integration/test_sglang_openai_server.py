"""SGLang's own OpenAI-server HTTP checks, restated for any base URL.

What SGLang's ``test/srt/openai_server/basic/test_openai_server.py`` asks of its server, in
our words and with the official ``openai`` SDK: the completions matrix (echo x logprobs x list
prompt x n x token prompt, whole and streamed), the chat matrix (logprobs x n, whole and
streamed, one finish reason per choice), a penalty, the model list and retrieval. Each runs on
the server under test and through the proxy in front of it (which must relay and cache them
without changing what a client sees).

Left out, as they need what neither the fake nor a random-weight model has (see the README's
real-vs-fake table): ``regex`` and other grammar-constrained output (a grammar backend),
``continue_final_message`` answers that must start with a given JSON field (model quality),
the Responses API and rerank (other routes and model kinds).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NamedTuple

import httpx
import pytest

from .conftest import tokenize_url

openai = pytest.importorskip("openai")

PROMPT = "The capital of France is"
CHAT = [
    {"role": "system", "content": "You are a helpful AI assistant"},
    {"role": "user", "content": "What is the capital of France? Answer in a few words."},
]
TOKENS = 8  # SGLang's tests ask for 32; fewer keep the CPU run short and test the same


class Case(NamedTuple):
    """One completions case of SGLang's matrix."""

    echo: bool
    logprobs: int | None
    use_list: bool  # two prompts
    n: int
    token_input: bool  # the prompt as ids


IDS_422 = pytest.mark.gateway_differs("takes no token-id prompt on /v1/completions (a 422)")
COMPLETION_CASES = [
    pytest.param(
        case,
        id="echo={}-logprobs={}-list={}-n={}-ids={}".format(*case),
        marks=[IDS_422] if case.token_input else [],
    )
    for case in itertools.starmap(
        Case, itertools.product([False, True], [None, 5], [False, True], [1, 2], [False, True])
    )
]
CHAT_CASES = [
    pytest.param(lp, n, id=f"logprobs={lp}-n={n}") for lp, n in itertools.product([None, 5], [1, 2])
]


@pytest.fixture(params=["server", "proxy"])
def base(request: pytest.FixtureRequest, sglang_url: str, proxy_url: str) -> str:
    return sglang_url if request.param == "server" else proxy_url


@pytest.fixture
def client(base: str) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120)
    yield sdk
    sdk.close()


def _prompt_ids(base: str) -> list[int]:
    """The prompt's ids as the server tokenizes a text prompt (special tokens included)."""
    response = httpx.post(tokenize_url(base) + "/tokenize", json={"prompt": PROMPT}, timeout=30)
    response.raise_for_status()
    tokens: list[int] = response.json()["tokens"]
    return tokens


def _prompt_arg(base: str, case: Case) -> tuple[object, int, int]:
    """The ``prompt`` argument, its prompt token count, and the number of prompts."""
    ids = _prompt_ids(base)
    one: object = ids if case.token_input else PROMPT
    if case.use_list:
        return [one, one], 2 * len(ids), 2
    return one, len(ids), 1


@pytest.mark.parametrize("case", COMPLETION_CASES)
def test_completion_matrix(client: openai.OpenAI, base: str, case: Case) -> None:
    echo, logprobs, _, n, _ = case
    prompt, prompt_tokens, prompts = _prompt_arg(base, case)
    response = client.completions.create(
        model="default",
        prompt=prompt,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=TOKENS,
        echo=echo,
        logprobs=logprobs,
        n=n,
    )
    assert len(response.choices) == prompts * n
    first = response.choices[0]
    if echo:
        assert first.text.startswith(PROMPT)
    if logprobs:
        assert first.logprobs is not None and first.logprobs.tokens
        assert isinstance(first.logprobs.tokens[0], str)
        tops = first.logprobs.top_logprobs
        assert tops is not None and isinstance(tops[1], dict) and len(tops[1]) > 0
        if not echo:  # with echo the first entry is the prompt's first token: no logprob
            assert first.logprobs.token_logprobs and first.logprobs.token_logprobs[0]
    assert response.id and response.created
    assert response.usage is not None
    assert response.usage.prompt_tokens == prompt_tokens
    assert response.usage.completion_tokens > 0 and response.usage.total_tokens > 0


@pytest.mark.parametrize("case", COMPLETION_CASES)
def test_completion_stream_matrix(client: openai.OpenAI, base: str, case: Case) -> None:
    echo, logprobs, _, n, _ = case
    prompt, _, prompts = _prompt_arg(base, case)
    stream = client.completions.create(
        model="default",
        prompt=prompt,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=TOKENS,
        echo=echo,
        logprobs=logprobs,
        n=n,
        stream=True,
        stream_options={"include_usage": True},
    )
    seen: set[int] = set()
    usage_chunks = 0
    for chunk in stream:
        if chunk.usage is not None:
            usage_chunks += 1
            assert chunk.usage.prompt_tokens > 0 and chunk.usage.completion_tokens > 0
            assert chunk.usage.total_tokens > 0
            continue
        choice = chunk.choices[0]
        first = choice.index not in seen
        if logprobs:
            assert choice.logprobs is not None and choice.logprobs.tokens
            assert isinstance(choice.logprobs.tokens[0], str)
            if not (first and echo):
                tops = choice.logprobs.top_logprobs
                assert tops is not None and isinstance(tops[0], dict) and len(tops[0]) > 0
        if first and echo:
            assert choice.text.startswith(PROMPT)
        seen.add(choice.index)
        assert chunk.id and chunk.created
    assert seen == set(range(prompts * n))  # every choice streamed
    assert usage_chunks == 1


@pytest.mark.parametrize(("logprobs", "n"), CHAT_CASES)
def test_chat_completion_matrix(client: openai.OpenAI, logprobs: int | None, n: int) -> None:
    response = client.chat.completions.create(
        model="default",
        messages=CHAT,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=TOKENS,
        logprobs=bool(logprobs),
        top_logprobs=logprobs,
        n=n,
    )
    if logprobs:
        content = response.choices[0].logprobs
        assert content is not None and content.content
        assert isinstance(content.content[0].top_logprobs[0].token, str)
        assert len(content.content[0].top_logprobs) == logprobs
    assert len(response.choices) == n
    message = response.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    assert response.id and response.created
    assert response.usage is not None
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    assert response.usage.total_tokens > 0


@pytest.mark.parametrize(("logprobs", "n"), CHAT_CASES)
def test_chat_completion_stream_matrix(client: openai.OpenAI, logprobs: int | None, n: int) -> None:
    stream = client.chat.completions.create(
        model="default",
        messages=CHAT[:1] + [{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=TOKENS,
        logprobs=bool(logprobs),
        top_logprobs=logprobs,
        n=n,
        stream=True,
        stream_options={"include_usage": True},
    )
    started: set[int] = set()
    finishes = dict.fromkeys(range(n), 0)
    for chunk in stream:
        if chunk.usage is not None:
            assert chunk.usage.prompt_tokens > 0 and chunk.usage.completion_tokens > 0
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        finished = finishes[choice.index] > 0
        if choice.finish_reason is not None:
            finishes[choice.index] += 1
        if choice.index not in started:
            assert delta.role == "assistant"  # the first chunk of each choice names the role
            started.add(choice.index)
            continue
        if logprobs and not finished and choice.finish_reason is None:
            assert choice.logprobs is not None and choice.logprobs.content
            tops = choice.logprobs.content[0].top_logprobs
            assert isinstance(tops, list) and isinstance(tops[0].token, str)
            assert len(tops) == logprobs
        assert isinstance(delta.content, str) or choice.finish_reason
        assert chunk.id and chunk.created
    assert started == set(range(n))
    assert finishes == dict.fromkeys(range(n), 1)  # exactly one finish reason per choice


def test_frequency_penalty_is_accepted(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="default",
        messages=[*CHAT[:1], {"role": "user", "content": "Introduce the capital of France."}],
        temperature=0,
        max_tokens=TOKENS,
        frequency_penalty=1.0,
    )
    assert isinstance(response.choices[0].message.content, str)


@pytest.mark.gateway_differs("its /v1/models carries no max_model_len")
def test_model_list_and_retrieve(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert len(models) == 1
    model = models[0]
    assert isinstance(getattr(model, "max_model_len", None), int)
    retrieved = client.models.retrieve(model.id)
    assert retrieved.id == model.id and getattr(retrieved, "root", None) == model.id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("non-existent-model")
