"""SessionManager: exact request bodies over httpx.MockTransport, then the fake server over HTTP."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from sglang_client import (
    BadRequestError,
    GenerateResponse,
    SessionNotFoundError,
    SGLangClient,
    StreamError,
)
from sglang_client.sessions import Session, SessionManager, Turn
from sglang_client.testing import FakeSGLangServer

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1:9"
Hook = Callable[[dict[str, Any]], Awaitable[None]]


def _meta(rid: str, prompt: str, finish: dict[str, object], completion: int) -> dict[str, object]:
    return {
        "id": rid,
        "finish_reason": finish,
        "prompt_tokens": len(prompt),
        "completion_tokens": completion,
        "cached_tokens": 0,
    }


class MockSGLang:
    """A scripted SGLang: answers ``/generate`` with ``<k>`` (k counts calls), logs bodies."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.calls = 0
        self.hook: Hook | None = None  # awaited inside /generate and chat, e.g. to block
        self.finish: dict[str, object] = {"type": "length", "length": 1}
        self.stream_error = False  # a stream sends one chunk, then an error event
        self.reject = False  # /generate answers 400 like SGLang's contract check
        self.in_flight = 0
        self.max_in_flight = 0
        self.tokenize_status = 200  # 404: a server without /tokenize
        self.output_ids = True  # False: /generate answers without output_ids

    def client(self) -> SGLangClient:
        return SGLangClient(URL, transport=httpx.MockTransport(self.handle), max_retries=0)

    def requests(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.bodies if p == path]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        self.bodies.append((path, body))
        if path == "/open_session":
            return httpx.Response(200, json=f"srv{len(self.requests(path))}")
        if path == "/close_session":
            return httpx.Response(200)
        if path == "/tokenize":
            if self.tokenize_status != 200:
                return httpx.Response(self.tokenize_status, json={"detail": "Not Found"})
            # One id per character, after a BOS (1) when special tokens are asked for.
            bos = [1] if body.get("add_special_tokens", True) else []
            return httpx.Response(200, json={"tokens": bos + [ord(c) for c in body["prompt"]]})
        self.calls += 1
        k, rid = self.calls, uuid.uuid4().hex
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hook is not None:
                await self.hook(body)
        finally:
            self.in_flight -= 1
        if self.reject:
            return httpx.Response(400, json={"error": "unknown field `seed`, expected ..."})
        if path == "/v1/chat/completions":
            return self._chat(body, k, rid)
        meta = _meta(rid, body.get("text", ""), self.finish, 1)
        if not body.get("stream"):
            answer = {"text": f"<{k}>", "output_ids": [1000 + k], "meta_info": meta}
            if not self.output_ids:
                del answer["output_ids"]
            return httpx.Response(200, json=answer)
        first = {"text": f"<{k}", "output_ids": [], "meta_info": {**meta, "finish_reason": None}}
        last = {"text": f"<{k}>", "output_ids": [1000 + k], "meta_info": meta}
        tail = {"error": {"message": "boom"}} if self.stream_error else last
        return _sse(first, tail)

    def _chat(self, body: dict[str, Any], k: int, rid: str) -> httpx.Response:
        usage = {
            "prompt_tokens": 10 * k,
            "completion_tokens": 2,
            "total_tokens": 10 * k + 2,
            "prompt_tokens_details": {"cached_tokens": 3},
        }
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": f"<{k}>"}}
            choice.update(finish_reason="stop", matched_stop=2)
            return httpx.Response(200, json={"id": rid, "choices": [choice], "usage": usage})

        def chunk(delta: dict[str, object], finish: str | None) -> dict[str, object]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {"id": rid, "choices": [choice], "usage": None}

        events: list[object] = [
            chunk({"role": "assistant", "content": ""}, None),
            chunk({"content": f"<{k}"}, None),
            chunk({"content": ">"}, None),
            chunk({"content": None}, "stop"),
        ]
        if body.get("stream_options", {}).get("include_usage"):
            events.append({"id": rid, "choices": [], "usage": usage})
        return _sse(*events)


