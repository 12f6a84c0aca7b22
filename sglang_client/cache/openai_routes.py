"""The cache on the OpenAI routes (``/v1/chat/completions``, ``/v1/completions``).

One key per request (the prompt, messages and sampling fields, never ``n``): a partial hit
returns the cached choices and asks upstream for the rest; streams replay cached choices first
and record the new ones, stored once they finished cleanly. See docs/architecture.md.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from sglang_client._defaults import NOT_GIVEN, NotGiven
from sglang_client.cache.plan import openai_kind, plan, with_n, without_stream
from sglang_client.cache.recorders import GreedyFanOut, OpenAIRecorder
from sglang_client.cache.records import (
    assemble_openai,
    chat_replayable,
    openai_finished,
    openai_records,
    repeat,
    replay_chat_chunks,
    replay_completion_chunks,
    with_cached_usage,
)
from sglang_client.cache.results import CachedResult, CachedStream, iterate
from sglang_client.cache.stats import CacheStatus

if TYPE_CHECKING:
    from sglang_client._http import TimeoutTypes
    from sglang_client.cache.engine import CacheEngine, Upstream

__all__ = ["openai_json", "openai_stream_json"]

JSON = dict[str, Any]


async def openai_json(
    engine: CacheEngine,
    path: str,
    body: Mapping[str, Any],
    *,
    read: bool = True,
    write: bool = True,
    tenant: str | None = None,
    timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
) -> CachedResult:
    """Serve a raw ``/v1/chat/completions`` or ``/v1/completions`` body (non-streaming)."""
    started = time.perf_counter()
    up = engine.upstream(timeout)
    planned = plan(path, body, tenant) if (read or write) else None
    if planned is None:
        result = await up.request_json("POST", path, without_stream(body))
        engine.record(CacheStatus.BYPASS, started, 0, 0)
        return CachedResult(result, CacheStatus.BYPASS)
    n, need, obj, request = planned.n, planned.need[0], planned.obj, planned.requests[0]
    key = planned.keys(await engine.model_identity())[0]
    have = (await engine.read_all([key], [need]))[0] if read else []
    if len(have) < need:
        async with AsyncExitStack() as stack:
            await engine.lock(stack, [key])
            if read:
                have = (await engine.read_all([key], [need]))[0]
            k = need - len(have)
            if k > 0:
                upstream = with_n(without_stream(body), k)
                response = await up.request_json("POST", path, upstream)
                fresh = openai_records(response)
                if not have and k == n:  # a plain miss: return SGLang's own body
                    if write and openai_finished(fresh):
                        await engine.append(key, fresh, request)
                    engine.record(CacheStatus.MISS, started, 0, k)
                    return CachedResult(response, CacheStatus.MISS, generated=k)
                if write and openai_finished(fresh):
                    await engine.append(key, fresh, request)
                from_cache = len(have)
                records = have + fresh
                status = CacheStatus.PARTIAL if from_cache else CacheStatus.MISS
                output = assemble_openai(repeat(records, n), obj, body.get("model"))
                engine.record(status, started, from_cache, k)
                return CachedResult(output, status, from_cache=from_cache, generated=k)
    output = assemble_openai(repeat(have, n), obj, body.get("model"))
    engine.record(CacheStatus.HIT, started, n, 0)
    return CachedResult(output, CacheStatus.HIT, from_cache=n)


async def openai_stream_json(
    engine: CacheEngine,
    path: str,
    body: Mapping[str, Any],
    *,
    read: bool = True,
    write: bool = True,
    tenant: str | None = None,
    timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
) -> CachedStream:
    """Serve a raw streaming chat or completions body through the cache.

    A full hit is replayed; otherwise the cached choices (if any) are replayed first and
    the upstream streams only the missing ones, which are recorded and stored once they
    finished cleanly. Stored tool calls are not replayed as a stream (they pass through).
    """
    started = time.perf_counter()
    up = engine.upstream(timeout)
    planned = plan(path, body, tenant) if (read or write) else None
    if planned is None:
        return CachedStream(
            CacheStatus.BYPASS, _openai_passthrough(engine, up, path, body, started)
        )
    kind, n, need, request = planned.kind, planned.n, planned.need[0], planned.requests[0]
    key = planned.keys(await engine.model_identity())[0]
    have = (await engine.read_all([key], [need]))[0] if read else []
    if kind == "chat" and not chat_replayable(have):
        return CachedStream(
            CacheStatus.BYPASS, _openai_passthrough(engine, up, path, body, started)
        )
    if len(have) >= need:
        events = _replay_openai(path, body, repeat(have, n), True)
        engine.record(CacheStatus.HIT, started, n, 0)
        return CachedStream(CacheStatus.HIT, iterate(events))
    status = CacheStatus.PARTIAL if have else CacheStatus.MISS
    recording = _openai_top_up(engine, up, path, body, key, request, need, read, write, started)
    return CachedStream(status, recording)


def _replay_openai(
    path: str, body: Mapping[str, Any], records: list[JSON], usage: bool
) -> list[JSON]:
    asked = bool((body.get("stream_options") or {}).get("include_usage"))
    replay = replay_chat_chunks if openai_kind(path)[0] == "chat" else replay_completion_chunks
    return replay(records, body.get("model"), usage and asked)


async def _openai_passthrough(
    engine: CacheEngine, up: Upstream, path: str, body: Mapping[str, Any], started: float
) -> AsyncIterator[JSON]:
    async for event in up.stream_json(path, body):
        yield event
    engine.record(CacheStatus.BYPASS, started, 0, 0)


async def _openai_top_up(
    engine: CacheEngine,
    up: Upstream,
    path: str,
    body: Mapping[str, Any],
    key: str,
    request: JSON,
    need: int,
    read: bool,
    write: bool,
    started: float,
) -> AsyncIterator[JSON]:
    n = int(body.get("n", 1))
    async with AsyncExitStack() as stack:
        await engine.lock(stack, [key])
        have = (await engine.read_all([key], [need]))[0] if read else []
        if openai_kind(path)[0] == "chat" and not chat_replayable(have):
            # Another request stored an answer with tool calls while this one waited.
            async for event in _openai_passthrough(engine, up, path, body, started):
                yield event
            return
        if len(have) >= need:  # filled by a concurrent request while this one waited
            for event in _replay_openai(path, body, repeat(have, n), True):
                yield event
            engine.record(CacheStatus.HIT, started, n, 0)
            return
        m, k = len(have), need - len(have)
        for event in _replay_openai(path, body, have, False):
            yield event
        # Ask for usage so the stored completions carry token counts; hide it if unasked.
        upstream = with_n(body, k)
        upstream["stream_options"] = {**(body.get("stream_options") or {})}
        upstream["stream_options"]["include_usage"] = True
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        recorder = OpenAIRecorder(chat=openai_kind(path)[0] == "chat")
        # Greedy n > 1: one completion generated, streamed as the n equal choices.
        fan = GreedyFanOut(n) if need < n else None
        failed = False
        async for event in up.stream_json(path, upstream):
            failed = failed or "error" in event
            recorder.feed(event)
            choices = event.get("choices")
            if choices == [] and "usage" in event:
                if asked:
                    if fan is not None:
                        yield fan.openai(event)[0]
                    else:
                        yield with_cached_usage(event, have) if m else event
                continue
            if fan is not None and "error" not in event:
                for copy in fan.openai(event):
                    yield copy
                continue
            if m and choices:
                event = {
                    **event,
                    "choices": [{**c, "index": m + c.get("index", 0)} for c in choices],
                }
            yield event
        response = recorder.response(k)
        if write and not failed and response is not None:
            fresh = openai_records(response)
            if openai_finished(fresh):
                await engine.append(key, fresh, request)
        engine.record(CacheStatus.PARTIAL if m else CacheStatus.MISS, started, m, k)
