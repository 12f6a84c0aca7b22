"""SessionManager over real loopback HTTP against the fake server process (or SGLANG_URL).

Assertions stay within what a real SGLang guarantees: prompts carry the history, the radix
cache serves a fork's shared prefix (``cached_tokens > 0``), server sessions chain by rid.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sglang_client import BadRequestError, GenerateResponse, SessionNotFoundError, SGLangClient
from sglang_client.sessions import SessionManager

pytestmark = pytest.mark.anyio

GREEDY = {"temperature": 0, "max_new_tokens": 8}


@contextlib.asynccontextmanager
async def managed(url: str, **options: Any) -> AsyncIterator[SessionManager]:
    async with SGLangClient(url) as client, SessionManager(client, **options) as manager:
        yield manager


async def test_text_session_turns_and_fork_cache(sglang_url: str) -> None:
    async with managed(sglang_url) as manager:
        s = await manager.create_session("You answer questions about geography.\n")
        r1 = await manager.generate(s.id, "Q: What is the capital of France?\nA:", **GREEDY)
        r2 = await manager.generate(s.id, "\nQ: And of Italy?\nA:", **GREEDY)
        kid = await manager.fork_session(s.id)
        r3 = await manager.generate(kid.id, "\nQ: And of Spain?\nA:", **GREEDY)
    m1, m2, m3 = r1.meta_info, r2.meta_info, r3.meta_info
    assert m2.prompt_tokens > m1.prompt_tokens
    assert m2.cached_tokens > 0
    assert m3.cached_tokens > 0  # a fork's first turn reuses the shared history
    assert [t.output for t in s.history] == [r1.text, r2.text]
    assert len(kid.history) == 3
    assert kid.parent_id == s.id


async def test_streamed_turn_is_recorded(sglang_url: str) -> None:
    async with managed(sglang_url) as manager:
        s = await manager.create_session("Story time. ")
        async with manager.generate_stream(s.id, "Once upon a time", **GREEDY) as stream:
            chunks = [chunk async for chunk in stream]
        r = await manager.generate(s.id, " The end?", **GREEDY)
    assert chunks[-1].finish_reason is not None
    assert s.history[0].output == "".join(c.delta for c in chunks)
    assert r.meta_info.cached_tokens > 0


@pytest.mark.gateway_differs("routes no /open_session (test_gateway.py checks the error)")
async def test_server_sessions(sglang_url: str) -> None:
    async with managed(sglang_url, server_sessions=True) as manager:
        s = await manager.create_session("System prompt. ")
        r1 = await manager.generate(s.id, "Hello there.", **GREEDY)
        r2 = await manager.generate(s.id, " Tell me more.", **GREEDY)
        alone = await manager.client.generate(" Tell me more.", sampling_params=GREEDY)
        assert isinstance(alone, GenerateResponse)
        m1, m2 = r1.meta_info, r2.meta_info
        history = m1.prompt_tokens + m1.completion_tokens
        # SGLang drops a leading BOS of the new input when there is history.
        assert history + alone.meta_info.prompt_tokens - 1 <= m2.prompt_tokens
        assert m2.prompt_tokens <= history + alone.meta_info.prompt_tokens
        branches = await manager.fork_session(s.id, n=2)
        assert isinstance(branches, list)
        left, right = branches
        for branch in (left, right):
            r = await manager.generate(branch.id, " Go on.", **GREEDY)
            assert r.meta_info.prompt_tokens > m2.prompt_tokens + m2.completion_tokens
            assert r.meta_info.cached_tokens > 0
        server_id = s.server_session_id
        assert server_id is not None
        for session in (s, left, right):
            await manager.delete_session(session.id)
        with pytest.raises(SessionNotFoundError):
            await manager.generate(s.id, "x")
        with pytest.raises(BadRequestError):
            await manager.client.generate("x", session_params={"id": server_id})


async def test_chat_session(sglang_url: str) -> None:
    async with managed(sglang_url) as manager:
        s = await manager.create_session("You are terse.", chat=True)
        await manager.generate(s.id, "Hi!", max_new_tokens=6, temperature=0)
        await manager.generate(s.id, "Again?", max_new_tokens=6, temperature=0)
    m1, m2 = s.history[0].meta_info, s.history[1].meta_info
    assert m2.prompt_tokens > m1.prompt_tokens
    assert len(s.messages) == 5


# ---------------------------------------------------------------- token-exact vs text

SYSTEM = "You are a careful assistant. Answer in one short paragraph.\n" * 6
QUESTIONS = [f"\nQ{i}: tell me about the river and the city, part {i}.\nA:" for i in range(6)]
LONG = {"temperature": 0, "max_new_tokens": 24}


def reusable(before: GenerateResponse) -> int:
    """The context a turn continues: the last request's prompt and output, less a final stop
    token (not sent again). SGLang caches all of it but the last generated token."""
    meta = before.meta_info
    finish = meta.finish_reason
    eos = finish is not None and finish.type == "stop" and isinstance(finish.matched, int)
    return (meta.prompt_tokens or 0) + (meta.completion_tokens or 0) - int(eos)


async def _lost_per_turn(url: str, **options: Any) -> list[int]:
    """Reusable tokens the radix cache missed, for each turn after the first."""
    lost = []
    async with managed(url, **options) as manager:
        await manager.client.flush_cache()
        s = await manager.create_session(SYSTEM)
        before = await manager.generate(s.id, QUESTIONS[0], **LONG)
        for question in QUESTIONS[1:]:
            result = await manager.generate(s.id, question, **LONG)
            lost.append(reusable(before) - (result.meta_info.cached_tokens or 0))
            before = result
    return lost


@pytest.mark.gateway_differs(
    "routes no /tokenize: token-exact sessions take a local tokenizer there (test_gateway.py)"
)
async def test_token_exact_turns_hit_every_earlier_token_and_text_turns_do_not(
    sglang_url: str,
) -> None:
    exact = await _lost_per_turn(sglang_url, token_exact=True)
    text = await _lost_per_turn(sglang_url, token_exact=False)
    assert all(0 <= n <= 1 for n in exact), exact  # at most the last generated token
    assert any(n > 1 for n in text), text  # re-tokenized seams and answers miss


@pytest.mark.gateway_differs(
    "routes no /tokenize: token-exact sessions take a local tokenizer there (test_gateway.py)"
)
async def test_token_exact_forks_reuse_the_parent_and_streams_keep_ids(sglang_url: str) -> None:
    async with managed(sglang_url, token_exact=True) as manager:
        await manager.client.flush_cache()
        root = await manager.create_session(SYSTEM)
        async with manager.generate_stream(root.id, QUESTIONS[0], **LONG) as stream:
            chunks = [chunk async for chunk in stream]
        assert root.token_ids is not None
        assert root.history[0].output_ids == tuple(chunks[-1].output_ids)
        context = len(root.token_ids)
        kids = await manager.fork_session(root.id, n=2)
        assert isinstance(kids, list)
        for i, kid in enumerate(kids):
            r = await manager.generate(kid.id, QUESTIONS[1 + i], temperature=0.8, max_new_tokens=8)
            assert (r.meta_info.cached_tokens or 0) >= context - 1
            assert kid.token_ids is not None and kid.token_ids[:context] == root.token_ids