def _sse(*events: object) -> httpx.Response:
    wire = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
    return httpx.Response(200, content=wire, headers={"content-type": "text/event-stream"})


@pytest.fixture
def mock() -> MockSGLang:
    return MockSGLang()


@contextlib.asynccontextmanager
async def manager_for(mock: MockSGLang, **options: Any) -> AsyncIterator[SessionManager]:
    """A manager on the mock; text sessions unless ``token_exact`` is given (the mock cannot
    tokenize: its own tests are below)."""
    options.setdefault("token_exact", False)
    async with mock.client() as client:
        yield SessionManager(client, **options)


# ---------------------------------------------------------------- text sessions


async def test_text_prompt_is_exact_concatenation_of_history(mock: MockSGLang) -> None:
    async with manager_for(mock) as manager:
        s = await manager.create_session("SYS|", metadata={"user": "ada"})
        r1 = await manager.generate(s.id, "a", max_new_tokens=4, temperature=0)
        r2 = await manager.generate(s.id, "b", max_new_tokens=4)
    texts = [b["text"] for b in mock.requests("/generate")]
    assert texts == ["SYS|a", "SYS|a<1>b"]
    assert mock.requests("/generate")[0]["sampling_params"] == {
        "max_new_tokens": 4,
        "temperature": 0,
    }
    assert "session_params" not in mock.requests("/generate")[0]
    assert (r1.text, r2.text) == ("<1>", "<2>")
    assert [(t.input, t.output, t.output_ids) for t in s.history] == [
        ("a", "<1>", (1001,)),
        ("b", "<2>", (1002,)),
    ]
    assert s.history[1].meta_info.id == r2.meta_info.id
    assert s.prefix == "SYS|a<1>b<2>"
    assert s.metadata == {"user": "ada"}
    assert s.parent_id is None
    assert s.created_at > 0


