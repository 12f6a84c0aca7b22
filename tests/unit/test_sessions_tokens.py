"""Token-exact sessions: exact request bodies on the mock, and the fake's BPE-like seams."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from sglang_client import TokenizerUnavailable
from sglang_client.sessions import SessionManager
from sglang_client.testing._tokenizer import TOKENIZERS

from .test_sessions import MockSGLang, manager_for

pytestmark = pytest.mark.anyio


def ords(text: str) -> list[int]:
    return [ord(c) for c in text]


@pytest.fixture
def mock() -> MockSGLang:
    return MockSGLang()


# ---------------------------------------------------------------- request bodies (mock)


async def test_turns_send_the_exact_ids_and_tokenize_only_new_text(mock: MockSGLang) -> None:
    async with manager_for(mock, token_exact=None) as manager:
        s = await manager.create_session("SYS|")
        await manager.generate(s.id, "a", max_new_tokens=4)
        await manager.generate(s.id, "bc")
    tokenized = [(b["prompt"], b["add_special_tokens"]) for b in mock.requests("/tokenize")]
    # The first turn is tokenized whole, as the server would; later inputs alone.
    assert tokenized == [("SYS|a", True), ("bc", False)]
    sent = mock.requests("/generate")
    assert all("text" not in body for body in sent)
    first = [1, *ords("SYS|a")]
    assert sent[0]["input_ids"] == first
    assert sent[1]["input_ids"] == [*first, 1001, *ords("bc")]
    assert s.token_ids == (*first, 1001, *ords("bc"), 1002)
    assert s.prefix == "SYS|a<1>bc<2>"  # the text view of the same conversation
    assert [t.input_ids for t in s.history] == [tuple(first), tuple(ords("bc"))]
    assert repr(s).startswith(f"Session(id={s.id!r}, kind=tokens")


async def test_forks_share_turns_and_the_token_tree_follows(mock: MockSGLang) -> None:
    async with manager_for(mock, token_exact=True) as manager:
        s = await manager.create_session("S")
        await manager.generate(s.id, "a")
        kids = await manager.fork_session(s.id, n=2)
        assert isinstance(kids, list)
        left, right = kids
        assert left.history[0] is s.history[0]  # shared, not copied
        await manager.generate(left.id, "L")
        assert s.token_ids is not None and left.token_ids is not None
        assert left.token_ids[: len(s.token_ids)] == s.token_ids
        assert mock.requests("/generate")[-1]["input_ids"] == [*s.token_ids, ord("L")]
        sharing = dict(manager.token_tree.find_sharing_sessions(s.token_ids))
        assert set(sharing) == {s.id, left.id, right.id}
        await manager.delete_session(left.id)
        assert left.id not in dict(manager.token_tree.find_sharing_sessions(s.token_ids))


async def test_a_final_eos_is_left_out_and_a_stop_string_is_kept(mock: MockSGLang) -> None:
    async with manager_for(mock, token_exact=True) as manager:
        s = await manager.create_session("S")
        mock.finish = {"type": "stop", "matched": 1001}  # the EOS id it generated
        await manager.generate(s.id, "a")
        mock.finish = {"type": "stop", "matched": "\n"}
        await manager.generate(s.id, "b")
    assert s.history[0].output_ids == (1001,)  # what the server returned, unchanged
    assert s.token_ids == (1, *ords("Sa"), *ords("b"), 1002)


async def test_streamed_turns_keep_the_ids_and_aborts_change_nothing(mock: MockSGLang) -> None:
    async with manager_for(mock, token_exact=True) as manager:
        s = await manager.create_session("S")
        async with manager.generate_stream(s.id, "a") as stream:
            chunks = [chunk async for chunk in stream]
        assert chunks[-1].output_ids == [1001]
        ids = s.token_ids
        assert ids == (1, *ords("Sa"), 1001)
        mock.finish = {"type": "abort", "message": "aborted"}
        await manager.generate(s.id, "b")
        assert s.token_ids == ids and len(s.history) == 1
        mock.finish = {"type": "length", "length": 1}
        await manager.generate(s.id, "c")
    assert mock.requests("/generate")[-1]["input_ids"] == [*ids, ord("c")]


async def test_chat_and_server_sessions_are_not_token_exact(mock: MockSGLang) -> None:
    async with manager_for(mock, token_exact=None) as manager:
        chat = await manager.create_session("S", chat=True)
        assert not chat.token_exact and chat.token_ids is None
    with pytest.raises(ValueError, match="server sessions already keep"):
        async with manager_for(mock, token_exact=True, server_sessions=True):
            pass
    async with manager_for(mock, token_exact=None, server_sessions=True) as manager:
        s = await manager.create_session("S")
        await manager.generate(s.id, "a")
        assert not s.token_exact and "text" in mock.requests("/generate")[-1]


async def test_without_tokenize_auto_falls_back_to_text_and_true_raises(
    mock: MockSGLang, caplog: pytest.LogCaptureFixture
) -> None:
    mock.tokenize_status = 404
    async with manager_for(mock, token_exact=True) as manager:
        s = await manager.create_session("S")
        with pytest.raises(TokenizerUnavailable, match="no /tokenize route"):
            await manager.generate(s.id, "a")
        assert not s.history
    with caplog.at_level(logging.WARNING, logger="sglang_client.sessions"):
        async with manager_for(mock, token_exact=None) as manager:
            s = await manager.create_session("S")
            await manager.generate(s.id, "a")
            later = await manager.create_session("T")
    assert mock.requests("/generate")[-1]["text"] == "Sa"
    assert not s.token_exact and s.token_ids is None and not later.token_exact
    assert "continues as a text session" in caplog.text


async def test_a_server_without_output_ids_turns_the_session_to_text(
    mock: MockSGLang, caplog: pytest.LogCaptureFixture
) -> None:
    mock.output_ids = False
    with caplog.at_level(logging.WARNING, logger="sglang_client.sessions"):
        async with manager_for(mock, token_exact=True) as manager:
            s = await manager.create_session("S")
            await manager.generate(s.id, "a")
            await manager.generate(s.id, "b")
    assert s.token_ids is None
    assert mock.requests("/generate")[-1]["text"] == "Sa<1>b"
    assert "returned no output_ids" in caplog.text


class _ListTokenizer:
    """Like a ``transformers`` tokenizer: ``encode`` returns a list."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([7] if add_special_tokens else []) + ords(text)


