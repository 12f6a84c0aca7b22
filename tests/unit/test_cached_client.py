"""CachedClient over each store: n-aware reuse, greedy reuse, coalescing, errors, streams."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from sglang_client import BadRequestError, GenerateResponse, SGLangClient
from sglang_client.cache import (
    CachedClient,
    CacheStatus,
    CacheStore,
    MemoryStore,
    RedisStore,
    SQLiteStore,
    StoreError,
)

from ._upstream import Upstream, client_for

pytestmark = pytest.mark.anyio

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_available() -> bool:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception:
        return False
    return True


StoreFactory = Callable[[], CacheStore]


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A factory of stores of one kind that all see the same data (where the kind persists)."""
    kind = request.param
    made: list[CacheStore] = []
    if kind == "redis" and not redis_available():
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(f"REQUIRE_REDIS=1 but no Redis answers at {REDIS_URL}")
        pytest.skip(f"no Redis server answers at {REDIS_URL} (set REDIS_URL or start one)")
    prefix = f"sglang-client-test:{uuid.uuid4().hex}:"
    shared = MemoryStore()

    def factory() -> CacheStore:
        store: CacheStore
        if kind == "memory":
            store = shared
        elif kind == "sqlite":
            store = SQLiteStore(tmp_path / "cache.db")
        else:
            store = RedisStore(REDIS_URL, prefix=prefix)
        made.append(store)
        return store

    yield factory
    if kind == "redis":
        cleanup = RedisStore(REDIS_URL, prefix=prefix)
        await cleanup.clear()
        await cleanup.aclose()
    for store in made:
        if store is not shared:
            with contextlib.suppress(StoreError):
                await store.aclose()


async def texts(cached: CachedClient, prompt: str, n: int, **params: object) -> list[str]:
    result = await cached.generate(prompt, sampling_params={"n": n, **params})
    items = result if isinstance(result, list) else [result]
    return [r.text for r in items]