async def test_sampling_params_mapping_and_timeout_are_accepted(mock: MockSGLang) -> None:
    async with manager_for(mock) as manager:
        s = await manager.create_session()
        await manager.generate(
            s.id,
            "x",
            sampling_params={"top_k": 5, "max_new_tokens": 1},
            max_new_tokens=3,
            timeout=5.0,
        )
    assert mock.requests("/generate")[0]["sampling_params"] == {"top_k": 5, "max_new_tokens": 3}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 2}, ValueError, "n must be 1"),
        ({"n": True}, ValueError, "n must be 1"),
        ({"stream": True}, ValueError, "generate_stream"),
        ({"sampling_params": [1]}, TypeError, "mapping"),
    ],
)
async def test_bad_turn_arguments_raise_before_any_request(
    mock: MockSGLang, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    async with manager_for(mock) as manager:
        s = await manager.create_session()
        with pytest.raises(error, match=match):
            await manager.generate(s.id, "x", **kwargs)
        with pytest.raises(TypeError, match="prompt must be a str"):
            await manager.generate(s.id, b"x")  # type: ignore[arg-type]
    assert mock.calls == 0
    assert s.history == []


async def test_server_error_leaves_history_unchanged(mock: MockSGLang) -> None:
    mock.reject = True
    async with manager_for(mock) as manager:
        s = await manager.create_session("S")
        with pytest.raises(BadRequestError, match="unknown field `seed`"):
            await manager.generate(s.id, "x", seed=1)
        assert s.history == []
        assert s.prefix == "S"
        mock.reject = False
        await manager.generate(s.id, "y")  # the lock was released
    assert [t.input for t in s.history] == ["y"]


async def test_abort_is_returned_but_not_recorded(mock: MockSGLang) -> None:
    mock.finish = {"type": "abort", "message": "Aborted"}
    async with manager_for(mock) as manager:
        s = await manager.create_session()
        r = await manager.generate(s.id, "x")
        assert r.meta_info.finish_reason is not None
        assert r.meta_info.finish_reason.type == "abort"
        assert s.history == []


async def test_unknown_and_deleted_ids_raise_session_not_found(mock: MockSGLang) -> None:
    async with manager_for(mock) as manager:
        s = await manager.create_session()
        await manager.delete_session(s.id)
        for call in (
            lambda: manager.generate(s.id, "x"),
            lambda: manager.fork_session(s.id),
            lambda: manager.delete_session(s.id),
        ):
            with pytest.raises(SessionNotFoundError, match=s.id):
                await call()
        with pytest.raises(LookupError, match="nope"):
            manager.get_session("nope")
        with pytest.raises(SessionNotFoundError):
            manager.generate_stream("nope", "x")
        await manager.delete_session(s.id, missing_ok=True)
        assert s.is_deleted
        assert manager.list_sessions() == []


async def test_create_session_validation(mock: MockSGLang) -> None:
    async with manager_for(mock) as manager:
        await manager.create_session(session_id="mine")
        with pytest.raises(ValueError, match="already in use"):
            await manager.create_session(session_id="mine")
        with pytest.raises(ValueError, match="non-empty"):
            await manager.create_session(session_id="")
        with pytest.raises(TypeError, match="system_prompt"):
            await manager.create_session(42)  # type: ignore[arg-type]
        assert [s.id for s in manager.list_sessions()] == ["mine"]
    async with manager_for(mock, server_sessions=True) as manager:
        with pytest.raises(ValueError, match="session_params"):
            await manager.create_session(chat=True)
    assert mock.requests("/open_session") == []


# ---------------------------------------------------------------- forks and the prefix tree


async def test_fork_copies_history_and_is_independent(mock: MockSGLang) -> None:
    async with manager_for(mock) as manager:
        parent = await manager.create_session("S", metadata={"tag": "p"})
        await manager.generate(parent.id, "a")
        child = await manager.fork_session(parent.id)
        assert isinstance(child, Session)
        assert child.parent_id == parent.id
        assert child.history == parent.history
        assert child.history is not parent.history
        child.metadata["tag"] = "c"
        await manager.generate(child.id, "c")
        await manager.generate(parent.id, "p")
    assert [t.input for t in parent.history] == ["a", "p"]
    assert [t.input for t in child.history] == ["a", "c"]
    assert parent.metadata == {"tag": "p"}
    texts = [b["text"] for b in mock.requests("/generate")]
    assert texts == ["Sa", "Sa<1>c", "Sa<1>p"]


async def test_fork_n_returns_a_list_and_validates_n(mock: MockSGLang) -> None:
    async with manager_for(mock) as manager:
        s = await manager.create_session("S")
        kids = await manager.fork_session(s.id, n=3)
        assert isinstance(kids, list)
        assert len({k.id for k in kids}) == 3
        assert all(k.parent_id == s.id for k in kids)
        with pytest.raises(ValueError, match="n must be >= 1"):
            await manager.fork_session(s.id, n=0)
        with pytest.raises(TypeError):
            await manager.fork_session(s.id, n=True)
        assert len(manager) == 4


async def test_prefix_tree_follows_growth_forks_and_deletes(mock: MockSGLang) -> None:
    async with manager_for(mock) as manager:
        tree = manager.prefix_tree
        s = await manager.create_session("shared system prompt. ")
        await manager.generate(s.id, "question")
        kids = await manager.fork_session(s.id, n=2)
        assert isinstance(kids, list)
        a, b = kids
        await manager.generate(a.id, " more")
        sharing = dict(tree.find_sharing_sessions(s.prefix))
        assert sharing == {s.id: len(s.prefix), a.id: len(s.prefix), b.id: len(s.prefix)}
        assert tree.longest_match(a.prefix) == (len(a.prefix), [a.id])
        await manager.delete_session(b.id)
        assert b.id not in tree
        assert b.id not in dict(tree.find_sharing_sessions(s.prefix))
        assert tree.stats().total_sessions == 2
        await manager.aclose()
        stats = tree.stats()
    assert (stats.total_sessions, stats.total_nodes, stats.total_tokens) == (0, 0, 0)
    assert len(manager) == 0


# ---------------------------------------------------------------- the per-session lock


async def test_turns_of_one_session_never_overlap(mock: MockSGLang) -> None:
    async def yield_a_few(body: dict[str, Any]) -> None:
        for _ in range(5):
            await anyio.lowlevel.checkpoint()

    mock.hook = yield_a_few
    async with manager_for(mock) as manager:
        s = await manager.create_session()
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(manager.generate, s.id, f"[{i}]")
    assert mock.max_in_flight == 1
    # Each prompt carries every earlier turn: the turns ran one after another.
    texts = [b["text"] for b in mock.requests("/generate")]
    for earlier, later in zip(texts, texts[1:], strict=False):
        assert later.startswith(earlier)
    assert len(s.history) == 6


async def test_different_sessions_run_concurrently(mock: MockSGLang) -> None:
    both_in = anyio.Event()

    async def wait_for_both(body: dict[str, Any]) -> None:
        if mock.in_flight == 2:
            both_in.set()
        with anyio.fail_after(10):
            await both_in.wait()

    mock.hook = wait_for_both
    async with manager_for(mock) as manager:
        a = await manager.create_session()
        b = await manager.create_session()
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.generate, a.id, "x")
            tg.start_soon(manager.generate, b.id, "y")
    assert mock.max_in_flight == 2


