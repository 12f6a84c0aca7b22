"""The cache engine behind ``CachedClient``: SGLang's raw JSON bodies in, cached or not.

See "Cache semantics" in DESIGN.md. In short: a key covers everything that decides what is
generated except ``n``; its value is the list of completions generated so far. A request for n
completions with m cached returns them and asks upstream only for n - m more; greedy requests
(temperature 0) reuse one completion for any n; batches go upstream only for the prompts that
miss; identical concurrent requests wait for one upstream call; errors, aborts and partial streams
are never stored; a failing store degrades to a miss.

The ``*_json`` methods work on SGLang's raw JSON bodies (the proxy uses them to stay
byte-compatible); the typed methods wrap them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

from sglang_client.cache._core import EngineCore
from sglang_client.cache._helpers import (
    CachedResult,
    CachedStream,
    GreedyFanOut,
    OpenAIRecorder,
    StreamRecorder,
    iterate,
    with_n,
    without_stream,
)
from sglang_client.cache.plan import GenerateSplit, openai_kind, plan
from sglang_client.cache.records import (
    all_finished,
    assemble_openai,
    chat_replayable,
    openai_finished,
    openai_records,
    repeat,
    replay_chat_chunks,
    replay_completion_chunks,
    replay_generate_chunk,
    with_cached_usage,
)
from sglang_client.cache.stats import CacheStatus

__all__ = ["CacheEngine", "CachedResult", "CachedStream"]

JSON = dict[str, Any]


class CacheEngine(EngineCore):
    """Serve raw SGLang request bodies through the cache; ``CachedClient`` adds typed methods.

    Args:
        client: the upstream client.
        store: where completions live; default ``SQLiteStore("~/.sglang_cache")``.
        namespace: the model identity in keys; default: the upstream's served model name
            (``/model_info``, fetched once).
    """

    # ------------------------------------------------------------------ /generate

    async def generate_json(
        self,
        body: Mapping[str, Any],
        *,
        read: bool = True,
        write: bool = True,
        tenant: str | None = None,
    ) -> CachedResult:
        """Serve a raw ``/generate`` body (non-streaming) through the cache.

        Args:
            body: the request as SGLang takes it.
            read: use cached completions (``False``: ``Cache-Control: no-cache``).
            write: store new completions (``False``: ``no-store``).
            tenant: the cache namespace (``None``: the shared one); see ``tenant_of``.
        """
        started = time.perf_counter()
        planned = plan("/generate", body, tenant) if (read or write) else None
        if planned is None or planned.split is None:
            result = await self.client.request_json("POST", "/generate", without_stream(body))
            self._record(CacheStatus.BYPASS, started, 0, 0)
            return CachedResult(result, CacheStatus.BYPASS)
        split, need = planned.split, planned.need
        keys = planned.keys(await self._model_identity())
        cached = await self._read_all(keys, need) if read else [[] for _ in keys]
        if all(len(c) >= k for c, k in zip(cached, need, strict=True)):
            output = self._generate_output(split, cached)
            served = split.n * len(split.prompts)  # greedy: one stored completion serves all n
            self._record(CacheStatus.HIT, started, served, 0)
            return CachedResult(output, CacheStatus.HIT, from_cache=served)
        async with AsyncExitStack() as stack:
            await self._lock(stack, keys)
            if read:  # another request may have filled these while we waited
                cached = await self._read_all(keys, need)
            had = sum(len(c) for c in cached)
            generated = await self._top_up(body, split, keys, need, cached, write)
        output = self._generate_output(split, cached)
        # Counted as saved: every returned completion not generated now (greedy copies too).
        from_cache = split.n * len(split.prompts) - generated
        if generated == 0:  # filled by a concurrent request while this one waited
            status = CacheStatus.HIT
        else:
            status = CacheStatus.PARTIAL if had else CacheStatus.MISS
        self._record(status, started, from_cache, generated)
        return CachedResult(output, status, from_cache=from_cache, generated=generated)

    async def _top_up(
        self,
        body: Mapping[str, Any],
        split: GenerateSplit,
        keys: Sequence[str],
        need: Sequence[int],
        cached: list[list[JSON]],
        write: bool,
    ) -> int:
        """Generate what is missing, one upstream call per distinct missing count."""
        groups: dict[int, list[int]] = {}
        for i, (have, k) in enumerate(zip(cached, need, strict=True)):
            if len(have) < k:
                groups.setdefault(k - len(have), []).append(i)
        generated = 0
        for k, indices in groups.items():
            upstream = split.upstream_body(body, indices, k)
            result = await self.client.request_json("POST", "/generate", upstream)
            outputs = result if isinstance(result, list) else [result]
            for j, i in enumerate(indices):
                fresh = [dict(o) for o in outputs[j * k : (j + 1) * k]]
                for o in fresh:
                    o.pop("index", None)
                cached[i].extend(fresh)
                generated += len(fresh)
                if write and all_finished(fresh):
                    await self._append(keys[i], fresh, split.request(i))
        return generated

    @staticmethod
    def _generate_output(split: GenerateSplit, cached: list[list[JSON]]) -> Any:
        flat: list[JSON] = []
        for have in cached:
            samples = have[: split.n] if len(have) >= split.n else have * split.n
            flat.extend(samples[: split.n])
        if split.single and split.n == 1:
            return flat[0]
        return flat

    async def generate_stream_json(
        self,
        body: Mapping[str, Any],
        *,
        read: bool = True,
        write: bool = True,
        tenant: str | None = None,
    ) -> CachedStream:
        """Serve a raw streaming ``/generate`` body: replay, pass through and record, or both.

        Single-prompt streams are cached; batch streams pass through (``BYPASS``).
        """
        started = time.perf_counter()
        planned = plan("/generate", body, tenant) if (read or write) else None
        if planned is None or planned.split is None or not planned.single:
            events = self._passthrough(body, started)
            return CachedStream(CacheStatus.BYPASS, events)
        split, need = planned.split, planned.need[0]
        key = planned.keys(await self._model_identity())[0]
        have = (await self._read_all([key], [need]))[0] if read else []
        if len(have) >= need:
            replay = self._replay_generate(split, have)
            self._record(CacheStatus.HIT, started, split.n, 0)
            return CachedStream(CacheStatus.HIT, iterate(replay))
        status = CacheStatus.PARTIAL if have else CacheStatus.MISS
        events = self._stream_top_up(body, split, key, need, have, read, write, started)
        return CachedStream(status, events)

    @staticmethod
    def _replay_generate(split: GenerateSplit, have: list[JSON]) -> list[JSON]:
        samples = have[: split.n] if len(have) >= split.n else have * split.n
        if split.n == 1:
            return [replay_generate_chunk(samples[0], None)]
        return [replay_generate_chunk(c, i) for i, c in enumerate(samples[: split.n])]

    async def _passthrough(self, body: Mapping[str, Any], started: float) -> AsyncIterator[JSON]:
        async for event in self.client.stream_json("/generate", body):
            yield event
        self._record(CacheStatus.BYPASS, started, 0, 0)

    async def _stream_top_up(
        self,
        body: Mapping[str, Any],
        split: GenerateSplit,
        key: str,
        need: int,
        have: list[JSON],
        read: bool,
        write: bool,
        started: float,
    ) -> AsyncIterator[JSON]:
        async with AsyncExitStack() as stack:
            await self._lock(stack, [key])
            if read:
                have = (await self._read_all([key], [need]))[0]
            k = need - len(have)
            offset = len(have)
            for i, completion in enumerate(have if k > 0 else []):
                yield replay_generate_chunk(completion, i)
            if k <= 0:  # filled by a concurrent request while we waited
                for event in self._replay_generate(split, have):
                    yield event
                self._record(CacheStatus.HIT, started, split.n, 0)
                return
            upstream = split.upstream_body(body, [0], k)
            recorder = StreamRecorder()
            # Greedy n > 1: one completion generated, streamed as the n equal choices.
            fan = GreedyFanOut(split.n) if need < split.n else None
            async for event in self.client.stream_json("/generate", upstream):
                recorder.feed(event)
                if fan is not None and "error" not in event:
                    for copy in fan.generate(event):
                        yield copy
                    continue
                if offset or (split.n > 1 and "index" in event):
                    event = {**event, "index": offset + int(event.get("index") or 0)}
                yield event
            fresh = recorder.completions(k)
            if write and fresh is not None:
                await self._append(key, fresh, split.request(0))
            status = CacheStatus.PARTIAL if offset else CacheStatus.MISS
            self._record(status, started, offset, k)

    # ------------------------------------------------------------------ OpenAI routes

    async def openai_json(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        read: bool = True,
        write: bool = True,
        tenant: str | None = None,
    ) -> CachedResult:
        """Serve a raw ``/v1/chat/completions`` or ``/v1/completions`` body (non-streaming)."""
        started = time.perf_counter()
        planned = plan(path, body, tenant) if (read or write) else None
        if planned is None:
            result = await self.client.request_json("POST", path, without_stream(body))
            self._record(CacheStatus.BYPASS, started, 0, 0)
            return CachedResult(result, CacheStatus.BYPASS)
        n, need, obj, request = planned.n, planned.need[0], planned.obj, planned.requests[0]
        key = planned.keys(await self._model_identity())[0]
        have = (await self._read_all([key], [need]))[0] if read else []
        if len(have) < need:
            async with AsyncExitStack() as stack:
                await self._lock(stack, [key])
                if read:
                    have = (await self._read_all([key], [need]))[0]
                k = need - len(have)
                if k > 0:
                    upstream = with_n(without_stream(body), k)
                    response = await self.client.request_json("POST", path, upstream)
                    fresh = openai_records(response)
                    if not have and k == n:  # a plain miss: return SGLang's own body
                        if write and openai_finished(fresh):
                            await self._append(key, fresh, request)
                        self._record(CacheStatus.MISS, started, 0, k)
                        return CachedResult(response, CacheStatus.MISS, generated=k)
                    if write and openai_finished(fresh):
                        await self._append(key, fresh, request)
                    from_cache = len(have)
                    records = have + fresh
                    status = CacheStatus.PARTIAL if from_cache else CacheStatus.MISS
                    output = assemble_openai(repeat(records, n), obj, body.get("model"))
                    self._record(status, started, from_cache, k)
                    return CachedResult(output, status, from_cache=from_cache, generated=k)
        output = assemble_openai(repeat(have, n), obj, body.get("model"))
        self._record(CacheStatus.HIT, started, n, 0)
        return CachedResult(output, CacheStatus.HIT, from_cache=n)

    async def openai_stream_json(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        read: bool = True,
        write: bool = True,
        tenant: str | None = None,
    ) -> CachedStream:
        """Serve a raw streaming chat or completions body through the cache.

        A full hit is replayed; otherwise the cached choices (if any) are replayed first and
        the upstream streams only the missing ones, which are recorded and stored once they
        finished cleanly. Stored tool calls are not replayed as a stream (they pass through).
        """
        started = time.perf_counter()
        planned = plan(path, body, tenant) if (read or write) else None
        if planned is None:
            return CachedStream(CacheStatus.BYPASS, self._openai_passthrough(path, body, started))
        kind, n, need, request = planned.kind, planned.n, planned.need[0], planned.requests[0]
        key = planned.keys(await self._model_identity())[0]
        have = (await self._read_all([key], [need]))[0] if read else []
        if kind == "chat" and not chat_replayable(have):
            return CachedStream(CacheStatus.BYPASS, self._openai_passthrough(path, body, started))
        if len(have) >= need:
            events = self._replay_openai(path, body, repeat(have, n), True)
            self._record(CacheStatus.HIT, started, n, 0)
            return CachedStream(CacheStatus.HIT, iterate(events))
        status = CacheStatus.PARTIAL if have else CacheStatus.MISS
        recording = self._openai_top_up(path, body, key, request, need, read, write, started)
        return CachedStream(status, recording)

    @staticmethod
    def _replay_openai(
        path: str, body: Mapping[str, Any], records: list[JSON], usage: bool
    ) -> list[JSON]:
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        replay = replay_chat_chunks if openai_kind(path)[0] == "chat" else replay_completion_chunks
        return replay(records, body.get("model"), usage and asked)

    async def _openai_passthrough(
        self, path: str, body: Mapping[str, Any], started: float
    ) -> AsyncIterator[JSON]:
        async for event in self.client.stream_json(path, body):
            yield event
        self._record(CacheStatus.BYPASS, started, 0, 0)

    async def _openai_top_up(
        self,
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
            await self._lock(stack, [key])
            have = (await self._read_all([key], [need]))[0] if read else []
            if openai_kind(path)[0] == "chat" and not chat_replayable(have):
                # Another request stored an answer with tool calls while this one waited.
                async for event in self._openai_passthrough(path, body, started):
                    yield event
                return
            if len(have) >= need:  # filled by a concurrent request while this one waited
                for event in self._replay_openai(path, body, repeat(have, n), True):
                    yield event
                self._record(CacheStatus.HIT, started, n, 0)
                return
            m, k = len(have), need - len(have)
            for event in self._replay_openai(path, body, have, False):
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
            async for event in self.client.stream_json(path, upstream):
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
                    await self._append(key, fresh, request)
            self._record(CacheStatus.PARTIAL if m else CacheStatus.MISS, started, m, k)