async def test_n_aware_reuse(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    first = await texts(cached, "p", 1)
    assert up.generated == 1
    three = await texts(cached, "p", 3)
    assert up.generated == 3  # 1 cached + 2 generated
    assert three[0] == first[0]
    five = await texts(cached, "p", 5)
    assert up.generated == 5  # 3 cached + 2 generated
    assert five[:3] == three
    assert len(set(five)) == 5
    two = await texts(cached, "p", 2)
    assert up.generated == 5  # all from the cache
    assert two == five[:2]
    assert [c.get("sampling_params", {}).get("n", 1) for c in up.calls] == [1, 2, 2]
    stats = await cached.stats()
    assert (stats.hits, stats.misses, stats.partial_hits) == (1, 1, 2)
    assert stats.completions_saved == 1 + 3 + 2
    assert stats.num_keys == 1
    assert stats.total_responses == 5


async def test_single_prompt_n1_returns_object_and_n_gt_1_returns_list(
    make_store: StoreFactory,
) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    one = await cached.generate("q")
    assert isinstance(one, GenerateResponse)
    again = await cached.generate("q")
    assert isinstance(again, GenerateResponse)
    assert again.text == one.text
    many = await cached.generate("q", sampling_params={"n": 2})
    assert isinstance(many, list)


async def test_greedy_reuses_one_completion_for_any_n(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    outs = await texts(cached, "g", 4, temperature=0)
    assert up.generated == 1
    assert len(outs) == 4
    assert len(set(outs)) == 1
    await texts(cached, "g", 7, temperature=0.0)
    assert up.generated == 1


async def test_key_is_stable_across_param_order_and_number_forms(
    make_store: StoreFactory,
) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    await cached.generate(
        "k", sampling_params={"temperature": 1, "top_p": 0.5, "max_new_tokens": 8}
    )
    await cached.generate(
        "k", sampling_params={"max_new_tokens": 8.0, "top_p": 0.5, "temperature": 1.0}, rid="r-1"
    )
    assert up.generated == 1
    await cached.generate(
        "k", sampling_params={"temperature": 1, "top_p": 0.6, "max_new_tokens": 8}
    )
    assert up.generated == 2  # a different parameter is a different key


async def test_batch_only_missing_prompts_go_upstream(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    a = await cached.generate("a")
    assert isinstance(a, GenerateResponse)
    batch = await cached.generate(["a", "b", "c"])
    assert isinstance(batch, list)
    assert [r.text for r in batch][0] == a.text
    assert up.calls[-1]["text"] == ["b", "c"]
    assert up.generated == 3
    again = await cached.generate(["c", "a", "b"])
    assert isinstance(again, list)
    assert up.generated == 3
    assert [r.text for r in again] == [batch[2].text, batch[0].text, batch[1].text]


async def test_errors_and_aborts_are_not_cached(make_store: StoreFactory) -> None:
    up = Upstream()
    store = make_store()
    cached = CachedClient(client_for(up), store)
    for _ in range(2):
        with pytest.raises(BadRequestError, match="bad prompt"):
            await cached.generate("FAIL")
    for _ in range(2):
        aborted = await cached.generate("ABORT")
        assert isinstance(aborted, GenerateResponse)
    assert up.generated == 2  # each abort went upstream again
    assert (await store.count()).num_keys == 0


async def test_concurrent_identical_requests_coalesce(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    results: list[list[str]] = []

    async def one() -> None:
        results.append(await texts(cached, "same", 1))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert up.generated == 1
    assert len({r[0] for r in results}) == 1
    stats = await cached.stats()
    assert (stats.misses, stats.hits, stats.partial_hits) == (1, 19, 0)  # waiters are hits


async def test_concurrent_growing_n_never_duplicates(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    async with anyio.create_task_group() as tg:
        for n in (3, 5, 2, 5, 4):
            tg.start_soon(texts, cached, "grow", n)
    assert up.generated == 5


async def test_persistence_across_instances(make_store: StoreFactory) -> None:
    up = Upstream()
    first_store = make_store()
    if isinstance(first_store, MemoryStore):
        pytest.skip("a MemoryStore lives and dies with its process")
    cached = CachedClient(client_for(up), first_store)
    before = await texts(cached, "persist", 2)
    await cached.aclose()
    reopened = CachedClient(client_for(up), make_store())
    after = await texts(reopened, "persist", 2)
    assert after == before
    assert up.generated == 2


async def test_stream_miss_then_replayed_hit(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    first = [c async for c in cached.generate_stream("s", sampling_params={"max_new_tokens": 3})]
    assert up.generated == 1
    replay = [c async for c in cached.generate_stream("s", sampling_params={"max_new_tokens": 3})]
    assert up.generated == 1
    assert replay[-1].text == first[-1].text
    assert replay[-1].finish_reason is not None
    full = await cached.generate("s", sampling_params={"max_new_tokens": 3})
    assert isinstance(full, GenerateResponse)
    assert full.text == first[-1].text  # a stream fills the cache for non-stream calls too


async def test_stream_partial_hit_replays_then_streams_the_rest(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    await texts(cached, "sp", 2)
    stream = await cached.generate_stream_json(
        {"text": "sp", "sampling_params": {"n": 4}, "stream": True}
    )
    assert stream.status is CacheStatus.PARTIAL
    events = [e async for e in stream]
    assert up.generated == 4
    finals = {e["index"]: e["text"] for e in events if e["meta_info"]["finish_reason"]}
    assert sorted(finals) == [0, 1, 2, 3]
    assert len(set(finals.values())) == 4
    assert await texts(cached, "sp", 4) == [finals[i] for i in range(4)]


async def test_chat_n_aware_and_stream_replay(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    messages = [{"role": "user", "content": "hi"}]
    one = await cached.chat_completion(messages, n=1)
    three = await cached.chat_completion(messages, n=3)
    assert up.generated == 3
    assert three.choices[0].message.content == one.choices[0].message.content
    assert [c.index for c in three.choices] == [0, 1, 2]
    chunks = [c async for c in cached.chat_completion_stream(messages, n=3)]
    assert up.generated == 3
    by_index: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + (choice.delta.content or "")
    assert [by_index[i] for i in range(3)] == [c.message.content for c in three.choices]
    ids = {c.choices[0].index: c.id for c in chunks if c.choices}
    assert len(set(ids.values())) == 3  # one id per sample, as SGLang streams them
    assert all(c.id == ids[c.choices[0].index] for c in chunks if c.choices)


async def test_completion_stream_is_recorded_then_replayed(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())

    def joined(chunks: list[Any]) -> dict[int, str]:
        out: dict[int, str] = {}
        for chunk in chunks:
            for choice in chunk.choices:
                out[choice.index] = out.get(choice.index, "") + choice.text
        return out

    first = [c async for c in cached.completion_stream("once", n=2, temperature=0.7)]
    assert up.generated == 2
    assert all(c.choices for c in first)  # usage was asked upstream only to store token counts
    streamed = joined(first)
    stored = await cached.completion("once", n=2, temperature=0.7)  # the stream filled the cache
    assert up.generated == 2
    assert [c.text for c in stored.choices] == [streamed[0], streamed[1]]
    assert stored.usage is not None and stored.usage.completion_tokens == 8
    replay = [
        c
        async for c in cached.completion_stream(
            "once", n=2, temperature=0.7, stream_options={"include_usage": True}
        )
    ]
    assert up.generated == 2
    assert joined(replay) == streamed
    assert [c.choices[0].finish_reason for c in replay[:2]] == ["length", "length"]
    assert replay[-1].choices == [] and replay[-1].usage is not None
    assert replay[-1].usage.completion_tokens == 8
    stats = await cached.stats()
    assert (stats.misses, stats.hits) == (1, 2)
    # More than is cached: the two stored choices are replayed, the upstream streams one more,
    # and the usage covers all three.
    three = await cached.openai_stream_json(
        "/v1/completions",
        {
            "prompt": "once",
            "model": "default",
            "n": 3,
            "temperature": 0.7,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert three.status is CacheStatus.PARTIAL
    events = [e async for e in three]
    assert up.generated == 3
    by_index: dict[int, str] = {}
    for event in events:
        for choice in event["choices"]:
            by_index[choice["index"]] = by_index.get(choice["index"], "") + choice["text"]
    assert sorted(by_index) == [0, 1, 2]
    assert [by_index[0], by_index[1]] == [streamed[0], streamed[1]]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 12
    assert (await cached.stats()).total_responses == 3
    again = await cached.completion("once", n=3, temperature=0.7)
    assert [c.text for c in again.choices] == [by_index[i] for i in range(3)]
    assert up.generated == 3


async def test_completion_streams_cut_short_or_with_logprobs_are_not_stored(
    make_store: StoreFactory,
) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    for _ in range(2):
        cut = [c async for c in cached.completion_stream("CUT")]
        assert cut[-1].choices[0].finish_reason is None
    assert up.generated == 2
    for _ in range(2):
        with_logprobs = [c async for c in cached.completion_stream("lp", logprobs=1)]
        assert with_logprobs[0].choices[0].logprobs is not None
    assert up.generated == 4
    assert (await cached.stats()).total_responses == 0


async def test_chat_stream_keeps_reasoning_and_logprobs_faithful(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    think = [{"role": "user", "content": "think"}]
    streamed = [c async for c in cached.chat_completion_stream(think)]
    reasoning = "".join(c.choices[0].delta.reasoning_content or "" for c in streamed if c.choices)
    assert reasoning == "because"
    whole = await cached.chat_completion(think)  # stored from the stream
    assert up.generated == 1
    assert whole.choices[0].message.reasoning_content == "because"
    assert whole.choices[0].message.content == "reply#1"
    replay = [c async for c in cached.chat_completion_stream(think)]
    assert up.generated == 1
    assert "".join(c.choices[0].delta.reasoning_content or "" for c in replay) == "because"
    # Logprobs: a stored answer replays them; a stream that carries them is not stored.
    asked = [{"role": "user", "content": "lp"}]
    stored = await cached.chat_completion(asked, logprobs=True)
    events = await cached.openai_stream_json(
        "/v1/chat/completions",
        {"messages": asked, "model": "default", "logprobs": True, "stream": True},
    )
    assert events.status is CacheStatus.HIT
    found = [e["choices"][0]["logprobs"] async for e in events if e["choices"]]
    assert stored.choices[0].logprobs is not None
    assert {"content": [{"token": "x", "logprob": -0.1}]} in found
    fresh = [{"role": "user", "content": "lp stream"}]
    for _ in range(2):
        [c async for c in cached.chat_completion_stream(fresh, logprobs=True)]
    assert up.generated == 4


async def test_chat_with_tool_calls_is_not_replayed_as_a_stream(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    tool = [{"role": "user", "content": "tool"}]
    first = await cached.chat_completion(tool)
    assert first.choices[0].message.tool_calls
    stream = await cached.openai_stream_json(
        "/v1/chat/completions", {"messages": tool, "model": "default", "stream": True}
    )
    assert stream.status is CacheStatus.BYPASS
    [e async for e in stream]
    assert up.generated == 2
    assert (await cached.chat_completion(tool)).choices[0].message.tool_calls  # still a hit
    assert up.generated == 2
    # Stored while a stream waited for the key: the stream still passes through.
    other = [{"role": "user", "content": "tool"}, {"role": "user", "content": "tool"}]
    late = await cached.openai_stream_json(
        "/v1/chat/completions", {"messages": other, "model": "default", "stream": True}
    )
    assert late.status is CacheStatus.MISS
    await cached.chat_completion(other)
    assert up.generated == 3
    events = [e async for e in late]
    assert up.generated == 4
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_chat_stream_partial_hit_and_coalescing(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    messages = [{"role": "user", "content": "partial"}]
    one = await cached.chat_completion(messages, temperature=0.5)
    stream = await cached.openai_stream_json(
        "/v1/chat/completions",
        {"messages": messages, "model": "default", "temperature": 0.5, "n": 3, "stream": True},
    )
    assert stream.status is CacheStatus.PARTIAL
    content: dict[int, str] = {}
    finished = set()
    async for event in stream:
        for choice in event["choices"]:
            index = choice["index"]
            content[index] = content.get(index, "") + (choice["delta"].get("content") or "")
            if choice["finish_reason"]:
                finished.add(index)
    assert up.generated == 3
    assert finished == {0, 1, 2}
    assert content[0] == one.choices[0].message.content
    whole = await cached.chat_completion(messages, temperature=0.5, n=3)
    assert [c.message.content for c in whole.choices] == [content[i] for i in range(3)]
    assert up.generated == 3
    # Identical streams at once: one upstream generation, the other replays it.
    fresh = [{"role": "user", "content": "together"}]
    results: list[str] = []

    async def consume() -> None:
        chunks = [c async for c in cached.chat_completion_stream(fresh, temperature=0.5)]
        results.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(consume)
    assert up.generated == 4
    assert len(set(results)) == 1 and results[0]


async def test_cache_false_bypasses(make_store: StoreFactory) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), make_store())
    await cached.generate("b", cache=False)
    await cached.generate("b", cache=False)
    assert up.generated == 2
    assert (await cached.stats()).bypassed == 2


class BrokenStore(MemoryStore):
    async def get(self, key: str, *, limit: int | None = None) -> None:  # type: ignore[override]
        raise StoreError("disk on fire")

    async def append(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
        raise StoreError("disk on fire")


async def test_failing_store_degrades_to_miss_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), BrokenStore())
    with caplog.at_level(logging.WARNING, logger="sglang_client.cache"):
        for _ in range(3):
            r = await cached.generate("x")
            assert isinstance(r, GenerateResponse)
    assert up.generated == 3
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 1
    assert (await cached.stats()).store_errors >= 3


async def test_ttl_expiry(tmp_path: Path) -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), MemoryStore(ttl=0.2))
    await cached.generate("t")
    await cached.generate("t")
    assert up.generated == 1
    await anyio.sleep(0.3)
    await cached.generate("t")
    assert up.generated == 2


async def test_lru_bound() -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), MemoryStore(max_entries=2))
    for prompt in ("a", "b", "a", "c"):  # "b" is least recently used when "c" arrives
        await cached.generate(prompt)
    assert up.generated == 3
    await cached.generate("a")
    assert up.generated == 3
    await cached.generate("b")
    assert up.generated == 4


class NoLockStore(MemoryStore):
    def lock(self, key: str, *, ttl: float = 30.0, timeout: float | None = None):  # type: ignore[no-untyped-def]
        raise AssertionError("an in-process store's lock is redundant and must not be taken")


async def test_in_process_store_lock_is_not_taken() -> None:
    up = Upstream()
    cached = CachedClient(client_for(up), NoLockStore())
    await texts(cached, "l", 2)
    await texts(cached, "l", 3)
    assert up.generated == 3


def _shape(value: Any) -> Any:
    """The keys (recursively) and value types of a JSON document, not its values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


async def test_answers_recorded_from_streams_have_sglangs_own_shape() -> None:
    from sglang_client.testing import FakeSGLangServer

    with FakeSGLangServer() as fake:
        async with SGLangClient(fake.url, max_retries=0) as client:
            cached = CachedClient(client, MemoryStore())
            for path, body in (
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "shape"}]}),
                ("/v1/completions", {"prompt": "shape"}),
            ):
                # ignore_eos: every choice ends by length, so matched_stop is null in all of them
                body = {**body, "model": "default", "max_tokens": 4, "n": 2, "ignore_eos": True}
                stream = await cached.openai_stream_json(path, {**body, "stream": True})
                assert stream.status is CacheStatus.MISS
                assert [e async for e in stream]
                hit = await cached.openai_json(path, body)
                assert hit.status is CacheStatus.HIT
                direct = await client.request_json("POST", path, body)
                assert _shape(hit.body) == _shape(direct), path
                # A replayed stream's chunks look like the upstream's own (usage chunk too).
                usage = {**body, "stream": True, "stream_options": {"include_usage": True}}
                replay = await cached.openai_stream_json(path, usage)
                assert replay.status is CacheStatus.HIT
                replayed = {json.dumps(_shape(e)) async for e in replay}
                upstream = {json.dumps(_shape(e)) async for e in client.stream_json(path, usage)}
                assert replayed <= upstream, path