async def test_delete_waits_for_the_running_turn_then_closes(mock: MockSGLang) -> None:
    started, release = anyio.Event(), anyio.Event()
    log: list[str] = []

    async def block(body: dict[str, Any]) -> None:
        started.set()
        await release.wait()
        log.append("turn done")

    mock.hook = block
    async with manager_for(mock, server_sessions=True) as manager:
        s = await manager.create_session()
        result: list[GenerateResponse] = []

        async def turn() -> None:
            result.append(await manager.generate(s.id, "x"))

        async def delete() -> None:
            await manager.delete_session(s.id)
            log.append("deleted")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(turn)
                await started.wait()
                tg.start_soon(delete)
                for _ in range(20):
                    await anyio.lowlevel.checkpoint()
                with pytest.raises(SessionNotFoundError):
                    manager.get_session(s.id)  # gone at once for new callers
                assert log == []  # ...but the delete waits for the turn
                assert mock.requests("/close_session") == []
                release.set()
    assert log == ["turn done", "deleted"]
    assert len(result) == 1
    assert mock.requests("/close_session") == [{"session_id": "srv1"}]
    assert s.id not in manager.prefix_tree


async def test_turn_queued_behind_a_delete_raises(mock: MockSGLang) -> None:
    started, release = anyio.Event(), anyio.Event()

    async def block(body: dict[str, Any]) -> None:
        started.set()
        await release.wait()

    mock.hook = block
    errors: list[BaseException] = []
    async with manager_for(mock) as manager:
        s = await manager.create_session()

        async def late_turn() -> None:
            try:
                await manager.generate(s.id, "late")
            except SessionNotFoundError as exc:
                errors.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(manager.generate, s.id, "first")
                await started.wait()
                tg.start_soon(late_turn)  # waits on the lock, behind the running turn
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                tg.start_soon(manager.delete_session, s.id)
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                release.set()
    assert len(errors) == 1
    assert s.id in str(errors[0])
    assert mock.calls == 1


# ---------------------------------------------------------------- streams


