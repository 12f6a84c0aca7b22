"""The cache on native ``/generate``: whole responses and streams, batches split per prompt.

A request for n completions of a prompt with m cached returns them and asks upstream only for
the missing n - m (greedy: one serves every n); a batch goes upstream only for the prompts that
miss, one call per distinct missing count; identical concurrent requests wait for one upstream
call. Only finished completions are stored. See docs/architecture.md.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from sglang_client._defaults import NOT_GIVEN, NotGiven
from sglang_client.cache.plan import GenerateSplit, plan, without_stream
from sglang_client.cache.recorders import GreedyFanOut, StreamRecorder
from sglang_client.cache.records import all_finished, replay_generate_chunk
from sglang_client.cache.results import CachedResult, CachedStream, iterate
from sglang_client.cache.stats import CacheStatus

if TYPE_CHECKING:
    from sglang_client._http import TimeoutTypes
    from sglang_client.cache.engine import CacheEngine, Upstream

__all__ = ["generate_json", "generate_stream_json"]

JSON = dict[str, Any]


async def generate_json(
    engine: CacheEngine,
    body: Mapping[str, Any],
    *,
    read: bool = True,
    write: bool = True,
    tenant: str | None = None,
    timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
) -> CachedResult:
    """Serve a raw ``/generate`` body (non-streaming) through the cache.

    Args:
        body: the request as SGLang takes it.
        read: use cached completions (``False``: ``Cache-Control: no-cache``).
        write: store new completions (``False``: ``no-store``).
        tenant: the cache namespace (``None``: the shared one); see ``tenant_of``.
        timeout: the upstream calls' timeout (default: the client's).
    """
    started = time.perf_counter()
    up = engine.upstream(timeout)
    planned = plan("/generate", body, tenant) if (read or write) else None
    if planned is None or planned.split is None:
        result = await up.request_json("POST", "/generate", without_stream(body))
        engine.record(CacheStatus.BYPASS, started, 0, 0)
        return CachedResult(result, CacheStatus.BYPASS)
    split, need = planned.split, planned.need
    keys = planned.keys(await engine.model_identity())
    cached = await engine.read_all(keys, need) if read else [[] for _ in keys]
    if all(len(c) >= k for c, k in zip(cached, need, strict=True)):
        output = _generate_output(split, cached)
        served = split.n * len(split.prompts)  # greedy: one stored completion serves all n
        engine.record(CacheStatus.HIT, started, served, 0)
        return CachedResult(output, CacheStatus.HIT, from_cache=served)
    async with AsyncExitStack() as stack:
        await engine.lock(stack, keys)
        if read:  # another request may have filled these while we waited
            cached = await engine.read_all(keys, need)
        had = sum(len(c) for c in cached)
        generated = await _top_up(engine, up, body, split, keys, need, cached, write)
    output = _generate_output(split, cached)
    # Counted as saved: every returned completion not generated now (greedy copies too).
    from_cache = split.n * len(split.prompts) - generated
    status = CacheStatus.PARTIAL if had else CacheStatus.MISS
    if generated == 0:  # filled by a concurrent request while this one waited
        status = CacheStatus.HIT
    engine.record(status, started, from_cache, generated)
    return CachedResult(output, status, from_cache=from_cache, generated=generated)


async def _top_up(
    engine: CacheEngine,
    up: Upstream,
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
        result = await up.request_json("POST", "/generate", upstream)
        outputs = result if isinstance(result, list) else [result]
        for j, i in enumerate(indices):
            fresh = [dict(o) for o in outputs[j * k : (j + 1) * k]]
            for o in fresh:
                o.pop("index", None)
            cached[i].extend(fresh)
            generated += len(fresh)
            if write and all_finished(fresh):
                await engine.append(keys[i], fresh, split.request(i))
    return generated


def _generate_output(split: GenerateSplit, cached: list[list[JSON]]) -> Any:
    flat: list[JSON] = []
    for have in cached:
        samples = have[: split.n] if len(have) >= split.n else have * split.n
        flat.extend(samples[: split.n])
    if split.single and split.n == 1:
        return flat[0]
    return flat


async def generate_stream_json(
    engine: CacheEngine,
    body: Mapping[str, Any],
    *,
    read: bool = True,
    write: bool = True,
    tenant: str | None = None,
    timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
) -> CachedStream:
    """Serve a raw streaming ``/generate`` body: replay, pass through and record, or both.

    Single-prompt streams are cached; batch streams pass through (``BYPASS``).
    """
    started = time.perf_counter()
    up = engine.upstream(timeout)
    planned = plan("/generate", body, tenant) if (read or write) else None
    if planned is None or planned.split is None or not planned.single:
        events = _passthrough(engine, up, body, started)
        return CachedStream(CacheStatus.BYPASS, events)
    split, need = planned.split, planned.need[0]
    key = planned.keys(await engine.model_identity())[0]
    have = (await engine.read_all([key], [need]))[0] if read else []
    if len(have) >= need:
        replay = _replay_generate(split, have)
        engine.record(CacheStatus.HIT, started, split.n, 0)
        return CachedStream(CacheStatus.HIT, iterate(replay))
    status = CacheStatus.PARTIAL if have else CacheStatus.MISS
    events = _stream_top_up(engine, up, body, split, key, need, have, read, write, started)
    return CachedStream(status, events)


def _replay_generate(split: GenerateSplit, have: list[JSON]) -> list[JSON]:
    samples = have[: split.n] if len(have) >= split.n else have * split.n
    if split.n == 1:
        return [replay_generate_chunk(samples[0], None)]
    return [replay_generate_chunk(c, i) for i, c in enumerate(samples[: split.n])]


async def _passthrough(
    engine: CacheEngine, up: Upstream, body: Mapping[str, Any], started: float
) -> AsyncIterator[JSON]:
    async for event in up.stream_json("/generate", body):
        yield event
    engine.record(CacheStatus.BYPASS, started, 0, 0)


async def _stream_top_up(
    engine: CacheEngine,
    up: Upstream,
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
        await engine.lock(stack, [key])
        if read:
            have = (await engine.read_all([key], [need]))[0]
        k = need - len(have)
        offset = len(have)
        for i, completion in enumerate(have if k > 0 else []):
            yield replay_generate_chunk(completion, i)
        if k <= 0:  # filled by a concurrent request while we waited
            for event in _replay_generate(split, have):
                yield event
            engine.record(CacheStatus.HIT, started, split.n, 0)
            return
        upstream = split.upstream_body(body, [0], k)
        recorder = StreamRecorder()
        # Greedy n > 1: one completion generated, streamed as the n equal choices.
        fan = GreedyFanOut(split.n) if need < split.n else None
        async for event in up.stream_json("/generate", upstream):
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
            await engine.append(key, fresh, split.request(0))
        status = CacheStatus.PARTIAL if offset else CacheStatus.MISS
        engine.record(status, started, offset, k)