class _Encoding:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids


class _ObjectTokenizer:
    """Like ``tokenizers.Tokenizer``: ``encode`` returns an object with ``.ids``."""

    def encode(self, text: str, add_special_tokens: bool = True) -> _Encoding:
        return _Encoding(_ListTokenizer().encode(text, add_special_tokens))


@pytest.mark.parametrize("tokenizer", [_ListTokenizer(), _ObjectTokenizer()])
async def test_a_local_tokenizer_replaces_the_tokenize_request(
    mock: MockSGLang, tokenizer: Any
) -> None:
    async with manager_for(mock, tokenizer=tokenizer, token_exact=None) as manager:
        s = await manager.create_session("S")
        await manager.generate(s.id, "a")
        await manager.generate(s.id, "b")
    assert not mock.requests("/tokenize")
    assert mock.requests("/generate")[-1]["input_ids"] == [7, *ords("Sa"), 1001, ord("b")]
    with pytest.raises(TypeError, match="encode"):
        SessionManager(mock.client(), tokenizer=object())  # type: ignore[arg-type]


# ---------------------------------------------------------------- the fake's tokenizer
# (the radix-cache tests, token-exact against text and forks, are in
# tests/integration/test_sessions_http.py: they run on the fake here and on real SGLang)


def test_the_bpe_tokenizer_shows_seams_and_the_words_one_does_not() -> None:
    bpe, words = TOKENIZERS["bpe"], TOKENIZERS["words"]
    for a, b in [("A:\n", "\nB"), (" year", "s")]:
        assert bpe.encode(a + b) != bpe.encode(a) + bpe.encode(b)
        assert bpe.decode(bpe.encode(a + b)) == a + b
    generated = [bpe.encode(" be")[0], bpe.encode("ing")[0]]
    assert bpe.encode(bpe.decode(generated)) != generated  # " being" is one word
    rng = random.Random(7)

    def roundtrips(tok: Any) -> float:
        runs = [rng.choices(tok.generation_ids, k=20) for _ in range(500)]
        return sum(tok.encode(tok.decode(ids)) == ids for ids in runs) / len(runs)

    assert roundtrips(words) == 1.0  # the older tokenizer: text re-encodes to what was generated
    assert 0.2 < roundtrips(bpe) < 0.95