async def test_stream_records_the_turn_once_finished(mock: MockSGLang) -> None:
    async with manager_for(mock) as manager:
        s = await manager.create_session("S")
        chunks = [c async for c in manager.generate_stream(s.id, "a", max_new_tokens=2)]
        await manager.generate(s.id, "b")
    assert "".join(c.delta for c in chunks) == "<1>"
    assert chunks[-1].finish_reason is not None
    assert [(t.input, t.output, t.output_ids) for t in s.history] == [
        ("a", "<1>", (1001,)),
        ("b", "<2>", (1002,)),
    ]
    first = mock.requests("/generate")[0]
    assert first["stream"] is True
    assert first["sampling_params"] == {"max_new_tokens": 2}
    assert mock.requests("/generate")[1]["text"] == "Sa<1>b"


async def test_stream_error_records_nothing(mock: MockSGLang) -> None:
    mock.stream_error = True
    async with manager_for(mock) as manager:
        s = await manager.create_session()
        seen = []
        with pytest.raises(StreamError, match="boom"):
            async for chunk in manager.generate_stream(s.id, "a"):
                seen.append(chunk)
        assert len(seen) == 1
        assert s.history == []
        mock.stream_error = False
        await manager.generate(s.id, "b")  # the lock was released
        assert [t.input for t in s.history] == ["b"]


async def test_leaving_a_stream_early_records_nothing_and_releases(mock: MockSGLang) -> None:
    async with manager_for(mock) as manager:
        s = await manager.create_session()
        async with contextlib.aclosing(manager.generate_stream(s.id, "a")) as stream:
            async for _chunk in stream:
                break
        assert s.history == []
        with anyio.fail_after(10):
            await manager.generate(s.id, "b")
        # A bare `break` without aclosing: asyncio finalises the generator in another task.
        async for _chunk in manager.generate_stream(s.id, "c"):
            break
        with anyio.fail_after(10):
            await manager.generate(s.id, "d")
    assert [t.input for t in s.history] == ["b", "d"]


async def test_same_task_reentry_raises_instead_of_deadlocking(mock: MockSGLang) -> None:
    async with manager_for(mock, server_sessions=True) as manager:
        s = await manager.create_session()
        with anyio.fail_after(10):
            async for _chunk in manager.generate_stream(s.id, "a"):
                with pytest.raises(RuntimeError, match="already running a turn"):
                    await manager.generate(s.id, "b")
                await manager.delete_session(s.id)  # allowed: does not wait for itself
                break
    assert s.is_deleted
    assert mock.requests("/close_session") == [{"session_id": "srv1"}]


# ---------------------------------------------------------------- server sessions


async def test_server_session_chains_rids_and_branches_forks(mock: MockSGLang) -> None:
    async with manager_for(mock, server_sessions=True) as manager:
        s = await manager.create_session("SYS ")
        assert s.server_session_id == "srv1"
        r1 = await manager.generate(s.id, "a")
        r2 = await manager.generate(s.id, "b")
        kids = await manager.fork_session(s.id, n=2)
        assert isinstance(kids, list)
        await manager.generate(kids[0].id, "k0")
        await manager.generate(kids[1].id, "k1")
        assert s.last_rid == r2.meta_info.id
        await manager.delete_session(s.id)
        await manager.delete_session(kids[0].id)
        assert mock.requests("/close_session") == []  # kids[1] still uses it
        await manager.delete_session(kids[1].id)
    bodies = mock.requests("/generate")
    assert [b["text"] for b in bodies] == ["SYS a", "b", "k0", "k1"]
    assert [b["session_params"] for b in bodies] == [
        {"id": "srv1"},
        {"id": "srv1", "rid": r1.meta_info.id},
        {"id": "srv1", "rid": r2.meta_info.id},
        {"id": "srv1", "rid": r2.meta_info.id},
    ]
    assert mock.requests("/open_session") == [{"capacity_of_str_len": 65536}]
    assert mock.requests("/close_session") == [{"session_id": "srv1"}]


async def test_manager_aclose_closes_every_server_session(mock: MockSGLang) -> None:
    async with mock.client() as client:
        async with SessionManager(client, server_sessions=True) as manager:
            a = await manager.create_session()
            await manager.create_session()
            await manager.fork_session(a.id, n=2)
    closed = sorted(b["session_id"] for b in mock.requests("/close_session"))
    assert closed == ["srv1", "srv2"]


# ---------------------------------------------------------------- chat sessions


async def test_chat_session_keeps_messages(mock: MockSGLang) -> None:
    async with manager_for(mock) as manager:
        s = await manager.create_session("Be brief.", chat=True)
        r1 = await manager.generate(s.id, "Hi", max_new_tokens=8, temperature=0)
        await manager.generate(s.id, "Again", max_tokens=4)
        with pytest.raises(ValueError, match="not both"):
            await manager.generate(s.id, "x", max_tokens=1, max_new_tokens=1)
    bodies = mock.requests("/v1/chat/completions")
    assert bodies[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert bodies[0]["max_tokens"] == 8
    assert "max_new_tokens" not in bodies[0]
    assert bodies[1]["messages"][-2:] == [
        {"role": "assistant", "content": "<1>"},
        {"role": "user", "content": "Again"},
    ]
    assert r1.text == "<1>"
    meta = s.history[0].meta_info
    assert meta.finish_reason is not None
    assert meta.finish_reason.type == "stop"
    assert (meta.prompt_tokens, meta.completion_tokens, meta.cached_tokens) == (10, 2, 3)
    assert s.messages[-1] == {"role": "assistant", "content": "<2>"}
    assert s.prefix.startswith("system: Be brief.\nuser: Hi\nassistant: <1>\n")


async def test_chat_stream_records_and_reports_usage(mock: MockSGLang) -> None:
    async with manager_for(mock) as manager:
        s = await manager.create_session(chat=True)
        chunks = [c async for c in manager.generate_stream(s.id, "Hi")]
    assert "".join(c.delta for c in chunks) == "<1>"
    assert chunks[-1].finish_reason is not None
    assert chunks[-1].meta_info.prompt_tokens == 10
    assert all(c.finish_reason is None for c in chunks[:-1])
    body = mock.requests("/v1/chat/completions")[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert s.history == [Turn("Hi", "<1>", chunks[-1].meta_info)]


# ---------------------------------------------------------------- the fake server, over loopback

GREEDY = {"temperature": 0, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with FakeSGLangServer(enable_cache_report=True) as server:
        yield server.url


@contextlib.asynccontextmanager
async def fake_manager(url: str, **options: Any) -> AsyncIterator[SessionManager]:
    async with SGLangClient(url) as client, SessionManager(client, **options) as manager:
        yield manager


async def test_fake_multi_turn_sends_the_history_and_hits_the_cache(fake_url: str) -> None:
    async with fake_manager(fake_url) as manager:
        s = await manager.create_session("A conversation about rivers.\n")
        r1 = await manager.generate(s.id, "Q: Which river runs through Paris?\nA:", **GREEDY)
        before = s.prefix
        r2 = await manager.generate(s.id, "\nQ: And through London?\nA:", **GREEDY)
        # The same prompt sent by hand gives the same greedy answer: the prompt was exact.
        by_hand = await manager.client.generate(
            before + "\nQ: And through London?\nA:", sampling_params=GREEDY
        )
    assert isinstance(by_hand, GenerateResponse)
    assert by_hand.text == r2.text
    assert r1.meta_info.cached_tokens == 0
    assert r2.meta_info.cached_tokens >= r1.meta_info.prompt_tokens - 1
    assert r2.meta_info.prompt_tokens > r1.meta_info.prompt_tokens + r1.meta_info.completion_tokens
    assert [t.output for t in s.history] == [r1.text, r2.text]
    assert list(s.history[0].output_ids) == r1.output_ids


async def test_fake_forks_first_turn_reports_cached_tokens(fake_url: str) -> None:
    async with fake_manager(fake_url) as manager:
        parent = await manager.create_session("Shared context for every branch. ")
        await manager.generate(parent.id, "Start:", **GREEDY)
        kids = await manager.fork_session(parent.id, n=3)
        assert isinstance(kids, list)

        async def turn(kid: Session, i: int) -> None:
            await manager.generate(kid.id, f" branch {i}:", **GREEDY)

        async with anyio.create_task_group() as tg:
            for i, kid in enumerate(kids):
                tg.start_soon(turn, kid, i)
        assert len(parent.history) == 1
        for i, kid in enumerate(kids):
            assert [t.input for t in kid.history] == ["Start:", f" branch {i}:"]
            assert kid.history[-1].meta_info.cached_tokens > 0
        sharing = manager.prefix_tree.find_sharing_sessions(parent.prefix)
        assert {sid for sid, _ in sharing} == {parent.id, *(k.id for k in kids)}


async def test_fake_server_sessions_chain_branch_and_close(fake_url: str) -> None:
    async with fake_manager(fake_url, server_sessions=True) as manager:
        s = await manager.create_session("System. ")
        r1 = await manager.generate(s.id, "Hello there.", **GREEDY)
        r2 = await manager.generate(s.id, " Tell me more.", **GREEDY)
        alone = await manager.client.generate(" Tell me more.", sampling_params=GREEDY)
        assert isinstance(alone, GenerateResponse)
        m1, m2 = r1.meta_info, r2.meta_info
        # Turn 2's context is turn 1's prompt + turn 1's output + the new input.
        assert m2.prompt_tokens == m1.prompt_tokens + m1.completion_tokens + (
            alone.meta_info.prompt_tokens
        )
        assert m2.cached_tokens > 0
        kids = await manager.fork_session(s.id, n=2)
        assert isinstance(kids, list)
        a, b = kids
        ra = await manager.generate(a.id, " Left.", **GREEDY)
        rb = await manager.generate(b.id, " Right.", **GREEDY)
        for r in (ra, rb):  # both branch from turn 2
            assert r.meta_info.prompt_tokens > m2.prompt_tokens + m2.completion_tokens
            assert r.meta_info.cached_tokens > 0
        server_id = s.server_session_id
        assert server_id is not None
        await manager.delete_session(s.id)
        await manager.delete_session(a.id)
        await manager.generate(b.id, " Still open.", **GREEDY)  # b keeps the server session
        await manager.delete_session(b.id)
        with pytest.raises(BadRequestError, match="does not exist"):
            await manager.client.generate("x", session_params={"id": server_id})


async def test_fake_chat_session(fake_url: str) -> None:
    async with fake_manager(fake_url) as manager:
        s = await manager.create_session("You are terse.", chat=True)
        r1 = await manager.generate(s.id, "Hi!", max_new_tokens=6, temperature=0)
        chunks = await manager.generate_stream(s.id, "Again?", max_tokens=6).collect()
    assert "".join(c.delta for c in chunks) == s.history[1].output
    m1, m2 = s.history[0].meta_info, s.history[1].meta_info
    assert m1.completion_tokens == 6
    assert r1.text == s.history[0].output
    assert m2.prompt_tokens > m1.prompt_tokens + m1.completion_tokens
    assert m2.cached_tokens > 0
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant", "user", "assistant"]


async def test_fake_streamed_and_concurrent_sessions(fake_url: str) -> None:
    async with fake_manager(fake_url) as manager:
        sessions = [await manager.create_session(f"Session {i}. ") for i in range(6)]

        async def converse(session: Session) -> None:
            for turn in range(3):
                if turn % 2:
                    await manager.generate(session.id, f" turn {turn}", **GREEDY)
                else:
                    async with manager.generate_stream(session.id, f" turn {turn}", **GREEDY) as st:
                        text = "".join([c.delta async for c in st])
                    assert session.history[-1].output == text

        async with anyio.create_task_group() as tg:
            for session in sessions:
                tg.start_soon(converse, session)
    for session in sessions:
        assert [t.input for t in session.history] == [" turn 0", " turn 1", " turn 2"]
        assert session.history[-1].meta_info.cached_tokens > 0
